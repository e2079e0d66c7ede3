"""polkit decides admin calls when polkitd is on the bus (issue 10, item 4).

A real polkitd (tests/harness/polkit.py) serves the private bus with the shipped
polkit/ files plus a test rule; the daemon runs as a process, the callers are busctl
and gdbus as real local users. Without polkitd the group check decides: that is what
test_core.py's access tests run against.
"""

from __future__ import annotations

import grp
import os
import time
from typing import Any

import pytest

from bangui_daemon.dbus.auth import ACTIONS
from tests.harness.daemon import DaemonProcess
from tests.harness.fail2ban import F2bSandbox
from tests.harness.polkit import PrivatePolkit
from tests.harness.users import TestUser, run_as
from tests.harness.util import wait_until
from tests.integration.dbus_calls import BLOCKLISTS, CORE, DEST, PATH, Runner, call, error_name

DENIED = "org.freedesktop.DBus.Error.AccessDenied"

OPERATOR_MAY_BAN = {
    "10-bgt-operator.rules": """
polkit.addRule(function(action, subject) {
    if (action.id == "org.bangui.Daemon1.manage-bans" && subject.user == "bgt-operator") {
        return polkit.Result.YES;
    }
});
"""
}
ADMIN_MAY_NOT = {
    "10-not-bgt-admin.rules": """
polkit.addRule(function(action, subject) {
    if (action.id.indexOf("org.bangui.Daemon1.") == 0 && subject.user == "bgt-admin") {
        return polkit.Result.NO;
    }
});
"""
}


def ban(busctl: Runner, ip: str, user: TestUser, *, interactive: bool = True) -> Any:
    """BanIp with busctl, which allows interactive authorization unless told not to."""
    flag = f"--allow-interactive-authorization={'yes' if interactive else 'no'}"
    r = busctl(flag, "call", DEST, PATH, CORE, "BanIp", "ss", "sshd", ip, user=user)
    return r.stdout.strip() if r.returncode == 0 else r.stderr.strip()


def denials(daemon: DaemonProcess, count: int) -> list[dict[str, Any]]:
    """The daemon's first `count` access_denied records (they are logged before replying)."""

    def enough() -> list[dict[str, Any]] | None:
        found = [r for r in daemon.log_records() if r.get("event") == "access_denied"]
        return found[:count] if len(found) >= count else None

    return wait_until(enough, 5, f"{count} access_denied log records")


@pytest.mark.polkit_rules(OPERATOR_MAY_BAN)
def test_a_polkit_rule_lets_a_user_outside_the_group_ban_and_nothing_more(
    f2b: F2bSandbox,
    daemon: DaemonProcess,
    polkit: PrivatePolkit,
    busctl: Runner,
    gdbus: Runner,
    test_users: dict[str, TestUser],
) -> None:
    operator, reader, admin = (test_users[n] for n in ("bgt-operator", "bgt-reader", "bgt-admin"))
    assert not operator.is_admin
    assert not reader.is_admin
    # the rule: the operator may ban, with or without allowing interaction
    assert ban(busctl, "45.113.0.20", operator, interactive=False) == "b true"
    assert ban(busctl, "45.113.0.21", operator) == "b true"
    assert {"45.113.0.20", "45.113.0.21"} <= set(f2b.banned("sshd"))
    # ... and nothing else: the rule names manage-bans only
    assert error_name(gdbus, CORE, "RunTask", "ban_watch", user=operator) == DENIED
    assert error_name(gdbus, BLOCKLISTS, "ImportAll", user=operator) == DENIED
    # no rule for the reader: auth_admin_keep without an agent is a no, never a hang
    started = time.monotonic()
    assert "Access denied" in ban(busctl, "45.113.0.22", reader)
    assert time.monotonic() - started < 5
    assert error_name(gdbus, CORE, "UnbanIp", "", "45.113.0.20", user=reader) == DENIED
    # refused before its arguments are even looked at
    assert error_name(gdbus, CORE, "BanIp", "no-such-jail", "not an ip", user=reader) == DENIED
    assert [(d["method"], d["by"]) for d in denials(daemon, 5)] == [
        ("RunTask", "polkit"),
        ("ImportAll", "polkit"),
        ("BanIp", "polkit"),
        ("UnbanIp", "polkit"),
        ("BanIp", "polkit"),
    ]
    assert "45.113.0.22" not in f2b.banned("sshd")
    # reading stays open to everyone
    (status,) = call(busctl, CORE, "GetStatus", user=reader)
    assert status["fail2ban_connected"] is True
    assert call(busctl, CORE, "ListBans", "suu", "sshd", "0", "10", user=reader)[1] >= 2
    assert call(busctl, BLOCKLISTS, "ListSources", user=reader) == [[]]
    # the shipped rules file: the admin group may do everything without a password
    assert ban(busctl, "45.113.0.23", admin, interactive=False) == "b true"
    assert call(busctl, CORE, "RunTask", "s", "ban_watch", user=admin)[0]["status"]

    # polkitd goes away: the group decides again, at once, without a restart
    polkit.stop()
    assert error_name(gdbus, CORE, "BanIp", "sshd", "45.113.0.24", user=operator) == DENIED
    assert denials(daemon, 6)[-1]["by"] == "group"
    assert ban(busctl, "45.113.0.25", admin) == "b true"


@pytest.mark.polkit_rules(ADMIN_MAY_NOT)
def test_polkit_has_the_last_word_over_group_membership(
    f2b: F2bSandbox,
    daemon: DaemonProcess,
    polkit: PrivatePolkit,
    busctl: Runner,
    gdbus: Runner,
    test_users: dict[str, TestUser],
) -> None:
    """A rule refusing a member of bangui-admin wins over the group; root is always in."""
    admin = test_users["bgt-admin"]
    assert admin.is_admin
    assert error_name(gdbus, CORE, "BanIp", "sshd", "45.113.0.30", user=admin) == DENIED
    assert call(busctl, CORE, "BanIp", "ss", "sshd", "45.113.0.31") == [True]  # root
    assert f2b.banned("sshd") == ["45.113.0.31"]


def test_the_configured_admin_group_reaches_the_shipped_rules(
    f2b: F2bSandbox,
    start_daemon: Any,
    polkit: PrivatePolkit,
    busctl: Runner,
    gdbus: Runner,
    test_users: dict[str, TestUser],
) -> None:
    """[dbus] admin_group is passed to polkit, so the rules file follows the config."""
    operator, admin = test_users["bgt-operator"], test_users["bgt-admin"]
    operators_group = grp.getgrgid(operator.gid).gr_name  # the user's own group
    start_daemon(dbus={"admin_group": operators_group})
    assert ban(busctl, "45.113.0.40", operator, interactive=False) == "b true"
    assert error_name(gdbus, CORE, "BanIp", "sshd", "45.113.0.41", user=admin) == DENIED
    assert f2b.banned("sshd") == ["45.113.0.40"]


def test_polkitd_knows_our_actions(polkit: PrivatePolkit, test_users: dict[str, TestUser]) -> None:
    """The shipped .policy parses in polkitd with the intended defaults."""
    env = {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": polkit.bus.address}
    out = run_as(None, ["pkaction", "--verbose"], env=env).stdout
    blocks = {b.split(":", 1)[0]: b for b in out.split("\n\n") if b.strip()}
    assert set(blocks) == {*ACTIONS.values(), "org.bangui.Daemon1.read"}
    assert "implicit any:      yes" in blocks["org.bangui.Daemon1.read"]
    for action in ACTIONS.values():
        assert "implicit any:      auth_admin_keep" in blocks[action], blocks[action]
    # pkcheck without the daemon's detail: the rules file falls back to bangui-admin
    for user, rc in ((test_users["bgt-admin"], 0), (test_users["bgt-reader"], 2)):
        r = run_as(
            user,
            ["sh", "-c", "exec pkcheck --action-id org.bangui.Daemon1.manage-bans --process $$"],
            env=env,
        )
        assert r.returncode == rc, (user.name, r.stdout, r.stderr)
