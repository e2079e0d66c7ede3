"""bangui-daemon.dbus(5): the bus API from the introspection XML and the daemon's rules.

Names, signatures and argument names come from dbus-policy/org.bangui.Daemon1.xml;
whether a method is admin-only from the daemon's own list of polkit actions
(`dbus.auth.ACTIONS`, which tests/unit/test_access_policy.py holds against every
method and the bus policy); error names from the exception classes.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

from bangui_daemon import errors
from bangui_daemon.dbus.auth import ACTIONS
from bangui_daemon.dbus.names import BUS_NAME, OBJECT_PATH
from scripts.docgen import roff

REPO = Path(__file__).resolve().parents[2]
INTERFACE_XML = REPO / "dbus-policy" / "org.bangui.Daemon1.xml"
INSTALLED_XML = "/usr/share/dbus-1/interfaces/org.bangui.Daemon1.xml"


def admin_methods() -> dict[str, str]:
    """Admin method name -> the polkit action that guards it."""
    return dict(ACTIONS)


def error_names() -> list[tuple[str, str]]:
    """`(D-Bus error name, when)` for every error class that names one."""
    found: dict[str, str] = {}
    pending: list[type[errors.BanguiError]] = [errors.BanguiError]
    while pending:
        cls = pending.pop(0)
        pending.extend(cls.__subclasses__())
        if "dbus_name" in vars(cls) and cls.dbus_name not in found:
            doc = (cls.__doc__ or "").strip().splitlines()[0]
            if cls is errors.BanguiError:
                doc = "A failure that no more specific name describes."
            found[cls.dbus_name] = doc
    return sorted(found.items())


def _args(member: ElementTree.Element, direction: str) -> str:
    return ", ".join(
        f"{arg.get('type')} {arg.get('name', '')}".strip()
        for arg in member.findall("arg")
        if arg.get("direction", "in") == direction
    )


def _annotations(page: roff.Page, element: ElementTree.Element) -> None:
    for note in element.findall("annotation"):
        page.para(f"Annotation {note.get('name')} = {note.get('value')}")


def dbus_page(xml: Path = INTERFACE_XML) -> str:
    """The page: one subsection per interface with its properties, methods and signals."""
    root = ElementTree.parse(xml).getroot()  # noqa: S314
    admin = admin_methods()
    page = roff.Page(
        "bangui-daemon.dbus", "5", "the D-Bus interface of bangui-daemon", "File Formats"
    )
    page.heading("description")
    page.para(
        f"bangui-daemon(8) owns {BUS_NAME} on the system bus and serves the object "
        f"{OBJECT_PATH} with the interfaces below, plus org.freedesktop.DBus.Properties, "
        f".Introspectable and .Peer. The machine-readable form is {INSTALLED_XML}. "
        "Times are Unix seconds; record lists are aa{sv}, so fields can be added without "
        "breaking clients."
    )
    page.para(
        "Methods marked (read) are open to every local user. Methods marked (admin) need "
        "root, or polkit's yes for the action named (the shipped rules say yes to the "
        "admin group, [dbus] admin_group in bangui.toml(5)); without polkitd on the bus, "
        "root or a member of the admin group. Properties are read-only; "
        "PropertiesChanged is sent when they change."
    )
    for interface in root.iter("interface"):
        name = interface.get("name", "")
        page.heading(f"interface {name}")
        _annotations(page, interface)
        for kind, label in (
            ("property", "Properties"),
            ("method", "Methods"),
            ("signal", "Signals"),
        ):
            members = interface.findall(kind)
            if not members:
                continue
            page.subheading(label)
            for member in members:
                member_name = member.get("name", "")
                if kind == "property":
                    tag = f"{roff.bold(member_name)} {roff.literal(member.get('type', ''))}"
                    body = f"access: {member.get('access', 'read')}"
                elif kind == "method":
                    out = _args(member, "out")
                    tag = f"{roff.bold(member_name)}({roff.literal(_args(member, 'in'))})"
                    if out:
                        tag += f" \\(-> ({roff.literal(out)})"
                    action = admin.get(member_name) if kind == "method" else None
                    body = "(read)" if action is None else f"(admin, polkit action {action})"
                else:
                    tag = f"{roff.bold(member_name)}({roff.literal(_args(member, 'in'))})"
                    body = "signal"
                page.item(tag, body)
                _annotations(page, member)
    page.heading("errors")
    for error_name, when in error_names():
        page.item(roff.bold(error_name), when)
    page.heading("examples")
    page.example(
        f"busctl introspect {BUS_NAME} {OBJECT_PATH}\n"
        f"busctl call {BUS_NAME} {OBJECT_PATH} {BUS_NAME} GetStatus\n"
        f"gdbus monitor --system -d {BUS_NAME} -o {OBJECT_PATH}"
    )
    page.see_also("bangui-daemon(8)", "banguictl(1)", "busctl(1)", "gdbus(1)")
    return page.render()
