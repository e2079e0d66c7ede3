"""banguictl's command line: argument types and the parser (pure)."""

from __future__ import annotations

import argparse
import ipaddress
import re
import time
from collections.abc import Callable
from datetime import datetime

from bangui_daemon import __version__
from bangui_daemon.cli import render
from bangui_daemon.cli.ctl_context import PROG, TOP_DIMENSIONS, WATCH_MEMBERS
from bangui_daemon.cli.ctl_panel import PANEL_FORMATS


# --- argument types (pure; argparse turns their errors into exit code 2) --------------
def parse_since(text: str, now: float) -> int:
    """Parse `--since`: an epoch ("1700000000"), an ISO date/time, or relative "24h"/"7d".

    A date without a zone is local time, like everything else banguictl prints.
    """
    value = text.strip()
    if re.fullmatch(r"\d+", value):
        return int(value)
    if re.fullmatch(r"-?(\s*\d+\s*[smhdw])+", value, re.IGNORECASE):
        return int(now) - render.parse_duration(value.lstrip("-"))
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use an epoch, an ISO date like 2024-05-01, or 24h/7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # naive -> local time
    return int(moment.timestamp())


def _since_arg(text: str) -> int:
    try:
        return parse_since(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration_arg(text: str) -> int:
    try:
        seconds = render.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be longer than 0 seconds: {text!r}")
    return seconds


def _int_arg(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds}: {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def _float_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _ip_arg(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {text!r}") from None


def _ip_or_cidr_arg(text: str) -> str:
    try:
        if "/" in text:
            return str(ipaddress.ip_network(text.strip(), strict=False))
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address or network: {text!r}") from None


def _members_arg(text: str) -> list[str]:
    members = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [m for m in members if m not in WATCH_MEMBERS]
    if unknown or not members:
        choices = ", ".join(WATCH_MEMBERS)
        raise argparse.ArgumentTypeError(
            f"unknown signal {', '.join(unknown) or text!r} (choose from {choices})"
        )
    return members


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - one command per stanza
    """Build the full command line; `--bus`/`--json` work before or after the command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bus", metavar="ADDRESS", default=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Query and control bangui-daemon (org.bangui.Daemon1) over D-Bus.",
        epilog="Exit codes: 0 ok, 1 daemon error, 2 usage error, 3 daemon not on the bus.",
    )
    parser.add_argument(
        "--bus",
        metavar="ADDRESS",
        default=None,
        help='bus address, "system" (default; honours DBUS_SYSTEM_BUS_ADDRESS) or "session"',
    )
    parser.add_argument("--json", action="store_true", default=False, help="machine output")
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_float_arg,
        default=30.0,
        help="reply timeout for ordinary calls (default 30)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common])

    add("status", "daemon and fail2ban status")
    add("jails", "fail2ban jails and their counters")

    p = add("bans", "current bans")
    p.add_argument("--jail", default="", help="only this jail")
    p.add_argument("--limit", type=_int_arg(1, 1000), default=100, help="1..1000 (default 100)")
    p.add_argument("--offset", type=_int_arg(0), default=0)

    p = add("ban", "ban an address in a jail (admin)")
    p.add_argument("jail")
    p.add_argument("ip", type=_ip_arg)

    p = add("unban", "lift a ban (admin)")
    p.add_argument("ip", type=_ip_arg)
    p.add_argument("--jail", default="", help="only this jail (default: every jail)")

    add("tasks", "scheduled tasks")
    p = add("run", "run a task now and wait for its result (admin)")
    p.add_argument("task")

    p = add("watch", "follow the daemon's signals live (Ctrl-C to stop)")
    p.add_argument("--count", type=_int_arg(1), default=None, help="exit after N lines")
    p.add_argument(
        "--filter",
        type=_members_arg,
        default=None,
        metavar="MEMBER[,MEMBER]",
        help=f"only these signals: {', '.join(WATCH_MEMBERS)}",
    )
    p.add_argument(
        "--format",
        choices=("lines", *PANEL_FORMATS),
        default="lines",
        help="lines: one line per signal; waybar, polybar, i3blocks: a live status line "
        "for that panel bar, printed on every change, 'offline' while the daemon is away",
    )

    p = add("notify", "desktop notifications of new bans (run it in your desktop session)")
    p.add_argument(
        "--session-bus",
        default="session",
        metavar="ADDRESS",
        help="where the notification server is (default: the session bus)",
    )
    p.add_argument(
        "--interval",
        type=_float_arg,
        default=2.0,
        metavar="SECONDS",
        help="at most one notification per this many seconds; later bans update it",
    )

    p = add("history", "archived ban events, newest first")
    p.add_argument("--since", type=_since_arg, help="epoch, ISO date or relative (24h, 7d)")
    p.add_argument("--until", type=_since_arg, help="epoch, ISO date or relative")
    p.add_argument("--jail")
    p.add_argument("--ip", type=_ip_or_cidr_arg, help="an address or a CIDR")
    p.add_argument("--action", choices=("ban", "unban"))
    p.add_argument("--country", metavar="CC", help="two-letter country code")
    p.add_argument("--origin", help="e.g. blocklist or selfblock")
    p.add_argument("--page", type=_int_arg(1), default=1)
    p.add_argument("--page-size", type=_int_arg(1, 1000), default=50)

    p = add("ip", "everything known about one address")
    p.add_argument("address", type=_ip_arg)

    p = add("top", "the most banned jails, countries, ASNs or addresses")
    p.add_argument("dimension", choices=TOP_DIMENSIONS)
    p.add_argument("--since", type=_since_arg, default=0, help="default: all time")
    p.add_argument("--limit", type=_int_arg(1, 1000), default=10)

    p = add("timeline", "bans per time bucket")
    p.add_argument("--since", type=_since_arg, default=None, help="default: 24h")
    p.add_argument("--bucket", type=_duration_arg, default=None, help="e.g. 1h, 1d (auto)")

    add("sources", "blocklist sources")

    p = add("source", "add, change, enable, disable or remove a blocklist source (admin)")
    actions = p.add_subparsers(dest="source_action", metavar="ACTION", required=True)
    a = actions.add_parser("add", help="add a source", description="add a source")
    a.add_argument("name")
    a.add_argument("url", help="http://, https:// or file:// (below blocklist.file_dir)")
    a.add_argument("--disabled", action="store_true", help="add it without importing it")
    _source_options(a)
    u = actions.add_parser("update", help="change a source", description="change a source")
    u.add_argument("source_id", type=_int_arg(1), metavar="ID")
    u.add_argument("--name")
    u.add_argument("--url")
    _source_options(u)
    for action, text in (
        ("remove", "remove a source and unban what only it listed"),
        ("enable", "import a source again on schedule"),
        ("disable", "stop importing a source (its bans stay)"),
    ):
        x = actions.add_parser(action, help=text, description=text)
        x.add_argument("source_id", type=_int_arg(1), metavar="ID")

    p = add("import", "import a blocklist source now (admin)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("source_id", nargs="?", type=_int_arg(1), metavar="SOURCE_ID")
    target.add_argument("--all", action="store_true", help="every enabled source")

    p = add("preview", "dry-run a blocklist URL: nothing is banned or stored (admin)")
    p.add_argument("url")

    p = add("runs", "blocklist import runs")
    p.add_argument("--source", type=_int_arg(0), default=0, metavar="ID", help="0 = all")
    p.add_argument("--page", type=_int_arg(1), default=1)
    p.add_argument("--page-size", type=_int_arg(1, 1000), default=50)

    p = add("lookup", "geo lookup of addresses")
    p.add_argument("ips", nargs="+", type=_ip_arg, metavar="IP")
    return parser


def _source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--interval",
        type=_interval_arg,
        default=None,
        help="how often to import it, e.g. 1h, 1d (0 = the blocklist_import task's)",
    )
    p.add_argument(
        "--max-entries",
        type=_int_arg(0, 10_000_000),
        default=None,
        help="this source's entry cap (0 = blocklist.max_entries)",
    )


def _interval_arg(text: str) -> int:
    if text.strip() == "0":
        return 0
    return _duration_arg(text)


# --- errors ------------------------------------------------------------------------------
