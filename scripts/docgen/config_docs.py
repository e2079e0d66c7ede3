"""bangui.toml(5) and the shipped example /etc/bangui/bangui.toml, from the schema."""

from __future__ import annotations

import textwrap

from bangui_daemon.config import DEFAULT_CONFIG_PATH
from scripts.docgen import roff, schema

_EXAMPLE_HEADER = f"""\
# {DEFAULT_CONFIG_PATH}: configuration of bangui-daemon, see bangui.toml(5).
#
# Every key is optional. A commented-out key shows its default, which applies as
# long as the line stays commented out: remove the "#" and change the value to
# override it. Check the file with
#     bangui-daemon --check-config --config {DEFAULT_CONFIG_PATH}
# and apply it with "systemctl reload bangui-daemon" (keys that need a restart
# are named in the log).
"""


def _comment(value: str, width: int = 79) -> list[str]:
    return textwrap.wrap(value, width - 2, initial_indent="# ", subsequent_indent="# ")


def example_config() -> str:
    """Every section and key, each key commented with its meaning, type and default."""
    lines = [_EXAMPLE_HEADER.rstrip("\n")]
    for section in schema.sections():
        lines += ["", f"[{section.name}]"]
        lines += _comment(section.doc)
        for key in section.keys:
            lines.append("")
            lines += _comment(f"{key.doc} ({key.kind})")
            lines.append(f"#{key.name} = {key.default}")
    return "\n".join(lines) + "\n"


def config_page() -> str:
    """bangui.toml(5)."""
    page = roff.Page("bangui.toml", "5", "configuration of bangui-daemon", "File Formats")
    page.heading("synopsis")
    page.raw(roff.italic(DEFAULT_CONFIG_PATH))
    page.heading("description")
    page.para(
        "bangui-daemon(8) reads one TOML file, by default "
        f"{DEFAULT_CONFIG_PATH} (another with --config). Every key is optional; a missing "
        "default file means all defaults. An unknown section or key, or a value of the "
        "wrong type or range, stops the daemon at start with a message that names every "
        "such key; bangui-daemon --check-config validates a file and prints the effective "
        "configuration. SIGHUP (systemctl reload bangui-daemon) re-reads the file; keys "
        "that need a restart are named in the log."
    )
    page.para(
        "Times are in seconds and may have a fraction; paths must be absolute. The "
        "package installs a copy of the defaults with every key commented out."
    )
    for section in schema.sections():
        page.subheading(f"[{section.name}]")
        page.para(section.doc)
        for key in section.keys:
            page.item(
                f"{roff.bold(key.name)} = {roff.literal(key.default)}",
                f"{key.doc} Type: {key.kind}.",
            )
    page.heading("example")
    page.example(
        '[fail2ban]\nsocket = "/run/fail2ban/fail2ban.sock"\n\n'
        '[blocklist]\nallowlist = ["198.51.100.0/24", "2001:db8:1::/48"]\n\n'
        '[log]\nlevel = "debug"'
    )
    page.see_also("bangui-daemon(8)", "banguictl(1)", "bangui-daemon.dbus(5)", "jail.conf(5)")
    return page.render()
