"""banguictl as a process against the real daemon, bus and fail2ban (issue P1 + Geo)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.harness.bus import PrivateSystemBus
from tests.harness.daemon import DaemonProcess
from tests.harness.fail2ban import F2bSandbox
from tests.harness.live import LiveProcess
from tests.harness.users import TestUser, run_as
from tests.harness.util import REPO_ROOT, wait_until

GEOIP = REPO_ROOT / "tests" / "data" / "geoip"
MODULE = "bangui_daemon.cli.banguictl"
# The venv's python lives below /root (mode 0700): another user runs Debian's python3,
# which has python3-dbus-fast, with the repository on PYTHONPATH.
SYSTEM_PYTHON = "/usr/bin/python3"
TASKS = ("ban_watch", "history_sync", "history_purge", "blocklist_import", "geo_resolve")

Ctl = Callable[..., "subprocess.CompletedProcess[str]"]
DaemonStarter = Callable[..., DaemonProcess]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1"}


def _argv(address: str, args: Sequence[str], user: TestUser | None) -> list[str]:
    python = sys.executable if user is None else SYSTEM_PYTHON
    return [python, "-m", MODULE, "--bus", address, *args]


@pytest.fixture
def ctl(system_bus: PrivateSystemBus) -> Ctl:
    """``ctl(*args, user=None)``: run banguictl on the private bus; CompletedProcess."""

    def run(*args: str, user: TestUser | None = None) -> subprocess.CompletedProcess[str]:
        return run_as(user, _argv(system_bus.address, args, user), env=_env(), timeout=60)

    return run


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


@pytest.fixture
def geo_daemon(start_daemon: DaemonStarter, tmp_path: Path) -> DaemonProcess:
    """The daemon with the test MMDBs, so `ip`, `bans` and `top country` show countries."""
    geo = tmp_path / "geoip"
    geo.mkdir()
    for name in ("GeoLite2-Country-Test.mmdb", "GeoLite2-ASN-Test.mmdb"):
        (geo / name).write_bytes((GEOIP / name).read_bytes())
    return start_daemon(
        geo={
            "country_db": str(geo / "GeoLite2-Country-Test.mmdb"),
            "asn_db": str(geo / "GeoLite2-ASN-Test.mmdb"),
        }
    )


def run_task(ctl: Ctl, name: str) -> dict[str, Any]:
    """`banguictl run NAME` once the start-up run of the task is over (else Busy)."""

    def settled() -> bool:
        tasks = ok_json(ctl("--json", "tasks"))
        task = next(t for t in tasks if t["name"] == name)
        return bool(task["last_status"]) and not task["running"]

    wait_until(settled, 10, f"the start-up run of {name}")
    doc = ok_json(ctl("--json", "run", name))
    assert doc["task"] == name
    assert doc["result"]["status"] == "ok", doc
    result: dict[str, Any] = doc["result"]
    return result


def wait_listed(ctl: Ctl, ip: str) -> dict[str, Any]:
    def listed() -> dict[str, Any] | None:
        doc = ok_json(ctl("--json", "bans"))
        return next((b for b in doc["bans"] if b["ip"] == ip), None)

    ban: dict[str, Any] = wait_until(listed, 10, f"{ip} in `banguictl bans`")
    return ban


# --------------------------------------------------------------------------- reads
def test_status_human_and_json(daemon: DaemonProcess, ctl: Ctl) -> None:
    text = ok(ctl("status"))
    fields = dict(re.findall(r"^([a-z0-9 ]+):\s+(.*)$", text, re.MULTILINE))
    assert fields["state"] == "running"
    assert fields["fail2ban"] == "connected, 1.0.2"
    assert set(fields["jails"].split(", ")) == {"sshd", "blocklist-import"}
    assert fields["active bans"] == "0"
    assert fields["geo cache entries"] == "0"
    assert re.match(r"\S+ \(interface 1\.\d+\)$", fields["daemon"])

    doc = ok_json(ctl("--json", "status"))
    assert doc["status"]["fail2ban_connected"] is True
    assert sorted(doc["status"]["jails"]) == ["blocklist-import", "sshd"]
    assert doc["properties"]["State"] == "running"
    assert doc["properties"]["Version"] == doc["status"]["version"]
    # --json after the command works as well
    assert ok_json(ctl("status", "--json"))["status"]["version"] == doc["status"]["version"]


def test_jails_and_tasks_tables(daemon: DaemonProcess, ctl: Ctl) -> None:
    table = ok(ctl("jails")).splitlines()
    assert table[0].lower().split() == [
        "jail",
        "banned",
        "total",
        "banned",
        "failed",
        "total",
        "failed",
    ]
    rows = {line.split()[0]: line.split()[1:] for line in table[1:] if line.strip("- ")}
    assert rows["sshd"] == ["0", "0", "0", "0"]
    assert "blocklist-import" in rows
    jails = ok_json(ctl("--json", "jails"))
    assert {j["name"] for j in jails} == {"sshd", "blocklist-import"}

    text = ok(ctl("tasks"))
    assert text.splitlines()[0].lower().split()[:3] == ["task", "interval", "running"]
    listed = {line.split()[0] for line in text.splitlines()[1:] if line.strip("- ")}
    assert set(TASKS) <= listed
    tasks = ok_json(ctl("--json", "tasks"))
    assert next(t for t in tasks if t["name"] == "history_sync")["interval"] == 3600

    run_task(ctl, "ban_watch")
    text = ok(ctl("run", "ban_watch"))
    assert re.search(r"^status:\s+ok$", text, re.MULTILINE), text


# ------------------------------------------------------------------- bans and watch
def test_watch_prints_a_live_ban_then_bans_lists_it(
    f2b: F2bSandbox, geo_daemon: DaemonProcess, system_bus: PrivateSystemBus, ctl: Ctl
) -> None:
    ip = "89.160.20.112"
    watch = LiveProcess(
        _argv(system_bus.address, ["watch", "--count", "1", "--filter", "BanAdded"], None),
        env=_env(),
    )
    try:
        watch.wait_line("err", r"watching org\.bangui\.Daemon1 signals", 15)
        banned_at = time.monotonic()
        f2b.write_failed_logins(ip, 4)  # fail2ban's sshd filter bans after 3 failures
        line, seen_at = watch.wait_line("out", "BanAdded", 20)
        assert re.search(rf"BanAdded\s+sshd {re.escape(ip)} banned for 1h$", line), line
        assert seen_at > banned_at
        assert watch.proc.wait(10) == 0  # --count 1: done after that line
    finally:
        watch.close()

    ban = wait_listed(ctl, ip)
    assert ban["jail"] == "sshd"
    assert ban["origin"] == "selfblock"
    assert ban["bantime"] == 3600
    run_task(ctl, "geo_resolve")
    rows = [line.split() for line in ok(ctl("bans")).splitlines()]
    assert [c.lower() for c in rows[0][:3]] == ["jail", "ip", "banned"]
    (row,) = [r for r in rows if ip in r]
    assert row[:2] == ["sshd", ip]
    assert {"SE", "AS29518", "selfblock"} <= set(row)
    assert ok(ctl("bans", "--jail", "blocklist-import")).strip() == "no bans"


def test_ban_and_unban_as_root(f2b: F2bSandbox, daemon: DaemonProcess, ctl: Ctl) -> None:
    ip = "45.113.0.20"
    assert ok(ctl("ban", "sshd", ip)).strip() == f"banned {ip} in sshd"
    assert ip in f2b.banned("sshd")
    assert ok(ctl("ban", "sshd", ip)).strip() == f"{ip} was already banned in sshd"
    assert ok(ctl("unban", ip)).strip() == f"unbanned {ip} from 1 jail"
    assert ip not in f2b.banned("sshd")
    doc = ok_json(ctl("--json", "unban", ip, "--jail", "sshd"))
    assert doc == {"jail": "sshd", "ip": ip, "jails_removed": 0}


# --------------------------------------------------------------------- history & geo
def test_history_ip_top_and_timeline(f2b: F2bSandbox, geo_daemon: DaemonProcess, ctl: Ctl) -> None:
    ip = "89.160.20.112"
    result = f2b.cli("set", "sshd", "banip", ip)
    assert result.returncode == 0, result.stderr
    wait_listed(ctl, ip)
    run_task(ctl, "geo_resolve")
    synced = run_task(ctl, "history_sync")
    assert synced["status"] == "ok"

    rows = [line.split() for line in ok(ctl("history")).splitlines()]
    assert [c.lower() for c in rows[0][:4]] == ["time", "action", "jail", "ip"]
    (event,) = [r for r in rows if ip in r]
    assert event[2:5] == ["ban", "sshd", ip]  # the time takes two columns
    assert {"SE", "AS29518", "selfblock"} <= set(event)
    doc = ok_json(ctl("--json", "history", "--ip", ip, "--since", "1h"))
    assert doc["total"] == 1
    assert doc["filter"]["ip"] == ip
    assert doc["events"][0]["country_code"] == "SE"
    assert ok_json(ctl("--json", "history", "--country", "jp"))["total"] == 0

    text = ok(ctl("ip", ip))
    fields = dict(re.findall(r"^([a-z0-9 ]+):\s+(.*)$", text, re.MULTILINE))
    assert fields["country"] == "SE (Sweden)"
    assert (fields["asn"], fields["org"]) == ("AS29518", "Bredband2 AB")
    assert fields["geo source"] in ("mmdb", "cache")
    assert (fields["total bans"], fields["jails"]) == ("1", "sshd")

    top = ok(ctl("top", "jail")).splitlines()
    assert top[0] == "top jail by bans, all time"
    assert top[1].split()[0] == "sshd"
    assert top[1].split()[-1] == "1"
    top = ok(ctl("top", "country")).splitlines()
    assert top[1].split()[0] == "SE"
    assert top[1].split()[-1] == "1"
    doc = ok_json(ctl("--json", "top", "asn"))
    assert doc["top"] == [{"key": "AS29518", "count": 1}]

    timeline = ok(ctl("timeline")).splitlines()
    assert timeline[0].startswith("bans per 1h, since ")
    assert sum(int(line.split()[-1]) for line in timeline[1:]) == 1
    doc = ok_json(ctl("--json", "timeline", "--since", "2h", "--bucket", "10m"))
    assert doc["bucket_seconds"] == 600
    assert sum(b["count"] for b in doc["buckets"]) == 1


# ------------------------------------------------------------------------ exit codes
def test_access_denied_for_a_reader_is_exit_1(
    f2b: F2bSandbox, daemon: DaemonProcess, ctl: Ctl, test_users: dict[str, TestUser]
) -> None:
    reader = test_users["bgt-reader"]
    result = ctl("ban", "sshd", "45.2.2.2", user=reader)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith("banguictl: access denied"), result.stderr
    assert "Traceback" not in result.stderr
    assert f2b.banned("sshd") == []
    result = ctl("run", "ban_watch", user=reader)
    assert result.returncode == 1
    assert "access denied" in result.stderr
    # reading is allowed to everyone, with Debian's python3 as well
    assert ok_json(ctl("--json", "status", user=reader))["status"]["fail2ban_connected"] is True


def test_daemon_not_on_the_bus_is_exit_3(system_bus: PrivateSystemBus, ctl: Ctl) -> None:
    result = ctl("status")
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "daemon not running" in result.stderr
    assert "Traceback" not in result.stderr
    result = run_as(None, _argv("unix:path=/nonexistent/bus", ["jails"], None), env=_env())
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "bus unavailable" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("no-such-command",),
        ("bans", "--limit", "0"),
        ("ban", "sshd", "not-an-ip"),
        ("top", "planet"),
        ("watch", "--filter", "BanAdded,Nope"),
    ],
)
def test_usage_error_is_exit_2(system_bus: PrivateSystemBus, args: tuple[str, ...]) -> None:
    """argparse rejects these before any bus is contacted."""
    result = run_as(None, _argv(system_bus.address, args, None), env=_env())
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "usage: banguictl" in result.stderr
