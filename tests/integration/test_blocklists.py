"""Blocklist import against the real daemon, a real fail2ban and a real bus (issue 4).

Lists come from a local aiohttp server on 127.0.0.1 (``blocklist_server``) or from
files below the daemon's ``blocklist.file_dir``; the daemon bans into the sandbox's
``blocklist-import`` jail, whose dummy action appends ``+IP`` / ``-IP`` lines to a file:
that file is the witness of every ban and unban fail2ban really executed.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bangui_daemon.blocklist.host import HostAddresses
from tests.harness import crash_daemon
from tests.harness.daemon import DAEMON_MODULE, DaemonProcess
from tests.harness.fail2ban import F2bSandbox
from tests.harness.util import REPO_ROOT, wait_until
from tests.integration.blocklist_server import ListServer, addresses
from tests.integration.dbus_calls import BLOCKLISTS, DEST, PATH, Runner, call, error_name

JAIL = "blocklist-import"


# ------------------------------------------------------------------- helpers
def body(entries: list[str], header: str = "# test list") -> bytes:
    return ("\n".join([header, *entries]) + "\n").encode()


def add_source(busctl: Runner, name: str, url: str, enabled: bool = True) -> int:
    """Add a source; a disabled one is imported only when asked (not by the task that
    every daemon start runs), so crash tests decide themselves when the retry happens."""
    flag = "true" if enabled else "false"
    (source_id,) = call(busctl, BLOCKLISTS, "AddSource", "ssb", name, url, flag)
    return int(source_id)


def import_source(busctl: Runner, source_id: int) -> dict[str, Any]:
    (result,) = call(busctl, BLOCKLISTS, "ImportSource", "u", str(source_id))
    return dict(result)


def runs(busctl: Runner, source_id: int) -> list[dict[str, Any]]:
    found, total = call(busctl, BLOCKLISTS, "ListImportRuns", "uuu", str(source_id), "1", "100")
    assert total == len(found)
    return list(found)


def jail_bans(f2b: F2bSandbox, jail: str = JAIL) -> set[str]:
    return set(f2b.banned(jail))


def actions(f2b: F2bSandbox) -> Counter[str]:
    """How often the dummy action ran per ``+IP`` / ``-IP`` line in the import jail."""
    return Counter(f2b.dummy_actions(JAIL))


def db_ban_rows(f2b: F2bSandbox, jail: str = JAIL) -> Counter[str]:
    """Rows per address in fail2ban's own ``bans`` table (one per ban event)."""
    with sqlite3.connect(f"file:{f2b.db_path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT ip, count(*) FROM bans WHERE jail = ? GROUP BY ip", (jail,))
        return Counter({str(ip): int(n) for ip, n in rows})


def f2b_log_mentions(f2b: F2bSandbox, what: str) -> int:
    return sum(1 for line in f2b.log_text().splitlines() if f"[{JAIL}]" in line and what in line)


def assert_banned_exactly_once(f2b: F2bSandbox, expected: set[str]) -> None:
    """Banned now, one dummy action each, one row each in fail2ban's DB, no unban."""
    assert jail_bans(f2b) == expected
    done = actions(f2b)
    assert {line[1:] for line in done if line.startswith("+")} == expected
    assert all(n == 1 for n in done.values()), {k: n for k, n in done.items() if n != 1}
    assert not [line for line in done if line.startswith("-")]
    rows = db_ban_rows(f2b)
    assert set(rows) == expected
    assert all(n == 1 for n in rows.values()), {k: n for k, n in rows.items() if n != 1}


def banguictl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bangui_daemon.cli.banguictl", "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO_ROOT,
    )


def file_dir(daemon: DaemonProcess) -> Path:
    assert daemon.config is not None
    return Path(daemon.config["blocklist"]["file_dir"])


def bans_changed_added(mon: Any) -> int:
    """Sum of BansChanged's `added` over the signals seen after the last ImportStarted."""
    added = 0
    for message in mon.signals():
        if message.member == "ImportStarted":
            added = 0
        elif message.member == "BansChanged":
            added += int(message.args[0].split()[1])
    return added


def signal_times(mon: Any, member: str) -> list[float]:
    """dbus-monitor's ``time=`` of each `member` signal, in order."""
    pattern = re.compile(rf"^signal time=([\d.]+) .*member={member}$")
    return [float(m[1]) for line in mon.raw if (m := pattern.match(line))]


# -------------------------------------------------------- diff and references
def test_import_unchanged_diff_reference_counting_and_self_bans(
    f2b: F2bSandbox,
    daemon: DaemonProcess,
    busctl: Runner,
    lists: ListServer,
    signal_monitor: Any,
) -> None:
    only_a = addresses(10, 10)
    shared, only_b = "45.20.0.1", "45.20.0.2"
    self_banned = "45.30.0.1"  # banned in the import jail by hand before any import
    sshd_banned = "45.30.0.2"  # banned by fail2ban itself in sshd (failed logins)
    net = "45.40.0.0/24"
    newcomer = "45.10.9.99"
    f2b.cli("set", JAIL, "banip", self_banned)
    f2b.write_failed_logins(sshd_banned, 4)
    f2b.wait_banned("sshd", sshd_banned)
    wait_until(lambda: actions(f2b)[f"+{self_banned}"] == 1, 10, "dummy action of the hand ban")
    mon = signal_monitor(user="root")

    list_a = [*only_a, shared, self_banned, sshd_banned, net]
    lists.lists["a"] = body(list_a)
    source_a = add_source(busctl, "list-a", lists.url("/list/a"))
    before = actions(f2b)
    result = import_source(busctl, source_a)
    assert result["status"] == "completed", result
    assert result["entries"] == len(list_a)
    assert result["refused"] == result["invalid"] == 0
    assert result["added"] == len(list_a) - 1  # the hand-banned one is there already
    assert result["removed"] == 0
    assert actions(f2b) - before == Counter(f"+{e}" for e in list_a if e != self_banned)
    assert jail_bans(f2b) == set(list_a)

    # Signals: started, progress, finished; the bans become BansChanged, never BanAdded.
    run_id = result["run_id"]
    mon.wait_for(f"ImportStarted (uint32 {source_a}, uint32 {run_id})")
    total = len(list_a) - 1
    mon.wait_for(f"ImportProgress (uint32 {source_a}, uint32 {total}, uint32 {total})")
    mon.wait_for(
        f'ImportFinished (uint32 {source_a}, string "completed", uint32 {total}, uint32 0)'
    )
    wait_until(lambda: bans_changed_added(mon) >= total, 10, "BansChanged for the import")
    imported = {f'string "{e}"' for e in set(list_a) - {self_banned}}
    ban_added = [
        m
        for m in mon.signals("BanAdded")
        if m.args[0] == f'string "{JAIL}"' and m.args[1] in imported
    ]
    assert ban_added == [], ban_added

    # The same content again (through banguictl): unchanged, no banip at all.
    bans_logged = f2b_log_mentions(f2b, " Ban ")
    before = actions(f2b)
    cli = banguictl("import", str(source_a))
    assert cli.returncode == 0, cli.stderr
    again = json.loads(cli.stdout)
    assert again["status"] == "unchanged"
    assert again["added"] == again["removed"] == 0
    assert again["run_id"] == run_id
    assert actions(f2b) == before
    assert f2b_log_mentions(f2b, " Ban ") == bans_logged
    assert f2b_log_mentions(f2b, "already banned") == 0
    assert [(r["status"], r["run_id"]) for r in runs(busctl, source_a)] == [("completed", run_id)]

    # A second source (a file below file_dir) lists the shared address and one of its own.
    list_file = file_dir(daemon) / "b.txt"
    list_file.write_bytes(body([shared, only_b]))
    source_b = add_source(busctl, "list-b", f"file://{list_file}")
    before = actions(f2b)
    result_b = import_source(busctl, source_b)
    assert result_b["status"] == "completed", result_b
    assert result_b["added"] == 1
    assert actions(f2b) - before == Counter({f"+{only_b}": 1})

    # A drops one of its own, the shared one, the hand-banned one and the sshd one, and
    # adds one: only the newcomer is banned; only what A alone listed and an import
    # banned is unbanned.
    dropped_own = only_a[0]
    list_a2 = [*only_a[1:], net, newcomer]
    lists.lists["a"] = body(list_a2)
    before = actions(f2b)
    result = import_source(busctl, source_a)
    assert result["status"] == "completed", result
    assert (result["added"], result["removed"]) == (1, 2)
    assert actions(f2b) - before == Counter(
        {f"+{newcomer}": 1, f"-{dropped_own}": 1, f"-{sshd_banned}": 1}
    )
    assert jail_bans(f2b) == {*list_a2, shared, only_b, self_banned}
    assert sshd_banned in jail_bans(f2b, "sshd")  # its own ban in sshd is untouched
    assert [r["status"] for r in runs(busctl, source_a)] == ["completed", "completed"]

    # Removing B unbans what B alone listed (now the shared one as well), nothing else.
    before = actions(f2b)
    removed = busctl("call", DEST, PATH, BLOCKLISTS, "RemoveSource", "u", str(source_b))
    assert removed.returncode == 0, removed.stderr
    assert actions(f2b) - before == Counter({f"-{shared}": 1, f"-{only_b}": 1})
    assert jail_bans(f2b) == {*list_a2, self_banned}
    (sources,) = call(busctl, BLOCKLISTS, "ListSources")
    assert [s["id"] for s in sources] == [source_a]
    assert sources[0]["last_status"] == "completed"


def test_not_modified_answer_is_unchanged_without_download(
    f2b: F2bSandbox, daemon: DaemonProcess, busctl: Runner, lists: ListServer
) -> None:
    entries = addresses(11, 5)
    lists.lists["e"] = body(entries)
    source = add_source(busctl, "etag", lists.url("/etag/e"))
    assert import_source(busctl, source)["status"] == "completed"
    before = actions(f2b)
    again = import_source(busctl, source)
    assert again["status"] == "unchanged"
    assert again["added"] == 0
    first, second = lists.hits("/etag/e")
    assert "If-None-Match" not in first
    assert second["If-None-Match"]
    assert actions(f2b) == before
    assert [r["status"] for r in runs(busctl, source)] == ["completed"]


# ------------------------------------------------------------------- refusals
def _own_address() -> str:
    own = [a for a in HostAddresses(set()).current() if a not in ("127.0.0.1", "::1")]
    assert own, "the host has no address besides loopback"
    return own[0]


@pytest.mark.f2b_options(blocklist_ignoreip="45.98.0.0/24")
@pytest.mark.daemon_config({"blocklist": {"allowlist": ["45.99.0.0/24"]}})
def test_protected_entries_are_refused_and_never_banned(
    f2b: F2bSandbox, daemon: DaemonProcess, busctl: Runner, lists: ListServer
) -> None:
    protected = [
        "10.0.0.0/8",
        "127.0.0.1",
        "0.0.0.0/0",
        "::1",
        _own_address(),
        "45.99.0.7",  # allow-listed
        "45.98.0.1",  # the jail's ignoreip
        "32.0.0.0/4",
        # issue 9/11: documentation and the other special-purpose blocks, as lists
        # like FireHOL level1 carry them (entries written in their normalised form)
        "192.0.2.77",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "2001:db8::/32",
        "3fff::1",
        "198.18.0.0/15",
        "0.0.0.0/8",
        "192.88.99.0/24",
        "64:ff9b::a00:1",  # NAT64 form of 10.0.0.1
        "2002:2d63:7::/48",  # 6to4 site of the allow-listed 45.99.0.7
    ]
    good = ["45.12.0.1", "64:ff9b::2d0c:2"]  # and NAT64's form of 45.12.0.2
    lists.lists["p"] = body([*protected, *good])
    (preview,) = call(busctl, BLOCKLISTS, "PreviewSource", "s", lists.url("/list/p"))
    assert preview["refused"] == len(protected)
    assert preview["sample"] == good
    assert sorted(r.split(" ")[0] for r in preview["refused_sample"]) == sorted(protected)
    assert jail_bans(f2b) == set()  # a preview bans nothing

    source = add_source(busctl, "protected", lists.url("/list/p"))
    result = import_source(busctl, source)
    assert result["status"] == "completed", result
    assert (result["entries"], result["refused"], result["added"]) == (20, 18, 2)
    assert jail_bans(f2b) == set(good)
    assert set(actions(f2b)) == {f"+{g}" for g in good}
    (run,) = runs(busctl, source)
    assert run["refused"] == len(protected)
    assert run["imported"] == 2


# --------------------------------------------------------------- bad sources
@pytest.mark.daemon_config({"blocklist": {"max_bytes": 4096, "timeout": 1.5}})
def test_oversized_slow_and_redirected_sources_fail_clearly(
    f2b: F2bSandbox, daemon: DaemonProcess, busctl: Runner, lists: ListServer
) -> None:
    local = file_dir(daemon) / "local.txt"
    local.write_bytes(body(["45.13.0.1"]))
    lists.lists["big"] = body(addresses(13, 1000))  # ~11 KB with a Content-Length
    cases = {
        "big": (lists.url("/list/big"), "larger than 4096 bytes"),
        "chunked": (lists.url("/chunked?size=20000"), "larger than 4096 bytes"),
        "trickle": (lists.url("/trickle"), "did not finish within 1.5 s"),
        "to-file": (lists.url(f"/to-file?path={local}"), "scheme other than http or https"),
    }
    for name, (url, message) in cases.items():
        source = add_source(busctl, name, url)
        started = time.monotonic()
        result = import_source(busctl, source)
        assert result["status"] == "failed", (name, result)
        assert message in result["error"], (name, result["error"])
        if name == "trickle":
            assert time.monotonic() - started < 6
        assert not [r for r in runs(busctl, source) if r["status"] == "completed"], name
        (listed,) = [s for s in call(busctl, BLOCKLISTS, "ListSources")[0] if s["id"] == source]
        assert listed["last_status"] == "failed"
        assert message in listed["last_error"]
    assert len(lists.hits("/to-file")) == 1
    assert jail_bans(f2b) == set()
    assert not actions(f2b)


# ------------------------------------------------------------------ concurrency
@pytest.mark.daemon_config({"blocklist": {"batch_size": 10}})
def test_two_concurrent_imports_of_one_source_are_one_import(
    f2b: F2bSandbox,
    daemon: DaemonProcess,
    busctl: Runner,
    lists: ListServer,
    signal_monitor: Any,
) -> None:
    entries = addresses(14, 250)  # ~1.5 s of dummy actions: several progress signals
    lists.lists["c"] = body(entries)
    lists.gate("c")
    source = add_source(busctl, "concurrent", lists.url("/gated/c"))
    mon = signal_monitor(user="root")
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(import_source, busctl, source)
        lists.wait_hits("/gated/c", 1)  # the first import is downloading (held)
        second = pool.submit(import_source, busctl, source)
        daemon.wait_for_log("blocklist_import_lost_race", timeout=10)
        lists.release("c")
        one, two = first.result(30), second.result(30)
    assert one == two
    assert one["status"] == "completed"
    assert one["added"] == len(entries)
    assert len(lists.hits("/gated/c")) == 1
    assert [(r["status"], r["run_id"]) for r in runs(busctl, source)] == [
        ("completed", one["run_id"])
    ]
    assert_banned_exactly_once(f2b, set(entries))

    mon.wait_for("ImportFinished")
    assert len(mon.signals("ImportStarted")) == len(mon.signals("ImportFinished")) == 1
    progress = signal_times(mon, "ImportProgress")
    assert len(progress) >= 3
    # at most ~4 a second: 4 throttled ones plus the final one in any second
    busiest = max(sum(1 for t in progress if start <= t < start + 1) for start in progress)
    assert busiest <= 5, progress
    last = mon.signals("ImportProgress")[-1]
    assert last.args[1:] == (f"uint32 {len(entries)}", f"uint32 {len(entries)}")


# --------------------------------------------------------------------- access
def test_non_admin_cannot_add_or_import_but_can_list(
    daemon: DaemonProcess, busctl: Runner, gdbus: Runner, test_users: Any, lists: ListServer
) -> None:
    reader = test_users["bgt-reader"]
    lists.lists["r"] = body(addresses(15, 3))
    source = add_source(busctl, "readable", lists.url("/list/r"))
    denied = "org.freedesktop.DBus.Error.AccessDenied"
    bl = "org.bangui.Daemon1.Blocklists"
    assert error_name(gdbus, bl, "AddSource", "x", lists.url("/list/r"), "true", user=reader) == (
        denied
    )
    assert error_name(gdbus, bl, "ImportSource", f"uint32 {source}", user=reader) == denied
    (sources,) = call(busctl, BLOCKLISTS, "ListSources", user=reader)
    assert [s["name"] for s in sources] == ["readable"]
    assert runs(busctl, source) == []
    assert not lists.hits("/list/r")


# --------------------------------------------------------------- crash safety
def _arm_crash(daemon: DaemonProcess, point: str) -> None:
    """The next start runs the daemon through the crash seam (tests/harness/crash_daemon)."""
    daemon.module = crash_daemon.MODULE
    daemon.extra_env[crash_daemon.ENV] = point


def _restart_without_crash(daemon: DaemonProcess) -> None:
    daemon.module = DAEMON_MODULE
    daemon.extra_env.pop(crash_daemon.ENV, None)
    daemon.start()


def _crash_import(daemon: DaemonProcess, busctl: Runner, source: int) -> None:
    """Import with the crash armed; the daemon dies of SIGKILL at the armed point."""
    assert daemon.extra_env.get(crash_daemon.ENV)
    reply = busctl("call", DEST, PATH, BLOCKLISTS,
                   "ImportSource", "u", str(source))  # fmt: skip
    assert reply.returncode != 0  # no answer: the daemon died
    wait_until(lambda: not daemon.running, 10, "the daemon to die")
    assert daemon.kill() == -9


@pytest.mark.parametrize(
    ("point", "changed"),
    [
        ("after_download", False),
        ("ban:5", False),  # 6 batches: 3 banned and booked, the 4th banned and pending
        ("before_complete", False),
        ("before_complete", True),
    ],
)
def test_crash_at_any_point_then_retry_bans_each_address_once(
    f2b: F2bSandbox,
    start_daemon: Any,
    busctl: Runner,
    lists: ListServer,
    point: str,
    changed: bool,
) -> None:
    """A SIGKILL at an exact point of the import (the seam tests/harness/crash_daemon)."""
    config = {"blocklist": {"batch_size": 10}}
    entries = [*addresses(16, 59), "45.41.0.0/24"]
    lists.lists["k"] = body(entries)
    expected_runs = 1
    dropped: list[str] = []
    if changed:  # a completed import first; the crash hits the import of the change
        daemon = start_daemon(config)
        source = add_source(busctl, "crashy", lists.url("/list/k"), enabled=False)
        assert import_source(busctl, source)["status"] == "completed"
        dropped, kept = entries[:5], entries[5:]
        entries = [*kept, *addresses(17, 20)]
        lists.lists["k"] = body(entries)
        expected_runs = 2
        daemon.stop()
        _arm_crash(daemon, point)
        daemon.start()
    else:
        daemon = start_daemon(config, module=crash_daemon.MODULE, env={crash_daemon.ENV: point})
        source = add_source(busctl, "crashy", lists.url("/list/k"), enabled=False)
    before = actions(f2b)

    _crash_import(daemon, busctl, source)
    banned_at_crash = jail_bans(f2b) & set(entries)
    if point == "after_download":
        assert actions(f2b) == before
    elif point == "ban:5":
        assert len(banned_at_crash) == 40
    else:
        assert banned_at_crash == set(entries)

    _restart_without_crash(daemon)
    pending = [r for r in runs(busctl, source) if r["status"] == "pending"]
    assert len(pending) == 1  # the crashed run was never marked completed
    result = import_source(busctl, source)
    assert result["status"] == "completed", result
    assert result["run_id"] == pending[0]["run_id"]  # the retry takes the same run over
    assert [r["status"] for r in runs(busctl, source)] == ["completed"] * expected_runs
    if changed:
        done = actions(f2b)
        for line in dropped:  # banned by the first import, unbanned once by the change
            assert (done.pop(f"+{line}"), done.pop(f"-{line}")) == (1, 1)
        assert done == Counter(f"+{e}" for e in entries)
        assert jail_bans(f2b) == set(entries)
        assert db_ban_rows(f2b) == Counter(entries)  # fail2ban deletes the row of an unban
    else:
        assert_banned_exactly_once(f2b, set(entries))

    before = actions(f2b)
    assert import_source(busctl, source)["status"] == "unchanged"
    assert actions(f2b) == before


@pytest.mark.daemon_config({"blocklist": {"batch_size": 20}})
def test_sigkill_while_banning_then_retry_bans_each_address_once(
    f2b: F2bSandbox,
    daemon: DaemonProcess,
    busctl: Runner,
    lists: ListServer,
    signal_monitor: Any,
) -> None:
    """No hook: a plain SIGKILL from outside once ImportProgress shows work under way;
    the restarted daemon's scheduled import finishes the job."""
    entries = addresses(18, 400)  # ~2.5 s of dummy actions
    lists.lists["s"] = body(entries)
    source = add_source(busctl, "killed", lists.url("/list/s"))
    mon = signal_monitor(user="root")
    with ThreadPoolExecutor(1) as pool:
        pending_call = pool.submit(
            busctl, "call", DEST, PATH, BLOCKLISTS,
            "ImportSource", "u", str(source),
        )  # fmt: skip
        mon.wait_for(re.compile(rf"ImportProgress \(uint32 {source}, uint32 \d+, uint32 400\)"))
        daemon.kill()
        assert pending_call.result(30).returncode != 0
    assert 0 < len(jail_bans(f2b)) < len(entries)

    # The source is enabled, so the restarted daemon's first blocklist_import task run
    # is the retry: it completes the crashed run by itself.
    daemon.start()
    wait_until(
        lambda: [r["status"] for r in runs(busctl, source)] == ["completed"],
        30,
        "the restart's import to complete the crashed run",
    )
    assert_banned_exactly_once(f2b, set(entries))
    assert import_source(busctl, source)["status"] == "unchanged"
    assert_banned_exactly_once(f2b, set(entries))
