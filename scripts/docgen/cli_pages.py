"""bangui-daemon(8) and banguictl(1) from the argparse parsers the programs use."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Iterator

from bangui_daemon.cli import ctl_args
from bangui_daemon.cli import daemon as daemon_cli
from bangui_daemon.config import DEFAULT_CONFIG_PATH, Config
from scripts.docgen import roff

SEE_ALSO = ("bangui-daemon(8)", "banguictl(1)", "bangui.toml(5)", "bangui-daemon.dbus(5)")
# Options every banguictl command accepts again after its name (argparse parents).
_REPEATED = frozenset({"--bus", "--json", "-h", "--help"})


def subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """`name -> (help, parser)` of a parser's sub-commands, in declaration order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return {name: (helps.get(name, ""), sub) for name, sub in action.choices.items()}
    return {}


def options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """A parser's own arguments (sub-command selectors excluded), in declaration order."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            yield action


def usage(parser: argparse.ArgumentParser) -> str:
    """argparse's own usage line, unwrapped."""
    return " ".join(parser.format_usage().split()[1:])


def option_tag(action: argparse.Action) -> str:
    """`--limit LIMIT`, `-h, --help` or `IP...` as a bold/italic roff tag."""
    metavar = _metavar(action)
    if not action.option_strings:
        return roff.italic(metavar)
    names = ", ".join(roff.bold(name) for name in action.option_strings)
    return f"{names} {roff.italic(metavar)}" if metavar else names


def option_help(action: argparse.Action, prog: str) -> str:
    """The help text, %-expanded as argparse does, with the choices when they are fixed."""
    help_text = action.help or ""
    if "%" in help_text:
        help_text = help_text % {**vars(action), "prog": prog}
    notes = []
    if action.choices is not None and not isinstance(action.choices, dict):
        notes.append("one of " + ", ".join(str(c) for c in action.choices))
    default = action.default
    if (
        action.nargs != 0
        and default not in (None, "", argparse.SUPPRESS)
        and "default" not in help_text
    ):
        notes.append(f"default {default}")
    if notes:
        help_text = f"{help_text} ({'; '.join(notes)})".strip()
    return help_text


def _metavar(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if isinstance(action.metavar, str):
        name = action.metavar
    else:  # argparse's own default: DEST for an option, dest for a positional
        name = action.dest.upper() if action.option_strings else action.dest
    if action.nargs in ("+", "*"):
        name += "..."
    return name


def _describe(page: roff.Page, actions: Iterable[argparse.Action], prog: str) -> None:
    for action in actions:
        page.item(option_tag(action), option_help(action, prog))


def daemon_page() -> str:
    """bangui-daemon(8)."""
    parser = daemon_cli.build_parser()
    defaults = Config()
    page = roff.Page("bangui-daemon", "8", parser.description or "", "System Administration")
    page.heading("synopsis")
    page.raw(roff.literal(usage(parser)))
    page.heading("description")
    page.para(
        "bangui-daemon watches a fail2ban host and serves org.bangui.Daemon1 on the system "
        "D-Bus: live ban signals, an archive of every ban event that outlives fail2ban's own "
        "purge, blocklist imports that never ban the host's own, loopback or private "
        "addresses, and country and ASN answers from MaxMind databases. banguictl(1) is its "
        "command-line client; bangui-daemon.dbus(5) describes the bus interface."
    )
    page.para(
        "It runs in the foreground, logs to standard error and tells systemd when it is "
        "ready (Type=notify): after the archive is migrated and the bus name is owned. It "
        "needs root only because fail2ban's control socket and database are root's; the "
        "packaged unit takes every capability away."
    )
    page.heading("options")
    _describe(page, options(parser), parser.prog)
    page.heading("signals")
    page.item(
        roff.bold("SIGHUP"),
        "Re-read the config file; keys that need a restart are named in the log. "
        "systemctl reload sends it.",
    )
    page.item(roff.bold("SIGTERM, SIGINT"), "Stop cleanly, within 5 seconds, with exit status 0.")
    page.heading("exit status")
    page.item(roff.bold("0"), "Stopped on request, or --check-config found the config valid.")
    page.item(roff.bold("1"), "The daemon could not start or failed (the log says why).")
    page.item(
        roff.bold("2"),
        "Invalid command line or configuration; every bad key is named on standard error.",
    )
    page.heading("files")
    page.item(roff.italic(DEFAULT_CONFIG_PATH), "The configuration, see bangui.toml(5).")
    page.item(roff.italic(defaults.archive.path), "The archive (sqlite): [archive] path.")
    page.item(roff.italic(defaults.blocklist.file_dir), "Where file:// blocklist sources may lie.")
    page.heading("environment")
    page.item(
        roff.bold("DBUS_SYSTEM_BUS_ADDRESS"),
        'The system bus address used when [dbus] bus is "system", as by every D-Bus client.',
    )
    others = (ref for ref in SEE_ALSO if ref != "bangui-daemon(8)")
    page.see_also(*others, "fail2ban-client(1)", "systemctl(1)")
    return page.render()


def ctl_page() -> str:
    """banguictl(1)."""
    parser = ctl_args.build_parser()
    page = roff.Page("banguictl", "1", parser.description or "", "User Commands")
    page.heading("synopsis")
    page.raw(roff.literal(usage(parser)))
    page.heading("description")
    page.para(
        "banguictl talks to bangui-daemon(8) over D-Bus. It prints tables for people and, "
        "with --json, JSON for scripts. Read commands are open to every local user; the "
        "commands marked (admin) need root or a member of the admin group ([dbus] "
        "admin_group in bangui.toml(5), bangui-admin by default)."
    )
    page.heading("options")
    _describe(page, options(parser), parser.prog)
    page.heading("commands")
    page.para("--bus and --json may also follow the command's name.")
    for name, (help_text, sub) in subcommands(parser).items():
        page.subheading(name)
        page.raw(".PP")
        page.raw(roff.literal(usage(sub)))
        page.para(help_text)
        own = [a for a in options(sub) if not _REPEATED.intersection(a.option_strings)]
        if own:
            page.raw(".RS 4")
            _describe(page, own, sub.prog)
            page.raw(".RE")
        for action_help, action_parser in subcommands(sub).values():
            # e.g. `source add`: one paragraph per action, with its own arguments
            page.raw(".PP")
            page.raw(roff.literal(usage(action_parser)))
            page.para(action_help)
            nested = [
                a for a in options(action_parser) if not _REPEATED.intersection(a.option_strings)
            ]
            if nested:
                page.raw(".RS 4")
                _describe(page, nested, action_parser.prog)
                page.raw(".RE")
    page.heading("exit status")
    page.para(parser.epilog or "")
    page.heading("environment")
    page.item(
        roff.bold("DBUS_SYSTEM_BUS_ADDRESS"),
        "The system bus address used without --bus or with --bus system.",
    )
    page.heading("examples")
    page.example(
        "banguictl status\n"
        "banguictl bans --jail sshd\n"
        "banguictl --json history --since 24h --ip 203.0.113.0/24\n"
        "banguictl ban sshd 203.0.113.7"
    )
    page.see_also(*(ref for ref in SEE_ALSO if ref != "banguictl(1)"), "busctl(1)")
    return page.render()
