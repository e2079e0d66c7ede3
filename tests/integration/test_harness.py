"""The test harness itself: real fail2ban, the private bus and its policy, the users,
and the daemon fixture (driven with ``tests.harness.stub_daemon``, so these tests do
not depend on the real daemon)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from tests.conftest import BusCli, DaemonFactory
from tests.harness import (
    BUS_NAME,
    OBJECT_PATH,
    REPO_ROOT,
    DaemonProcess,
    DaemonStartError,
    F2bError,
    F2bSandbox,
    HarnessError,
    PrivateSystemBus,
    SignalMonitor,
    TestUser,
    build_config,
    dump_toml,
    run_as,
    wait_until,
)
from tests.harness.fail2ban import JAIL_BLOCKLIST, JAIL_SSHD

pytestmark = pytest.mark.integration

STUB = "tests.harness.stub_daemon"
IFACE = "org.bangui.Daemon1"
ATTACKER = "45.33.12.7"


def _db_bans(db: Path, ip: str) -> list[tuple[str, str]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
    try:
        return con.execute("SELECT jail, ip FROM bans WHERE ip = ?", (ip,)).fetchall()
    except sqlite3.OperationalError:
        return []  # DB not created yet or locked for a moment
    finally:
        con.close()


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# ------------------------------------------------------------------- fail2ban
def test_fail2ban_bans_after_failed_logins(f2b: F2bSandbox) -> None:
    assert set(f2b.jails) == {JAIL_SSHD, JAIL_BLOCKLIST}
    assert f2b.banned(JAIL_SSHD) == []
    f2b.write_failed_logins(ATTACKER, 4)
    f2b.wait_banned(JAIL_SSHD, ATTACKER, timeout=20)
    wait_until(lambda: f"+{ATTACKER}" in f2b.dummy_actions(JAIL_SSHD), 10, "dummy action")
    # fail2ban writes its DB asynchronously
    wait_until(lambda: _db_bans(f2b.db_path, ATTACKER), 10, "bans row")
    assert _db_bans(f2b.db_path, ATTACKER) == [(JAIL_SSHD, ATTACKER)]
    status = dict(f2b.client("status", JAIL_SSHD))
    assert dict(status["Actions"])["Banned IP list"] == [ATTACKER]


def test_fail2ban_client_and_cli(f2b: F2bSandbox) -> None:
    assert f2b.client("ping") == "pong"
    assert f2b.client("set", JAIL_BLOCKLIST, "banip", "11.1.1.1", "11.1.1.2") == 2
    assert sorted(f2b.banned(JAIL_BLOCKLIST)) == ["11.1.1.1", "11.1.1.2"]
    assert f2b.dummy_actions(JAIL_BLOCKLIST) == ["+11.1.1.1", "+11.1.1.2"]
    assert f2b.client("set", JAIL_BLOCKLIST, "unbanip", "11.1.1.2") == 1
    assert "-11.1.1.2" in f2b.dummy_actions(JAIL_BLOCKLIST)
    with pytest.raises(F2bError, match="nosuchjail"):
        f2b.client("status", "nosuchjail")
    r = f2b.cli("ping")
    assert r.returncode == 0, r.stderr
    assert "pong" in r.stdout, r.stderr


def test_fail2ban_kill_and_restart(f2b: F2bSandbox) -> None:
    assert f2b.client("set", JAIL_BLOCKLIST, "banip", "45.9.9.9") == 1
    wait_until(lambda: _db_bans(f2b.db_path, "45.9.9.9"), 10, "bans row")
    old_pid = f2b.pid
    assert f2b.kill() == -signal.SIGKILL
    assert not f2b.running
    with pytest.raises(F2bError):
        f2b.client("ping", timeout=2)
    f2b.restart()
    assert f2b.running
    assert f2b.pid != old_pid
    # same dir, same DB: the ban is restored from it
    wait_until(lambda: "45.9.9.9" in f2b.banned(JAIL_BLOCKLIST), 10, "restored ban")
    assert f2b.stop() == 0
    f2b.restart()
    assert f2b.client("ping") == "pong"


def test_fail2ban_options(make_f2b: Callable[..., F2bSandbox]) -> None:
    sandbox = make_f2b(
        dbpurgeage=7200,
        blocklist_ignoreip="203.0.113.0/24",
        extra_jails={"nginx-test": {"maxretry": 5, "bantime": 60}},
    )
    assert set(sandbox.jails) == {JAIL_SSHD, JAIL_BLOCKLIST, "nginx-test"}
    assert sandbox.client("get", "dbpurgeage") == 7200
    assert sandbox.client("get", "nginx-test", "maxretry") == 5
    assert [str(x) for x in sandbox.client("get", JAIL_BLOCKLIST, "ignoreip")] == ["203.0.113.0/24"]
    assert list(sandbox.client("get", JAIL_SSHD, "ignoreip")) == []
    assert sandbox.db_path.is_file()


@pytest.mark.f2b_options(dbpurgeage="2d")
def test_f2b_marker_options(f2b: F2bSandbox) -> None:
    assert f2b.client("get", "dbpurgeage") == 2 * 86400


def test_fail2ban_sandbox_runs_unprivileged(test_users: dict[str, TestUser]) -> None:
    """The whole sandbox (server + in-process client) works as a normal user."""
    r = run_as(
        "bgt-reader",
        ["/usr/bin/python3", "-B", "-m", "tests.harness.fail2ban"],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO_ROOT)},
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["uid"] == test_users["bgt-reader"].uid
    assert result["banned"] == [ATTACKER]
    assert f"+{ATTACKER}" in result["dummy"]


# ------------------------------------------------------------------------ bus
def test_bus_starts_with_policy(system_bus: PrivateSystemBus, busctl: BusCli) -> None:
    system_bus.check_log()
    assert "Encountered error" not in system_bus.log_text()
    assert (system_bus.policy_dir / "org.bangui.Daemon1.conf").is_file()
    assert oct(system_bus.root.stat().st_mode & 0o777) == "0o755"
    assert os.environ["DBUS_SYSTEM_BUS_ADDRESS"] == system_bus.address
    r = busctl("call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
               "org.freedesktop.DBus", "GetId")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("s "), r.stderr


def test_bus_refuses_broken_policy(tmp_path: Path) -> None:
    bad = tmp_path / "broken.conf"
    bad.write_text("<busconfig><policy context='default'><allow bogus='x'/></policy></busconfig>")
    bus = PrivateSystemBus([bad])
    try:
        with pytest.raises(HarnessError, match="Encountered error"):
            bus.start()
        assert not bus.running
    finally:
        bus.close()


def _request_name(busctl: BusCli, user: str | None) -> subprocess.CompletedProcess[str]:
    # flags 4 = DO_NOT_QUEUE; the name is released again when busctl exits
    return busctl("call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                  "org.freedesktop.DBus", "RequestName", "su", BUS_NAME, "4",
                  user=user)  # fmt: skip


def test_only_root_may_own_the_name(busctl: BusCli, test_users: dict[str, TestUser]) -> None:
    r = _request_name(busctl, None)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "u 1", r.stderr  # PRIMARY_OWNER
    for user in ("bgt-reader", "bgt-admin"):
        r = _request_name(busctl, user)
        assert r.returncode != 0, r.stdout
        assert "Access denied" in r.stderr, r.stderr


# --------------------------------------------------------------------- policy
POLICY_CASES = [
    # (interface, member, busctl signature+args, reader allowed by the bus)
    # Admin methods reach the daemon for everyone: the daemon decides (root, polkit or
    # the admin group; tests/integration/test_polkit.py). The stub here does not.
    ("org.bangui.Daemon1", "GetStatus", [], True),
    ("org.bangui.Daemon1", "ListJails", [], True),
    ("org.bangui.Daemon1", "ListBans", ["suu", "", "0", "10"], True),
    ("org.bangui.Daemon1", "ListTasks", [], True),
    ("org.bangui.Daemon1", "NotInTheContract", [], False),  # a member added later
    ("org.bangui.Daemon1", "BanIp", ["ss", "sshd", "198.51.100.1"], True),
    ("org.bangui.Daemon1", "UnbanIp", ["ss", "", "198.51.100.1"], True),
    ("org.bangui.Daemon1", "RunTask", ["s", "history_sync"], True),
    ("org.bangui.Daemon1.History", "GetHistory", ["a{sv}uu", "0", "1", "10"], True),
    ("org.bangui.Daemon1.History", "GetIpHistory", ["s", "192.0.2.1"], True),
    ("org.bangui.Daemon1.History", "GetTimeline", ["xx", "0", "3600"], True),
    ("org.bangui.Daemon1.History", "GetTop", ["sxu", "jail", "0", "5"], True),
    ("org.bangui.Daemon1.Blocklists", "ListSources", [], True),
    ("org.bangui.Daemon1.Blocklists", "ListImportRuns", ["uuu", "0", "1", "10"], True),
    (
        "org.bangui.Daemon1.Blocklists",
        "AddSource",
        ["ssb", "x", "https://x.invalid/", "true"],
        True,
    ),
    ("org.bangui.Daemon1.Blocklists", "RemoveSource", ["u", "1"], True),
    ("org.bangui.Daemon1.Blocklists", "ImportAll", [], True),
    ("org.bangui.Daemon1.Blocklists", "PreviewSource", ["s", "https://x.invalid/"], True),
    ("org.bangui.Daemon1.Geo", "LookupIp", ["s", "192.0.2.1"], True),
    ("org.bangui.Daemon1.Geo", "LookupIps", ["as", "1", "192.0.2.1"], True),
    (
        "org.freedesktop.DBus.Properties",
        "Set",
        ["ssv", "org.bangui.Daemon1", "State", "s", "x"],
        False,
    ),
]


def test_policy_read_vs_admin(
    start_daemon: DaemonFactory, busctl: BusCli, test_users: dict[str, TestUser]
) -> None:
    """With a stub owning the name, only the bus policy decides who gets through."""
    start_daemon(module=STUB)
    wrong: list[str] = []
    for iface, member, args, reader_ok in POLICY_CASES:
        for user, expect_ok in (("bgt-reader", reader_ok), ("bgt-admin", True), (None, True)):
            r = busctl("call", BUS_NAME, OBJECT_PATH, iface, member, *args, user=user)
            denied = "Access denied" in r.stderr
            if denied == expect_ok:
                wrong.append(f"{user or 'root'} {iface}.{member}: rc={r.returncode} {r.stderr}")
            if expect_ok and iface.startswith("org.bangui") and f"stub:{member}" not in r.stdout:
                wrong.append(f"{user or 'root'} {iface}.{member}: no stub reply: {r.stderr}")
    assert not wrong, "\n".join(wrong)
    # the standard read interfaces are open to everyone
    for args in (
        ["introspect", BUS_NAME, OBJECT_PATH],
        ["call", BUS_NAME, OBJECT_PATH, "org.freedesktop.DBus.Peer", "Ping"],
        ["get-property", BUS_NAME, OBJECT_PATH, "org.bangui.Daemon1", "Version"],
    ):
        r = busctl(*args, user="bgt-reader")
        assert "Access denied" not in r.stderr, (args, r.stderr)


def test_gdbus_as_reader(
    start_daemon: DaemonFactory, gdbus: BusCli, test_users: dict[str, TestUser]
) -> None:
    start_daemon(module=STUB)
    ok = gdbus("call", "--dest", BUS_NAME, "--object-path", OBJECT_PATH,
               "--method", "org.bangui.Daemon1.GetStatus", user="bgt-reader")  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "stub:GetStatus" in ok.stdout, ok.stderr
    denied = gdbus("call", "--dest", BUS_NAME, "--object-path", OBJECT_PATH,
                   "--method", "org.freedesktop.DBus.Properties.Set",
                   "org.bangui.Daemon1", "State", "<'x'>", user="bgt-reader")  # fmt: skip
    assert denied.returncode != 0
    assert "org.freedesktop.DBus.Error.AccessDenied" in denied.stderr, denied.stderr


# --------------------------------------------------------------------- daemon
def test_daemon_fixture_lifecycle(start_daemon: DaemonFactory, f2b: F2bSandbox) -> None:
    d = start_daemon(module=STUB, tasks={"history_sync": 5}, log={"format": None})
    ready = d.wait_notification(lambda n: n.fields.get("READY") == "1", 1)
    assert ready.pid == d.pid  # NotifyAccess=main would accept it
    # the config the daemon got: config.md keys, sandbox paths, merged overrides
    config = tomllib.loads(d.config_path.read_text())
    assert config["fail2ban"]["socket"] == str(f2b.socket_path)
    assert config["fail2ban"]["database"] == str(f2b.db_path)
    assert config["dbus"] == {"bus": "system", "admin_group": "bangui-admin"}
    assert config["tasks"]["ban_watch"] == 0.5
    assert config["tasks"]["history_sync"] == 5
    assert config["log"] == {"level": "debug"}
    assert not Path(config["geo"]["country_db"]).exists()
    assert Path(config["blocklist"]["file_dir"]).is_dir()
    assert d.wait_for_log("config_loaded")["path"] == str(d.config_path)

    d.reload()
    d.wait_for_log("config_reloaded")
    first_pid = d.pid
    d.restart()
    assert d.pid != first_pid
    assert len([n for n in d.notifications if n.fields.get("READY") == "1"]) == 2
    assert d.stop() == 0
    assert any(n.fields.get("STOPPING") == "1" for n in d.notifications_since_start)
    d.start()
    assert d.kill() == -signal.SIGKILL


def test_daemon_watchdog_and_signals(
    start_daemon: DaemonFactory, signal_monitor: Callable[..., SignalMonitor]
) -> None:
    d = start_daemon(module=STUB, env={"WATCHDOG_USEC": "100000"})
    d.wait_notification(lambda n: n.text == "WATCHDOG=1", 5)
    mon = signal_monitor()
    d.send_signal(signal.SIGUSR1)
    line = mon.wait_for("org.bangui.Daemon1.BanAdded", timeout=10)
    assert '"192.0.2.1"' in line
    [msg] = mon.signals("BanAdded")
    assert msg.interface == "org.bangui.Daemon1"
    assert msg.args[:2] == ('string "sshd"', 'string "192.0.2.1"')
    assert msg.args[3] == "int64 600"


def test_signals_reach_unprivileged_monitor(
    start_daemon: DaemonFactory,
    signal_monitor: Callable[..., SignalMonitor],
    test_users: dict[str, TestUser],
) -> None:
    d = start_daemon(module=STUB)
    mon = signal_monitor(user="bgt-reader")
    d.send_signal(signal.SIGUSR1)
    mon.wait_for(lambda line: "BanAdded" in line and "192.0.2.1" in line, timeout=10)


def test_daemon_start_failure_reports_output(start_daemon: DaemonFactory) -> None:
    with pytest.raises(DaemonStartError, match="exiting before READY"):
        start_daemon(module=STUB, env={"STUB_EXIT_BEFORE_READY": "3"})


@pytest.mark.skipif(
    not (REPO_ROOT / "bangui_daemon" / "__main__.py").exists(),
    reason="bangui_daemon/__main__.py does not exist yet",
)
def test_real_daemon_becomes_ready(daemon: DaemonProcess, busctl: BusCli) -> None:
    assert daemon.running
    r = busctl("call", BUS_NAME, OBJECT_PATH, "org.bangui.Daemon1", "GetStatus")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("a{sv}"), r.stderr


# -------------------------------------------------------------- plumbing/teardown
@dataclass
class _Paths:
    socket_path: Path
    db_path: Path


def test_toml_round_trip(tmp_path: Path) -> None:
    paths = _Paths(tmp_path / "f.sock", tmp_path / 'we"ird\\.sqlite3')
    config = build_config(
        paths,
        tmp_path,
        {"blocklist": {"allowlist": ["192.0.2.0/24"], "max_entries": 10}, "log": None},
    )
    assert tomllib.loads(dump_toml(config)) == config
    assert "log" not in config


OPEN_POLICY = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><policy context="default"><allow own="org.bangui.Daemon1"/></policy></busconfig>
"""


def test_teardown_leaves_no_processes(tmp_path: Path) -> None:
    # a policy any uid can own the name with: this test also runs unprivileged
    policy = tmp_path / "open.conf"
    policy.write_text(OPEN_POLICY)
    with F2bSandbox() as f2b, PrivateSystemBus([policy]) as bus:
        roots = [f2b.root, bus.root]
        pids = [f2b.pid, bus.pid]
        with DaemonProcess.from_sandbox(f2b, bus, module=STUB) as d:
            pids.append(d.pid)
            roots.append(d.work_dir)
            with SignalMonitor(bus.address) as mon:
                assert mon.proc is not None
                pids.append(mon.proc.pid)
            assert _processes_mentioning(str(f2b.socket_path))
    for pid in pids:
        assert pid is not None
        wait_until(partial(_gone, pid), 5, f"pid {pid} gone")
    for root in roots:
        assert not root.exists()
        assert _processes_mentioning(str(root)) == []
