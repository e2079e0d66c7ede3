"""The history archive against a real fail2ban-server and the daemon on a system-like bus.

fail2ban purges its own `bans` rows only from an hourly observer timer, and no command
triggers it; the tests run fail2ban's own `Fail2BanDb.purge()` (Debian's python and
fail2ban package) on the sandbox's DB, with the purge age fail2ban itself reports
(`get dbpurgeage`, set short in the sandbox's fail2ban.conf).
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import os
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bangui_daemon.archive.db import Archive, bundled_migrations
from tests.harness.daemon import DaemonProcess
from tests.harness.fail2ban import F2bSandbox
from tests.harness.util import wait_until
from tests.integration.dbus_calls import CORE, HISTORY, Runner, call, error_name, plain
from tests.integration.history_db import archive_compare, fill_bans

E = "org.bangui.Daemon1.Error."
PURGE = (
    "import sys\n"
    "from fail2ban.server.database import Fail2BanDb\n"
    "Fail2BanDb(sys.argv[1], purgeAge=int(sys.argv[2])).purge()\n"
)


# ------------------------------------------------------------------ helpers
def run_sync(busctl: Runner, timeout: float = 60.0) -> dict[str, Any]:
    """RunTask history_sync as root; a sync the ban watch started first is waited out."""

    def ran() -> dict[str, Any] | None:
        result = busctl(
            "--json=short",
            "--timeout=60",
            "call",
            "org.bangui.Daemon1",
            "/org/bangui/Daemon1",
            CORE,
            "RunTask",
            "s",
            "history_sync",
            timeout=timeout,
        )
        if result.returncode != 0:  # the other run is in progress: ask again shortly
            assert "already running" in result.stderr, result.stderr
            return None
        out: dict[str, Any] = plain(json.loads(result.stdout)["data"])[0]
        assert out["status"] == "ok", out
        return out

    return wait_until(ran, timeout, "history_sync to run (not busy)", max_interval=0.05)


def f2b_rows(db: Path, ip: str | None = None) -> list[tuple[Any, ...]]:
    """fail2ban's bans rows (jail, ip, timeofban), read-only, one short statement."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        if ip is None:
            return list(conn.execute("SELECT jail, ip, timeofban FROM bans"))
        return list(conn.execute("SELECT jail, ip, timeofban FROM bans WHERE ip = ?", (ip,)))
    finally:
        conn.close()


def f2b_purge(f2b: F2bSandbox) -> None:
    """Run fail2ban's own purge on the sandbox's DB with fail2ban's current purge age."""
    age = int(f2b.client("get", "dbpurgeage"))
    subprocess.run(
        ["/usr/bin/python3", "-c", PURGE, str(f2b.db_path), str(age)],
        env={**os.environ, "PYTHONPATH": "/usr/lib/python3/dist-packages"},
        check=True,
        capture_output=True,
        timeout=30,
    )


def history(busctl: Runner, *filters: tuple[str, str, Any], page: int = 1, size: int = 1000) -> Any:
    args = [str(len(filters))]
    for key, sig, value in filters:
        args += [key, sig, str(value)]
    events, total = call(busctl, HISTORY, "GetHistory", "a{sv}uu", *args, str(page), str(size))
    return events, total


def archive_path(daemon: DaemonProcess) -> str:
    assert daemon.config is not None
    return str(daemon.config["archive"]["path"])


# -------------------------------------------------------------------- tests
@pytest.mark.f2b_options(dbpurgeage=1)
def test_log_bans_are_archived_and_outlive_fail2bans_purge(
    f2b: F2bSandbox, daemon: DaemonProcess, busctl: Runner, signal_monitor: Any
) -> None:
    mon = signal_monitor(user="root")
    ips = ["45.33.12.7", "45.33.12.8", "2001:db8:45::7"]
    for n, ip in enumerate(ips):
        f2b.write_failed_logins(ip, 3, user=f"user{n}x")  # maxretry 3
    for ip in ips:
        f2b.wait_banned("sshd", ip)
    wait_until(lambda: all(f2b_rows(f2b.db_path, ip) for ip in ips), 10, "fail2ban's rows")

    result = run_sync(busctl)
    assert archive_compare(f2b.db_path, archive_path(daemon))["missing"] == 0
    # The ban watch archives bans as it sees them, and the sync it then asks for only
    # fills in their matches: HistorySynced ("a sync that added events") comes only
    # when a sync copied a ban the watch had not seen (see the exactly-once test).
    if result["new_events"]:
        mon.wait_for(f"HistorySynced (uint32 {result['new_events']})", timeout=10)

    def archived() -> dict[str, dict[str, Any]]:
        events, total = history(busctl, ("jail", "s", "sshd"), ("action", "s", "ban"))
        assert total == len(events)
        return {e["ip"]: e for e in events}

    before = archived()
    assert set(before) == set(ips)
    for n, ip in enumerate(ips):
        event = before[ip]
        assert event["failures"] == 3
        assert len(event["matches"]) == 3
        assert all(ip in m and "Failed password" in m for m in event["matches"])
        assert f"user{n}x0" in event["matches"][0]
        assert event["origin"] == "selfblock"
        assert event["bantime"] == 3600

    # fail2ban (purge age 1 s) drops the rows once they are older than that
    assert int(f2b.client("get", "dbpurgeage")) == 1

    def purged() -> bool:
        f2b_purge(f2b)
        return not any(f2b_rows(f2b.db_path, ip) for ip in ips)

    wait_until(purged, 15, "fail2ban's purge of the ban rows")
    assert all(ip in f2b.banned("sshd") for ip in ips)  # still banned, history gone
    run_sync(busctl)  # a sync after the purge loses nothing

    assert archived() == before
    for ip in ips:
        (ip_history,) = call(busctl, HISTORY, "GetIpHistory", "s", ip)
        assert ip_history["ip"] == str(ipaddress.ip_address(ip))
        assert ip_history["total_bans"] == 1
        assert ip_history["jails"] == ["sshd"]
        (event,) = ip_history["events"]
        assert event == before[ip]
        assert len(event["matches"]) == 3
        assert ip_history["first_seen"] == ip_history["last_seen"] == event["timeofban"]


def test_sync_twice_archives_each_fail2ban_row_exactly_once(
    f2b: F2bSandbox, start_daemon: Any, busctl: Runner, gdbus: Runner, signal_monitor: Any
) -> None:
    f2b.stop()
    base = fill_bans(f2b.db_path, 5000)
    f2b.start()
    mon = signal_monitor(user="root")
    daemon = start_daemon()
    daemon.wait_for_log("history_sync_complete", timeout=30)  # the run at start
    mon.wait_for("HistorySynced (uint32 5000)", timeout=10)
    second = run_sync(busctl)
    assert second["new_events"] == 0
    assert second["high_water_mark"] == 5000
    third = run_sync(busctl)
    assert third["new_events"] == 0
    (status,) = call(busctl, CORE, "GetStatus")
    assert status["archived_events"] == 5000
    assert status["last_history_sync"] > 0
    assert archive_compare(f2b.db_path, archive_path(daemon)) == {
        "f2b": 5000,
        "archived": 5000,
        "missing": 0,
        "extra": 0,
        "duplicates": 0,
    }

    # --- the History interface over the bus, against references from fail2ban's DB
    rows = f2b_rows(f2b.db_path)
    since, until = base + 1000, base + 4000

    def ref(pred: Any) -> list[tuple[Any, ...]]:
        return sorted((r for r in rows if pred(r)), key=lambda r: -r[2])

    want = ref(lambda r: r[0] == "sshd" and since <= r[2] < until)
    got, total = history(
        busctl, ("jail", "s", "sshd"), ("since", "x", since), ("until", "x", until), size=100
    )
    assert total == len(want)
    assert [(e["jail"], e["ip"], e["timeofban"]) for e in got] == want[:100]
    got, total = history(busctl, ("jail", "s", "sshd"), ("since", "x", since), page=7, size=50)
    want = ref(lambda r: r[0] == "sshd" and r[2] >= since)
    assert total == len(want)
    assert [(e["jail"], e["ip"], e["timeofban"]) for e in got] == want[300:350]

    first_blocklisted = next(r[1] for r in rows if r[0] == "blocklist-import")
    net = ipaddress.ip_network(f"{first_blocklisted}/8", strict=False)
    want = ref(lambda r: r[0] == "blocklist-import" and ipaddress.ip_address(r[1]) in net)
    got, total = history(busctl, ("ip", "s", str(net)), ("origin", "s", "blocklist"))
    assert total == len(want) > 1
    assert [(e["jail"], e["ip"], e["timeofban"]) for e in got] == want
    assert all(e["origin"] == "blocklist" for e in got)

    (timeline,) = call(busctl, HISTORY, "GetTimeline", "xx", str(base - 3600), "3600")
    assert timeline[0][0] == base - 3600
    assert timeline[0][1] == 0
    assert sum(n for _, n in timeline) == 5000
    assert all(b[0] - a[0] == 3600 for a, b in itertools.pairwise(timeline))
    (top,) = call(busctl, HISTORY, "GetTop", "sxu", "jail", "0", "1")
    assert top == [["sshd", 4000]]
    (top,) = call(busctl, HISTORY, "GetTop", "sxu", "ip", str(since), "5")
    want_top = Counter(r[1] for r in rows if r[2] >= since).most_common()
    assert [n for _, n in top] == [n for _, n in want_top[:5]]

    for args in (
        ("{'sinse': <int64 1>}", "1", "10"),
        ("{'since': <'yesterday'>}", "1", "10"),
        ("{'since': <int32 5>}", "1", "10"),
        ("{'ip': <'45.33.12.0/33'>}", "1", "10"),
        ("{'jail': <'sshd'>}", "1", "0"),
    ):
        assert error_name(gdbus, HISTORY, "GetHistory", *args) == E + "InvalidArgument", args


def test_ban_lifted_with_unbanip_between_two_syncs_stays_archived(
    f2b: F2bSandbox, daemon: DaemonProcess, busctl: Runner, signal_monitor: Any
) -> None:
    run_sync(busctl)
    mon = signal_monitor(user="root")
    # 1. a log ban lifted with fail2ban's own `unbanip` (which deletes its DB rows)
    f2b.write_failed_logins("45.33.14.1", 3)
    f2b.wait_banned("sshd", "45.33.14.1")
    mon.wait_for(lambda line: "BanAdded" in line and '"45.33.14.1"' in line, timeout=10)
    assert f2b.cli("set", "sshd", "unbanip", "45.33.14.1").returncode == 0
    # 2. a manual ban lifted with fail2ban's `unban`
    f2b.cli("set", "blocklist-import", "banip", "45.33.14.2")
    mon.wait_for(lambda line: "BanAdded" in line and '"45.33.14.2"' in line, timeout=10)
    assert f2b.cli("unban", "45.33.14.2").returncode == 0
    # 3. a log ban lifted through the daemon's UnbanIp
    f2b.write_failed_logins("45.33.14.3", 3)
    mon.wait_for(lambda line: "BanAdded" in line and '"45.33.14.3"' in line, timeout=20)
    assert call(busctl, CORE, "UnbanIp", "ss", "", "45.33.14.3") == [1]
    ips = ("45.33.14.1", "45.33.14.2", "45.33.14.3")

    def removed() -> bool:
        seen = " ".join(m.line for m in mon.signals("BanRemoved"))
        return all(f'"{ip}"' in seen for ip in ips)

    wait_until(removed, 10, "BanRemoved for every address")
    # fail2ban deleted their rows: only the archive remembers them
    wait_until(lambda: not any(f2b_rows(f2b.db_path, ip) for ip in ips), 10, "rows deleted")
    run_sync(busctl)

    for ip, jail, failures in (
        ("45.33.14.1", "sshd", None),
        ("45.33.14.2", "blocklist-import", 0),
        ("45.33.14.3", "sshd", 3),
    ):
        (h,) = call(busctl, HISTORY, "GetIpHistory", "s", ip)
        assert h["total_bans"] == 1, h
        assert h["jails"] == [jail], h
        actions = [e["action"] for e in h["events"]]
        # newest first; a ban and its unban within one second may tie (fail2ban's row
        # holds round(time)), so they are told apart by action, not by position
        assert sorted(actions) == ["ban", "unban"], h
        ban = next(e for e in h["events"] if e["action"] == "ban")
        unban = next(e for e in h["events"] if e["action"] == "unban")
        assert ban["jail"] == jail
        assert ban["timeofban"] > 0
        assert unban["timeofban"] >= ban["timeofban"] - 1
        if failures is not None:  # UnbanIp archives fail2ban's row (matches) first
            assert ban["failures"] == failures
            assert len(ban["matches"]) == failures
        assert ban["origin"] == ("blocklist" if jail == "blocklist-import" else "selfblock")
    events, total = history(busctl, ("ip", "s", "45.33.14.0/24"), ("action", "s", "unban"))
    assert total == 3
    assert {e["ip"] for e in events} == {"45.33.14.1", "45.33.14.2", "45.33.14.3"}
    # no duplicate ban events for the same ban
    events, total = history(busctl, ("ip", "s", "45.33.14.0/24"), ("action", "s", "ban"))
    assert total == 3


async def _archive_of_schema_3(path: Path, rows: int, now: int) -> None:
    """An archive as the previous release left it: schema 3, ip-led natural key."""
    archive = await Archive.open(str(path), migrations=bundled_migrations()[:3])
    try:
        async with archive.write() as conn:
            await conn.executemany(
                "INSERT INTO ban_events (action, jail, ip, timeofban, bantime, data) "
                "VALUES (?, ?, ?, ?, 600, ?)",
                [
                    (
                        ("ban", "unban")[i % 4 == 3],
                        ("sshd", "nginx")[i % 3 == 0],
                        f"203.0.113.{i % 200}",
                        now - 7 * i,
                        b'{"matches": ["Failed password from x"], "failures": 1}',
                    )
                    for i in range(rows)
                ],
            )
        assert await archive.scalar("SELECT version FROM schema_version") == 3
    finally:
        await archive.close()


def test_archive_of_the_previous_schema_is_migrated_at_start_and_keeps_its_history(
    start_daemon: Any, busctl: Runner, tmp_path: Path
) -> None:
    path = tmp_path / "archive-v3.sqlite3"
    now = int(time.time())
    asyncio.run(_archive_of_schema_3(path, 3000, now))
    daemon = start_daemon(archive={"path": str(path)})

    # systemd was asked for more start time before the rebuild, and told why
    fields = [n.fields for n in daemon.notifications_since_start]
    extend = next(i for i, f in enumerate(fields) if "EXTEND_TIMEOUT_USEC" in f)
    ready = next(i for i, f in enumerate(fields) if f.get("READY") == "1")
    assert extend < ready
    assert int(fields[extend]["EXTEND_TIMEOUT_USEC"]) == 30 * 1_000_000
    assert fields[extend]["STATUS"] == "migrating the archive to schema 4"
    migrated = [r for r in daemon.log_records() if r.get("event") == "migration_applied"]
    assert [r["version"] for r in migrated] == list(range(4, len(bundled_migrations()) + 1))

    (status,) = call(busctl, CORE, "GetStatus")
    assert status["archived_events"] == 3000
    events, total = history(busctl, ("ip", "s", "203.0.113.7"))
    assert total == len(events) == 15  # i = 7, 207, ..., 2807
    assert [e["timeofban"] for e in events] == [now - 7 * i for i in range(7, 3000, 200)]
    assert events[0]["matches"] == ["Failed password from x"]
    _, total = history(busctl, ("jail", "s", "nginx"), ("action", "s", "ban"))
    assert total == sum(1 for i in range(3000) if i % 3 == 0 and i % 4 != 3)


def test_daemon_names_a_database_that_is_not_the_one_fail2ban_writes(
    f2b: F2bSandbox, start_daemon: Any, tmp_path: Path
) -> None:
    stale = tmp_path / "fail2ban-copy.sqlite3"
    stale.write_bytes(f2b.db_path.read_bytes())  # e.g. a copy left from a migration
    daemon = start_daemon(fail2ban={"database": str(stale)})
    record = daemon.wait_for_log("fail2ban_setup_problem", timeout=30)
    assert str(f2b.db_path) in record["problem"]
    assert str(stale) in record["problem"]
