"""banguictl: the command-line client of bangui-daemon over D-Bus.

Tables for people, `--json` for scripts. Exit codes: 0 ok, 1 a D-Bus error (or a
failed import/task), 2 a usage error, 3 the daemon (or the bus) is not reachable.
Talks only to `DaemonClient`: all D-Bus details live in `bangui_daemon.dbus.client`.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any, Final, TextIO

from bangui_daemon import __version__
from bangui_daemon.cli import render
from bangui_daemon.dbus.client import (
    BUS_NAME,
    ERROR_NAME_HAS_NO_OWNER,
    ERROR_NO_SERVER,
    ERROR_SERVICE_UNKNOWN,
    IFACE_CORE,
    IFACE_PROPERTIES,
    DaemonClient,
    DaemonError,
    Record,
)

PROG: Final = "banguictl"
EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 3

TOP_DIMENSIONS: Final = ("jail", "country", "asn", "ip")
WATCHED_PROPERTIES: Final = ("State", "Fail2banConnected")
SIGNAL_ARGS: Final[dict[str, tuple[str, ...]]] = {
    "BanAdded": ("jail", "ip", "timeofban", "bantime"),
    "BanRemoved": ("jail", "ip"),
    "BansChanged": ("added", "removed"),
    "TaskFinished": ("name", "status", "details"),
    "HistorySynced": ("new_events",),
    "ImportStarted": ("source_id", "run_id"),
    "ImportProgress": ("source_id", "done", "total"),
    "ImportFinished": ("source_id", "status", "added", "removed"),
    "PropertiesChanged": ("interface", "changed", "invalidated"),
}
WATCH_MEMBERS: Final = tuple(SIGNAL_ARGS)
FAILED_STATUSES: Final = ("failed", "timeout")


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


def build_parser() -> argparse.ArgumentParser:
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


# --- errors ------------------------------------------------------------------------------
def exit_code_for(error: DaemonError) -> int:
    """3 when the daemon (or its bus) is unreachable, 1 for every other D-Bus error."""
    return EXIT_UNAVAILABLE if error.daemon_absent else EXIT_ERROR


def _words(short_name: str) -> str:
    """AccessDenied -> "access denied", Fail2banUnavailable -> "fail2ban unavailable"."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", short_name).lower()


def describe_error(error: DaemonError, bus_label: str = "the bus") -> str:
    """One readable line (without the `banguictl: ` prefix) for a DaemonError."""
    message = render.clean(error.message)
    if error.name in (ERROR_SERVICE_UNKNOWN, ERROR_NAME_HAS_NO_OWNER):
        return (
            f"daemon not running: nothing owns {BUS_NAME} on {bus_label} "
            "(start it with 'systemctl start bangui-daemon', or choose its bus with --bus ADDRESS)"
        )
    if error.name == ERROR_NO_SERVER:
        return (
            f"bus unavailable: {message} "
            "(is dbus running? choose a bus with --bus ADDRESS or DBUS_SYSTEM_BUS_ADDRESS)"
        )
    text = _words(error.short_name)
    if message:
        text = f"{text}: {message}"
    if error.short_name == "AccessDenied":
        text += " (admin commands need root or membership in the bangui-admin group)"
    return text


# --- output helpers --------------------------------------------------------------------------
@dataclass
class Context:
    """What a command needs: the client, its arguments, where to write, and the clock."""

    client: DaemonClient
    args: argparse.Namespace
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    now: float = field(default_factory=time.time)
    width: int = 80
    tz: tzinfo | None = None
    bar_char: str = "█"
    progress: bool = False
    ready: asyncio.Event | None = None
    """Set by `watch` once it is subscribed, so a caller can start emitting signals."""

    @property
    def json(self) -> bool:
        return bool(self.args.json)

    def emit(self, doc: object, text: Callable[[], str]) -> None:
        """Write `doc` as one JSON document, or the human rendering."""
        if self.json:
            self.out.write(json.dumps(doc, indent=2, default=_json_default) + "\n")
        else:
            rendered = text()
            if rendered:
                self.out.write(rendered + "\n")
        self.out.flush()

    def ts(self, value: object) -> str:
        """A table cell for a time: local "YYYY-MM-DD HH:MM:SS", "-" for never."""
        seconds = _int(value)
        return render.format_timestamp(seconds, self.tz) if seconds > 0 else "-"

    def rel(self, value: object, never: str = "-") -> str:
        """A table cell for a time relative to now: "2 min ago", "in 5 min"."""
        seconds = _int(value)
        return render.format_relative(seconds, self.now) if seconds > 0 else never

    def when(self, value: object) -> str:
        """A key/value line for a time: absolute and relative."""
        return render.format_when(_int(value), self.now, self.tz)


def _json_default(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _int(value: object) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    return 0


def _text(value: object) -> str:
    """Render any unwrapped D-Bus value for a cell or a key/value line."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={_text(v)}" for k, v in value.items())
    return render.clean(value)


def _short(value: object, limit: int = 32) -> str:
    text = _text(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _label(key: str) -> str:
    return key.replace("_", " ")


def _extras(record: Record, known: Iterable[str]) -> list[tuple[str, object]]:
    """Keys the contract may add later: shown generically rather than dropped."""
    seen = set(known)
    return [(_label(k), _text(v)) for k, v in record.items() if k not in seen]


def _record_lines(ctx: Context, record: Record, time_keys: Iterable[str] = ()) -> str:
    times = set(time_keys)
    pairs = [
        (_label(k), ctx.when(v) if k in times else _text(v))
        for k, v in record.items()
        if v != ""  # e.g. error="" on success: nothing to say
    ]
    return render.key_values(pairs)


def _page_footer(shown: int, first: int, total: int, hint: str) -> str:
    if total == 0 or shown == 0:
        return ""
    last = first + shown - 1
    more = f" ({hint})" if last < total else ""
    return f"\n{first}-{last} of {total}{more}"


# --- commands -------------------------------------------------------------------------------
async def cmd_status(ctx: Context) -> int:
    status = await ctx.client.get_status()
    props = await ctx.client.get_all_properties(IFACE_CORE)
    known = (
        "version",
        "fail2ban_connected",
        "fail2ban_version",
        "jails",
        "active_bans",
        "archived_events",
        "last_history_sync",
        "geo_cache_entries",
        # shown from the properties above, or derived from them
        "state",
        "started_at",
        "uptime",
    )

    def text() -> str:
        connected = bool(status.get("fail2ban_connected"))
        f2b = f"connected, {_text(status.get('fail2ban_version'))}" if connected else "down"
        started = _int(props.get("StartedAt"))
        interface = _text(props.get("InterfaceVersion"))
        pairs: list[tuple[str, object]] = [
            ("daemon", f"{_text(status.get('version'))} (interface {interface})"),
            ("state", _text(props.get("State"))),
            ("started", ctx.when(started)),
            ("fail2ban", f2b),
            ("jails", _text(status.get("jails")) or "-"),
            ("active bans", _text(status.get("active_bans"))),
            ("archived events", _text(status.get("archived_events"))),
            ("last history sync", ctx.when(status.get("last_history_sync"))),
            ("geo cache entries", _text(status.get("geo_cache_entries"))),
            *_extras(status, known),
        ]
        return render.key_values(pairs)

    ctx.emit({"status": status, "properties": props}, text)
    return EXIT_OK


async def cmd_jails(ctx: Context) -> int:
    jails = await ctx.client.list_jails()
    rows = [
        [
            j.get("name", ""),
            _int(j.get("currently_banned")),
            _int(j.get("total_banned")),
            _int(j.get("currently_failed")),
            _int(j.get("total_failed")),
        ]
        for j in jails
    ]
    headers = ("jail", "banned", "total banned", "failed", "total failed")
    ctx.emit(jails, lambda: render.table(headers, rows, empty="no jails"))
    return EXIT_OK


async def cmd_bans(ctx: Context) -> int:
    args = ctx.args
    bans, total = await ctx.client.list_bans(args.jail, args.offset, args.limit)

    def text() -> str:
        rows = [
            [
                b.get("jail", ""),
                b.get("ip", ""),
                ctx.ts(b.get("timeofban")),
                render.format_duration(_int(b.get("bantime"))),
                "never" if _int(b.get("expires")) < 0 else ctx.rel(b.get("expires")),
                _int(b.get("bancount")),
                b.get("country_code", "") or "-",
                _short(b.get("asn", "")) or "-",
                _short(b.get("org", ""), 28) or "-",
                b.get("origin", ""),
            ]
            for b in bans
        ]
        headers = (
            "jail", "ip", "banned at", "bantime", "expires", "count",
            "cc", "asn", "org", "origin",
        )  # fmt: skip
        body = render.table(headers, rows, empty="no bans", right=(5,))
        hint = f"--offset {args.offset + len(bans)} for more"
        return body + _page_footer(len(bans), args.offset + 1, total, hint)

    ctx.emit({"bans": bans, "total": total, "offset": args.offset, "limit": args.limit}, text)
    return EXIT_OK


async def cmd_ban(ctx: Context) -> int:
    jail, ip = ctx.args.jail, ctx.args.ip
    newly = await ctx.client.ban_ip(jail, ip)
    text = f"banned {ip} in {jail}" if newly else f"{ip} was already banned in {jail}"
    ctx.emit({"jail": jail, "ip": ip, "newly_banned": newly}, lambda: render.clean(text))
    return EXIT_OK


async def cmd_unban(ctx: Context) -> int:
    jail, ip = ctx.args.jail, ctx.args.ip
    removed = await ctx.client.unban_ip(jail, ip)
    where = jail or "any jail"
    if removed:
        plural = "jail" if removed == 1 else "jails"
        text = f"unbanned {ip} from {jail}" if jail else f"unbanned {ip} from {removed} {plural}"
    else:
        text = f"{ip} was not banned in {where}"
    ctx.emit({"jail": jail, "ip": ip, "jails_removed": removed}, lambda: render.clean(text))
    return EXIT_OK


async def cmd_tasks(ctx: Context) -> int:
    tasks = await ctx.client.list_tasks()

    def text() -> str:
        rows = [
            [
                t.get("name", ""),
                render.format_duration(_int(t.get("interval"))),
                "yes" if t.get("running") else "no",
                ctx.rel(t.get("last_run"), "never"),
                t.get("last_status", "") or "-",
                ctx.rel(t.get("next_run")),
            ]
            for t in tasks
        ]
        headers = ("task", "interval", "running", "last run", "status", "next run")
        return render.table(headers, rows, empty="no tasks")

    ctx.emit(tasks, text)
    return EXIT_OK


def _failed(result: Record) -> bool:
    return str(result.get("status", "")) in FAILED_STATUSES


async def cmd_run(ctx: Context) -> int:
    result = await ctx.client.run_task(ctx.args.task)
    ctx.emit(
        {"task": ctx.args.task, "result": result},
        lambda: _record_lines(ctx, result) or f"{render.clean(ctx.args.task)}: done",
    )
    if _failed(result):
        ctx.err.write(f"{PROG}: task {render.clean(ctx.args.task)} {_text(result['status'])}\n")
        return EXIT_ERROR
    return EXIT_OK


def _history_rows(ctx: Context, events: Sequence[Record]) -> list[list[object]]:
    return [
        [
            ctx.ts(e.get("timeofban")),
            e.get("action", ""),
            e.get("jail", ""),
            e.get("ip", ""),
            render.format_duration(_int(e.get("bantime"))) if e.get("action") == "ban" else "",
            _int(e.get("bancount")),
            _int(e.get("failures")),
            e.get("country_code", "") or "-",
            _short(e.get("asn", "")) or "-",
            e.get("origin", ""),
        ]
        for e in events
    ]


HISTORY_HEADERS: Final = (
    "time", "action", "jail", "ip", "bantime", "count", "failures", "cc", "asn", "origin",
)  # fmt: skip


async def cmd_history(ctx: Context) -> int:
    args = ctx.args
    candidates: dict[str, object] = {
        "since": args.since,
        "until": args.until,
        "jail": args.jail,
        "ip": args.ip,
        "action": args.action,
        "country_code": args.country.upper() if args.country else None,
        "origin": args.origin,
    }
    filters = {key: value for key, value in candidates.items() if value is not None}
    events, total = await ctx.client.get_history(filters, args.page, args.page_size)

    def text() -> str:
        body = render.table(
            HISTORY_HEADERS, _history_rows(ctx, events), empty="no events", right=(5, 6)
        )
        first = (args.page - 1) * args.page_size + 1
        return body + _page_footer(len(events), first, total, f"--page {args.page + 1} for more")

    doc = {
        "events": events,
        "total": total,
        "page": args.page,
        "page_size": args.page_size,
        "filter": filters,
    }
    ctx.emit(doc, text)
    return EXIT_OK


async def cmd_ip(ctx: Context) -> int:
    ip = ctx.args.address
    history = await ctx.client.get_ip_history(ip)
    geo = await ctx.client.lookup_ip(ip)

    def text() -> str:
        country = _text(geo.get("country_code")) or _text(history.get("country_code"))
        name = _text(geo.get("country_name"))
        pairs: list[tuple[str, object]] = [
            ("ip", ip),
            ("country", f"{country} ({name})" if country and name else (country or "-")),
            ("asn", _text(geo.get("asn")) or _text(history.get("asn")) or "-"),
            ("org", _text(geo.get("org")) or _text(history.get("org")) or "-"),
            ("geo source", _text(geo.get("source")) or "-"),
            ("total bans", _int(history.get("total_bans"))),
            ("first seen", ctx.when(history.get("first_seen"))),
            ("last seen", ctx.when(history.get("last_seen"))),
            ("jails", _text(history.get("jails")) or "-"),
        ]
        events = history.get("events")
        records = [e for e in events if isinstance(e, dict)] if isinstance(events, list) else []
        table = render.table(
            HISTORY_HEADERS, _history_rows(ctx, records), empty="no events recorded", right=(5, 6)
        )
        return render.key_values(pairs) + "\n\n" + table

    ctx.emit({"history": history, "geo": geo}, text)
    return EXIT_OK


def _since_label(ctx: Context, since: int) -> str:
    return "all time" if since <= 0 else f"since {ctx.when(since)}"


async def cmd_top(ctx: Context) -> int:
    args = ctx.args
    top = await ctx.client.get_top(args.dimension, args.since, args.limit)

    def text() -> str:
        title = f"top {args.dimension} by bans, {_since_label(ctx, args.since)}"
        chart = render.bar_chart(top, ctx.width, char=ctx.bar_char, empty="no bans")
        return f"{title}\n{chart}"

    doc = {
        "dimension": args.dimension,
        "since": args.since,
        "top": [{"key": key, "count": count} for key, count in top],
    }
    ctx.emit(doc, text)
    return EXIT_OK


def auto_bucket(span_seconds: int) -> int:
    """Pick a bucket giving a chart of at most about 100 lines: 1h, 1d or 7d."""
    if span_seconds <= 4 * 86400:
        return 3600
    if span_seconds <= 100 * 86400:
        return 86400
    return 7 * 86400


async def cmd_timeline(ctx: Context) -> int:
    args = ctx.args
    since = args.since if args.since is not None else int(ctx.now) - 86400
    bucket = args.bucket or auto_bucket(max(0, int(ctx.now) - since))
    buckets = await ctx.client.get_timeline(since, bucket)

    def text() -> str:
        # "YYYY-MM-DD HH:MM:SS" cut to the bucket's precision: day, minute or second
        cut = 10 if bucket % 86400 == 0 else 16 if bucket % 60 == 0 else 19
        items = [(render.format_timestamp(start, ctx.tz)[:cut], n) for start, n in buckets]
        title = f"bans per {render.format_duration(bucket)}, {_since_label(ctx, since)}"
        return f"{title}\n{render.bar_chart(items, ctx.width, char=ctx.bar_char)}"

    doc = {
        "since": since,
        "bucket_seconds": bucket,
        "buckets": [{"start": start, "count": n} for start, n in buckets],
    }
    ctx.emit(doc, text)
    return EXIT_OK


async def cmd_sources(ctx: Context) -> int:
    sources = await ctx.client.list_sources()

    def text() -> str:
        rows = [
            [
                _int(s.get("id")),
                s.get("name", ""),
                "yes" if s.get("enabled") else "no",
                ctx.rel(s.get("last_run"), "never"),
                s.get("last_status", "") or "-",
                _int(s.get("last_imported")),
                _short(s.get("url", ""), 60),
            ]
            for s in sources
        ]
        headers = ("id", "name", "enabled", "last run", "status", "imported", "url")
        return render.table(headers, rows, empty="no blocklist sources")

    ctx.emit(sources, text)
    return EXIT_OK


IMPORT_KEYS: Final = (
    "status", "entries", "added", "removed", "invalid", "refused", "run_id", "content_hash",
)  # fmt: skip


def _source_id(result: Record) -> int:
    """ImportAll's records may name their source (an additive key); 0 when they don't."""
    return _int(result.get("source_id", result.get("id")))


def _import_text(results: Sequence[Record], names: dict[int, str]) -> str:
    if not results:
        return "no enabled sources"
    headers = ["status", "entries", "added", "removed", "invalid", "refused", "error"]
    rows: list[list[object]] = [
        [
            r.get("status", ""),
            _int(r.get("entries")),
            _int(r.get("added")),
            _int(r.get("removed")),
            _int(r.get("invalid")),
            _int(r.get("refused")),
            _short(r.get("error", ""), 60),
        ]
        for r in results
    ]
    if any(_source_id(r) for r in results):
        headers[:0] = ["source", "name"]
        for row, r in zip(rows, results, strict=True):
            row[:0] = [_source_id(r) or "", names.get(_source_id(r), "")]
    return render.table(headers, rows)


class _ProgressView:
    """Draws ImportProgress signals as a bar on stderr (a terminal only)."""

    def __init__(self, ctx: Context, source_id: int | None, names: dict[int, str]) -> None:
        self.ctx = ctx
        self.source_id = source_id
        self.names = names
        self.drawn = False

    def __call__(self, interface: str, member: str, args: list[object]) -> None:
        if member != "ImportProgress" or len(args) < 3:
            return
        source, done, total = (_int(a) for a in args[:3])
        if self.source_id is not None and source != self.source_id:
            return
        label = render.clean(self.names.get(source, f"source {source}"))[:24]
        bar = render.progress_bar(done, total, max(10, self.ctx.width - len(label) - 24))
        self.ctx.err.write(f"\r{label} {bar}")
        self.ctx.err.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.ctx.err.write("\n")
            self.ctx.err.flush()


async def _source_names(ctx: Context) -> dict[int, str]:
    """Source id -> name, for labels only: a failure here must not hide an import's result."""
    try:
        sources = await ctx.client.list_sources()
    except DaemonError:
        return {}
    return {_int(s.get("id")): _text(s.get("name")) for s in sources}


async def cmd_import(ctx: Context) -> int:
    args = ctx.args
    names: dict[int, str] = {}
    view: _ProgressView | None = None
    if ctx.progress and not ctx.json:
        names = await _source_names(ctx)
        view = _ProgressView(ctx, None if args.all else args.source_id, names)
        await ctx.client.subscribe(view)
    try:
        if args.all:
            results = await ctx.client.import_all()
        else:
            result = await ctx.client.import_source(args.source_id)
            results = [{"source_id": args.source_id, **result}]
    finally:
        if view is not None:
            view.finish()
            await ctx.client.unsubscribe(view)
    if args.all:
        if not names and not ctx.json and any(_source_id(r) for r in results):
            names = await _source_names(ctx)
        ctx.emit(results, lambda: _import_text(results, names))
    else:
        single = results[0]
        ctx.emit(
            {k: v for k, v in single.items() if k != "source_id"},
            lambda: _record_lines(ctx, single),
        )
    failed = [r for r in results if _failed(r)]
    for r in failed:
        error = _text(r.get("error")) or "no reason given"
        which = f"import of source {_source_id(r)}" if _source_id(r) else "import"
        ctx.err.write(f"{PROG}: {which} failed: {render.clean(error)}\n")
    return EXIT_ERROR if failed else EXIT_OK


async def cmd_preview(ctx: Context) -> int:
    preview = await ctx.client.preview_source(ctx.args.url)

    def text() -> str:
        pairs = [
            ("entries", _int(preview.get("entries"))),
            ("invalid", _int(preview.get("invalid"))),
            ("refused", _int(preview.get("refused"))),
            *_extras(preview, ("entries", "invalid", "refused", "sample", "refused_sample")),
        ]
        parts = [render.key_values(pairs)]
        for key, title in (("sample", "sample"), ("refused_sample", "refused (sample)")):
            values = preview.get(key)
            if isinstance(values, list) and values:
                parts.append(f"{title}:\n" + "\n".join(f"  {render.clean(v)}" for v in values))
        return "\n\n".join(parts)

    ctx.emit(preview, text)
    return EXIT_OK


async def cmd_runs(ctx: Context) -> int:
    args = ctx.args
    runs, total = await ctx.client.list_import_runs(args.source, args.page, args.page_size)

    def text() -> str:
        rows = []
        for r in runs:
            started, finished = _int(r.get("started_at")), _int(r.get("finished_at"))
            took = render.format_duration(finished - started) if finished >= started > 0 else "-"
            rows.append(
                [
                    _int(r.get("run_id")),
                    _int(r.get("source_id")),
                    r.get("status", ""),
                    ctx.ts(started),
                    took,
                    _int(r.get("imported")),
                    _int(r.get("invalid")),
                    _int(r.get("refused")),
                    _text(r.get("content_hash"))[:12],
                    _short(r.get("error", ""), 40),
                ]
            )
        headers = (
            "run", "source", "status", "started", "took", "imported", "invalid", "refused",
            "hash", "error",
        )  # fmt: skip
        body = render.table(headers, rows, empty="no import runs")
        first = (args.page - 1) * args.page_size + 1
        return body + _page_footer(len(runs), first, total, f"--page {args.page + 1} for more")

    ctx.emit({"runs": runs, "total": total, "page": args.page, "page_size": args.page_size}, text)
    return EXIT_OK


async def cmd_lookup(ctx: Context) -> int:
    ips: list[str] = ctx.args.ips
    answers = await ctx.client.lookup_ips(ips)

    def text() -> str:
        rows = [
            [
                a.get("ip", ip),
                a.get("country_code", "") or "-",
                _short(a.get("country_name", ""), 24) or "-",
                _short(a.get("asn", "")) or "-",
                _short(a.get("org", ""), 40) or "-",
                a.get("source", ""),
            ]
            for ip, a in zip(ips, answers, strict=False)
        ]
        return render.table(("ip", "cc", "country", "asn", "org", "source"), rows)

    ctx.emit(answers, text)
    return EXIT_OK


# --- watch ----------------------------------------------------------------------------------
def signal_document(interface: str, member: str, args: Sequence[object]) -> dict[str, object]:
    """Name a signal's args after the contract, for `--json` and for the text line."""
    names = SIGNAL_ARGS.get(member, ())
    named = {names[i] if i < len(names) else f"arg{i}": v for i, v in enumerate(args)}
    return {"interface": interface, "signal": member, "args": named}


def watched(interface: str, member: str, args: Sequence[object]) -> dict[str, object] | None:
    """The named args of a signal `watch` reports, or None for one it ignores.

    PropertiesChanged counts only when State or Fail2banConnected changed, and then
    carries only those.
    """
    if member not in SIGNAL_ARGS:
        return None
    if member == "PropertiesChanged":
        if interface != IFACE_PROPERTIES or len(args) < 2 or args[0] != IFACE_CORE:
            return None
        changed = args[1] if isinstance(args[1], dict) else {}
        picked = {k: v for k, v in changed.items() if k in WATCHED_PROPERTIES}
        if not picked:
            return None
        return {"interface": args[0], "changed": picked}
    names = SIGNAL_ARGS[member]
    return {names[i] if i < len(names) else f"arg{i}": v for i, v in enumerate(args)}


def watch_line(member: str, named: dict[str, Any], ts: str) -> str:
    """One human line per signal: "<local time>  <Signal>  <details>"."""
    g = named.get
    if member == "BanAdded":
        detail = f"{g('jail')} {g('ip')} banned for {render.format_duration(_int(g('bantime')))}"
    elif member == "BanRemoved":
        detail = f"{g('jail')} {g('ip')} unbanned"
    elif member == "BansChanged":
        detail = f"+{_int(g('added'))} -{_int(g('removed'))} bans"
    elif member == "TaskFinished":
        details = g("details")
        extra = f" ({_text(details)})" if isinstance(details, dict) and details else ""
        detail = f"{g('name')}: {g('status')}{extra}"
    elif member == "HistorySynced":
        detail = f"{_int(g('new_events'))} new events archived"
    elif member == "ImportStarted":
        detail = f"source {_int(g('source_id'))} run {_int(g('run_id'))}"
    elif member == "ImportProgress":
        done, total = _int(g("done")), _int(g("total"))
        pct = f" ({done * 100 // total}%)" if total > 0 else ""
        detail = f"source {_int(g('source_id'))}: {done}/{total}{pct}"
    elif member == "ImportFinished":
        detail = (
            f"source {_int(g('source_id'))}: {g('status')}, "
            f"+{_int(g('added'))} -{_int(g('removed'))}"
        )
    elif member == "PropertiesChanged":
        changed = g("changed") or {}
        detail = ", ".join(
            f"{'fail2ban connected' if k == 'Fail2banConnected' else k.lower()}: {_text(v)}"
            for k, v in changed.items()
        )
    else:
        detail = _text(named)
    return render.clean(f"{ts}  {member:<17} {detail}")


async def cmd_watch(ctx: Context) -> int:
    """Print one line per signal until Ctrl-C/SIGTERM (exit 0), `--count` lines, or bus loss."""
    members = set(ctx.args.filter or WATCH_MEMBERS)
    limit: int | None = ctx.args.count
    # a signal, or why to stop: "stop" (Ctrl-C/SIGTERM) or "closed" (the bus went away)
    queue: asyncio.Queue[tuple[str, str, list[object]] | str] = asyncio.Queue()

    def on_signal(interface: str, member: str, args: list[object]) -> None:
        queue.put_nowait((interface, member, args))

    await ctx.client.subscribe(on_signal)
    # Said once the match rule is in place, so a script knows no signal can be missed.
    ctx.err.write(f"{PROG}: watching {BUS_NAME} signals\n")
    ctx.err.flush()
    if not await ctx.client.daemon_running():
        ctx.err.write(f"{PROG}: note: {BUS_NAME} is not on the bus yet; waiting for it\n")
        ctx.err.flush()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, queue.put_nowait, "stop")
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass

    def on_closed(fut: asyncio.Future[None]) -> None:
        if not fut.cancelled():
            queue.put_nowait("closed")

    closed = asyncio.ensure_future(ctx.client.wait_closed())
    closed.add_done_callback(on_closed)
    if ctx.ready is not None:
        ctx.ready.set()
    printed = 0
    stopped_by = "count"
    try:
        while limit is None or printed < limit:
            item = await queue.get()
            if isinstance(item, str):
                stopped_by = item
                break
            interface, member, args = item
            if member not in members:
                continue
            named = watched(interface, member, args)
            if named is None:
                continue
            now = time.time()
            stamp = render.format_timestamp(int(now), ctx.tz)
            if ctx.json:
                doc = {
                    "time": now,
                    "local_time": stamp,
                    "interface": interface,
                    "signal": member,
                    "args": named,
                }
                line = json.dumps(doc, default=_json_default)
            else:
                line = watch_line(member, named, stamp)
            ctx.out.write(line + "\n")
            ctx.out.flush()
            printed += 1
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        closed.cancel()
    if stopped_by == "closed":
        ctx.err.write(f"{PROG}: lost the connection to {ctx.client.address_label}\n")
        return EXIT_UNAVAILABLE
    return EXIT_OK


COMMANDS: Final[dict[str, Callable[[Context], Awaitable[int]]]] = {
    "status": cmd_status,
    "jails": cmd_jails,
    "bans": cmd_bans,
    "ban": cmd_ban,
    "unban": cmd_unban,
    "tasks": cmd_tasks,
    "run": cmd_run,
    "watch": cmd_watch,
    "history": cmd_history,
    "ip": cmd_ip,
    "top": cmd_top,
    "timeline": cmd_timeline,
    "sources": cmd_sources,
    "import": cmd_import,
    "preview": cmd_preview,
    "runs": cmd_runs,
    "lookup": cmd_lookup,
}


# --- entry points ---------------------------------------------------------------------------
async def execute(ctx: Context) -> int:
    """Run the parsed command on a connected client; map DaemonError to an exit code."""
    try:
        return await COMMANDS[ctx.args.command](ctx)
    except DaemonError as error:
        ctx.err.write(f"{PROG}: {describe_error(error, ctx.client.address_label)}\n")
        ctx.err.flush()
        return exit_code_for(error)


async def run(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Connect to the bus named by `args.bus`, run the command, disconnect."""
    out = out or sys.stdout
    err = err or sys.stderr
    client = DaemonClient(timeout=args.timeout)
    utf8 = (getattr(out, "encoding", None) or "").lower().replace("-", "") == "utf8"
    ctx = Context(
        client=client,
        args=args,
        out=out,
        err=err,
        width=shutil.get_terminal_size((80, 24)).columns,
        bar_char="█" if utf8 else "#",
        progress=err.isatty(),
    )
    try:
        await client.connect(args.bus)
    except DaemonError as error:
        err.write(f"{PROG}: {describe_error(error, client.address_label)}\n")
        return exit_code_for(error)
    try:
        return await execute(ctx)
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> None:
    """The `banguictl` console script: parse, run, exit with the command's code."""
    args = build_parser().parse_args(argv)  # exits 2 on a usage error
    try:
        code = asyncio.run(run(args))
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # `banguictl history | head`: not an error worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_ERROR
    sys.exit(code)


if __name__ == "__main__":
    main()
