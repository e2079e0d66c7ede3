"""The four places that say who may call what agree with each other.

The contract XML (methods), the code (which methods call ``require_admin``), the
polkit actions (polkit/org.bangui.Daemon1.policy) and the bus policy
(dbus-policy/org.bangui.Daemon1.conf) are kept apart on purpose; a method added to
one and forgotten in another is an open door or a dead feature.
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

from bangui_daemon.dbus.auth import ACTION_PREFIX, ACTIONS

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "dbus-policy" / "org.bangui.Daemon1.xml"
BUS_POLICY = REPO / "dbus-policy" / "org.bangui.Daemon1.conf"
POLKIT_ACTIONS = REPO / "polkit" / "org.bangui.Daemon1.policy"
DEST = "org.bangui.Daemon1"


def contract_methods() -> dict[str, str]:
    """Method name -> interface, from the contract XML (names are unique across them)."""
    out: dict[str, str] = {}
    for iface in ET.parse(CONTRACT).getroot().findall("interface"):
        for method in iface.findall("method"):
            assert method.get("name") not in out, "method names must be unique"
            out[method.get("name", "")] = iface.get("name", "")
    return out


def methods_checking_admin() -> dict[str, str]:
    """D-Bus method name -> the name passed to require_admin inside it, from the source."""
    found: dict[str, str] = {}
    for path in (REPO / "bangui_daemon" / "dbus").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.AsyncFunctionDef):
                continue
            exported = [
                str(d.args[0].value)
                for d in node.decorator_list
                if isinstance(d, ast.Call)
                and getattr(d.func, "id", "") == "dbus_method"
                and isinstance(d.args[0], ast.Constant)
            ]
            checks = [
                str(c.args[0].value)
                for c in ast.walk(node)
                if isinstance(c, ast.Call)
                and getattr(c.func, "attr", "") == "require_admin"
                and isinstance(c.args[0], ast.Constant)
            ]
            if exported and checks:
                found[exported[0]] = checks[0]
    return found


def default_allows() -> list[dict[str, str]]:
    root = ET.parse(BUS_POLICY).getroot()
    [default] = [p for p in root.findall("policy") if p.get("context") == "default"]
    return [dict(rule.attrib) for rule in default.findall("allow")]


def test_every_admin_method_checks_for_its_own_name() -> None:
    checked = methods_checking_admin()
    assert checked == {name: name for name in ACTIONS}, "require_admin(<its own method>)"
    assert set(ACTIONS) <= set(contract_methods())


def test_the_polkit_file_declares_exactly_the_actions_used_plus_read() -> None:
    root = ET.parse(POLKIT_ACTIONS).getroot()
    declared = {a.get("id", ""): a for a in root.findall("action")}
    assert set(declared) == {*ACTIONS.values(), ACTION_PREFIX + "read"}
    for action_id, action in declared.items():
        assert action.findtext("description"), action_id
        assert action.findtext("message"), action_id
        defaults = action.find("defaults")
        assert defaults is not None
        values = {d.tag: d.text for d in defaults}
        expected = "yes" if action_id.endswith(".read") else "auth_admin_keep"
        assert values == dict.fromkeys(("allow_any", "allow_inactive", "allow_active"), expected)


def test_the_bus_lets_everyone_send_reads_and_admin_methods_by_name_only() -> None:
    """Everyone may send each contract method (the daemon checks admin ones); nothing else.

    Rules for org.bangui.Daemon1's interfaces name a member each, so a method added
    later, or a standard one like Properties.Set, stays closed until listed.
    """
    allows = [a for a in default_allows() if a.get("send_destination") == DEST]
    ours = [a for a in allows if a.get("send_interface", "").startswith(DEST)]
    assert all("send_member" in a for a in ours), ours
    assert {(a["send_interface"], a["send_member"]) for a in ours} == {
        (iface, name) for name, iface in contract_methods().items()
    }
    standard = {(a.get("send_interface"), a.get("send_member")) for a in allows} - {
        (a["send_interface"], a["send_member"]) for a in ours
    }
    assert standard == {
        ("org.freedesktop.DBus.Introspectable", "Introspect"),
        ("org.freedesktop.DBus.Peer", None),
        ("org.freedesktop.DBus.Properties", "Get"),
        ("org.freedesktop.DBus.Properties", "GetAll"),
    }
