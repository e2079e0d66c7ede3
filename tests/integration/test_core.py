"""The core interface against a real fail2ban and a real system-like bus (issue P1)."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from pathlib import Path
from signal import SIGTERM
from typing import Any

import pytest

from tests.harness.daemon import DaemonProcess
from tests.harness.fail2ban import F2bSandbox
from tests.harness.util import wait_until
from tests.integration.dbus_calls import (
    BLOCKLISTS,
    CORE,
    DEST,
    HISTORY,
    PATH,
    Runner,
    call,
    error_name,
    get_property,
)

REPO = Path(__file__).resolve().parents[2]
CONTRACT_XML = REPO / "dbus-policy" / "org.bangui.Daemon1.xml"
E = "org.bangui.Daemon1.Error."


def banned_ips(busctl: Runner, jail: str = "") -> set[str]:
    bans, _total = call(busctl, CORE, "ListBans", "suu", jail, "0", "1000")
    return {b["ip"] for b in bans}


def test_fail2ban_ban_is_signalled_listed_and_unbanned_over_dbus(
    f2b: F2bSandbox, daemon: DaemonProcess, busctl: Runner, signal_monitor: Any
) -> None:
    mon = signal_monitor(user="root")
    f2b.cli("set", "sshd", "banip", "45.33.12.7")
    started = time.monotonic()
    line = mon.wait_for("BanAdded", timeout=5)
    assert time.monotonic() - started < 5
    assert '"sshd"' in line
    assert '"45.33.12.7"' in line
    assert "45.33.12.7" in banned_ips(busctl, "sshd")
    bans, total = call(busctl, CORE, "ListBans", "suu", "sshd", "0", "10")
    (ban,) = [b for b in bans if b["ip"] == "45.33.12.7"]
    assert ban["origin"] == "selfblock"
    assert ban["bantime"] == 3600
    assert ban["expires"] == ban["timeofban"] + 3600
    assert total == 1

    (removed,) = call(busctl, CORE, "UnbanIp", "ss", "", "45.33.12.7")
    assert removed == 1
    assert "45.33.12.7" not in f2b.banned("sshd")
    line = mon.wait_for("BanRemoved", timeout=5)
    assert '"45.33.12.7"' in line


def test_ban_from_failed_logins_reaches_listbans(
    f2b: F2bSandbox, daemon: DaemonProcess, busctl: Runner
) -> None:
    f2b.write_failed_logins("45.33.12.8", 4)
    f2b.wait_banned("sshd", "45.33.12.8")
    wait_until(lambda: "45.33.12.8" in banned_ips(busctl), 5, "45.33.12.8 listed")

    def sshd() -> dict[str, Any]:
        (jails,) = call(busctl, CORE, "ListJails")
        return dict(next(j for j in jails if j["name"] == "sshd"))

    assert sshd()["currently_banned"] == 1  # moves with the ban itself
    # failure counters are fail2ban's own, read on each ban_watch tick
    wait_until(lambda: sshd()["total_failed"] >= 4, 5, "4 failures counted")


def test_status_properties_and_tasks(daemon: DaemonProcess, busctl: Runner) -> None:
    (status,) = call(busctl, CORE, "GetStatus")
    assert status["fail2ban_connected"] is True
    assert status["fail2ban_version"] == "1.0.2"
    assert sorted(status["jails"]) == ["blocklist-import", "sshd"]
    for key in ("version", "active_bans", "archived_events", "last_history_sync"):
        assert key in status
    assert get_property(busctl, "State") == "running"
    assert get_property(busctl, "InterfaceVersion").startswith("1.")
    assert abs(get_property(busctl, "StartedAt") - time.time()) < 120
    (tasks,) = call(busctl, CORE, "ListTasks")
    names = {t["name"] for t in tasks}
    assert {"ban_watch", "history_sync", "history_purge", "blocklist_import"} <= names
    (result,) = call(busctl, CORE, "RunTask", "s", "ban_watch")
    assert result["status"] == "ok"
    assert result["name"] == "ban_watch"


def test_unknown_task_is_not_found(daemon: DaemonProcess, gdbus: Runner) -> None:
    assert error_name(gdbus, CORE, "RunTask", "no_such_task") == E + "NotFound"


@pytest.mark.daemon_config({"blocklist": {"allowlist": ["45.99.0.0/24"]}})
@pytest.mark.parametrize(
    ("jail", "ip", "error"),
    [
        ("sshd", "not-an-ip", "InvalidArgument"),
        ("sshd", " 45.1.1.1", "InvalidArgument"),
        ("sshd", "999.1.1.1", "InvalidArgument"),
        ("nosuchjail", "45.1.1.1", "InvalidArgument"),
        ("sshd", "127.0.0.1", "Refused"),
        ("sshd", "10.0.0.1", "Refused"),
        ("sshd", "::1", "Refused"),
        ("sshd", "45.99.0.7", "Refused"),
        ("sshd", "192.0.2.1", "Refused"),  # documentation (issue 9)
        ("sshd", "64:ff9b::a00:1", "Refused"),  # NAT64 form of 10.0.0.1
    ],
)
def test_banip_refuses_bad_and_protected_addresses(
    f2b: F2bSandbox, daemon: DaemonProcess, gdbus: Runner, jail: str, ip: str, error: str
) -> None:
    assert error_name(gdbus, CORE, "BanIp", jail, ip) == E + error
    assert f2b.banned("sshd") == []
    assert f2b.dummy_actions("sshd") == []


def test_banip_as_root_bans_in_fail2ban(
    f2b: F2bSandbox, daemon: DaemonProcess, busctl: Runner
) -> None:
    assert call(busctl, CORE, "BanIp", "ss", "sshd", "45.113.0.9") == [True]
    assert call(busctl, CORE, "BanIp", "ss", "sshd", "45.113.0.9") == [False]
    assert "45.113.0.9" in f2b.banned("sshd")


def test_non_admin_is_denied_admin_methods_but_reads(
    daemon: DaemonProcess, busctl: Runner, gdbus: Runner, test_users: Any
) -> None:
    reader = test_users["bgt-reader"]
    for member, args in (
        ("BanIp", ("sshd", "45.2.2.2")),
        ("UnbanIp", ("", "45.2.2.2")),
        ("RunTask", ("ban_watch",)),
    ):
        name = error_name(gdbus, CORE, member, *args, user=reader)
        assert name == "org.freedesktop.DBus.Error.AccessDenied", member
    (status,) = call(busctl, CORE, "GetStatus", user=reader)
    assert status["fail2ban_connected"] is True
    assert call(busctl, CORE, "ListBans", "suu", "", "0", "10", user=reader)[1] == 0


def test_admin_group_member_may_ban(
    f2b: F2bSandbox, daemon: DaemonProcess, busctl: Runner, test_users: Any
) -> None:
    admin = test_users["bgt-admin"]
    assert call(busctl, CORE, "BanIp", "ss", "sshd", "45.113.0.10", user=admin) == [True]
    assert "45.113.0.10" in f2b.banned("sshd")


def test_daemon_checks_admin_itself_behind_the_policy(
    daemon: DaemonProcess, system_bus: Any, gdbus: Runner, test_users: Any, tmp_path: Path
) -> None:
    """Defence in depth: with a policy that lets everyone call, the daemon still refuses."""
    permissive = tmp_path / "zz-permissive.conf"
    permissive.write_text(
        '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">\n'
        '<busconfig><policy context="default">'
        f'<allow send_destination="{DEST}"/></policy></busconfig>\n'
    )
    system_bus.add_policy(permissive)
    try:
        name = error_name(gdbus, CORE, "BanIp", "sshd", "45.3.3.3", user=test_users["bgt-reader"])
        assert name == "org.freedesktop.DBus.Error.AccessDenied"
    finally:
        (Path(system_bus.policy_dir) / permissive.name).unlink()
        system_bus.reload()


def _interfaces(xml_text: str) -> dict[str, set[tuple[str, str, str]]]:
    found: dict[str, set[tuple[str, str, str]]] = {}
    for iface in ET.fromstring(xml_text).findall("interface"):
        members: set[tuple[str, str, str]] = set()
        for m in iface.findall("method"):
            args = m.findall("arg")
            ins = "".join(a.get("type", "") for a in args if a.get("direction", "in") == "in")
            outs = "".join(a.get("type", "") for a in args if a.get("direction") == "out")
            members.add((m.get("name", ""), ins, outs))
        for s in iface.findall("signal"):
            members.add((s.get("name", ""), "".join(a.get("type", "") for a in s), "signal"))
        for p in iface.findall("property"):
            members.add((p.get("name", ""), p.get("type", ""), p.get("access", "")))
        found[iface.get("name", "")] = members
    return found


def test_introspection_matches_the_contract(daemon: DaemonProcess, busctl: Runner) -> None:
    result = busctl("introspect", "--xml-interface", DEST, PATH)
    assert result.returncode == 0, result.stderr
    have = _interfaces(result.stdout)
    want = _interfaces(CONTRACT_XML.read_text())
    for iface in (CORE, HISTORY, BLOCKLISTS):
        assert want[iface] <= have[iface], sorted(want[iface] - have[iface])
    contract_names = {m[0] for m in want[CORE]}
    assert {m[0] for m in have[CORE]} == contract_names  # the core has exactly these


def test_fail2ban_death_degrades_and_recovers(
    f2b: F2bSandbox, daemon: DaemonProcess, busctl: Runner, gdbus: Runner, signal_monitor: Any
) -> None:
    mon = signal_monitor(user="root")
    f2b.kill()
    mon.wait_for(lambda line: "PropertiesChanged" in line and "Fail2banConnected" in line, 10)
    assert get_property(busctl, "Fail2banConnected") is False
    assert get_property(busctl, "State") == "degraded"
    started = time.monotonic()
    assert error_name(gdbus, CORE, "BanIp", "sshd", "45.4.4.4") == E + "Fail2banUnavailable"
    assert time.monotonic() - started < 2
    (status,) = call(busctl, CORE, "GetStatus")  # still answering
    assert status["fail2ban_connected"] is False

    f2b.restart()
    restarted = time.monotonic()
    wait_until(lambda: get_property(busctl, "Fail2banConnected") is True, 10, "Fail2banConnected")
    assert time.monotonic() - restarted < 10
    assert get_property(busctl, "State") == "running"
    assert daemon.running


@pytest.mark.f2b_options(extra_jails={"storm": {"action": ""}})
def test_ban_storm_is_coalesced_and_daemon_stays_connected(
    f2b: F2bSandbox, daemon: DaemonProcess, busctl: Runner, signal_monitor: Any
) -> None:
    mon = signal_monitor(user="root")
    ips = [f"45.{100 + i // 250}.{i % 250}.1" for i in range(2000)]
    for start in range(0, len(ips), 500):
        f2b.client("set", "storm", "banip", *ips[start : start + 500])

    def added_so_far() -> int:
        return sum(int(m.args[0].split()[-1]) for m in mon.signals("BansChanged") if m.args)

    wait_until(lambda: added_so_far() >= 2000, 20, "2000 additions in BansChanged")
    assert added_so_far() == 2000
    storm_signals = [m for m in mon.signals("BanAdded") if '"storm"' in " ".join(m.args)]
    assert len(storm_signals) <= 100  # per tick: over 100 changes means BansChanged only
    assert len(banned_ips(busctl, "storm")) == 1000  # page limit; total below
    assert call(busctl, CORE, "ListBans", "suu", "storm", "0", "1")[1] == 2000
    assert daemon.running


def test_ready_status_and_sigterm(daemon: DaemonProcess) -> None:
    fields = [n.fields for n in daemon.notifications]
    ready = [f for f in fields if f.get("READY") == "1"]
    assert ready, fields
    assert any("STATUS" in f for f in fields)
    started = time.monotonic()
    assert daemon.stop(SIGTERM, timeout=5) == 0
    assert time.monotonic() - started < 5
    assert any(n.fields.get("STOPPING") == "1" for n in daemon.notifications)


def test_sighup_reloads_intervals(daemon: DaemonProcess, busctl: Runner) -> None:
    daemon.config_path.write_text(
        daemon.config_path.read_text().replace("history_purge = 86400", "history_purge = 4321")
    )
    daemon.reload()

    def purge_interval() -> int:
        (tasks,) = call(busctl, CORE, "ListTasks")
        return int(next(t["interval"] for t in tasks if t["name"] == "history_purge"))

    wait_until(lambda: purge_interval() == 4321, 5, "the reloaded interval")


def test_sigterm_right_after_ready_exits_cleanly(daemon: DaemonProcess) -> None:
    """The first runs of every task are under way then: nothing may keep the process."""
    for _ in range(3):
        started = time.monotonic()
        assert daemon.stop(SIGTERM, timeout=5) == 0
        assert time.monotonic() - started < 5
        daemon.restart()
