"""banguictl commands of the History and Geo interfaces: history, ip, top, timeline, lookup."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from bangui_daemon.cli import render
from bangui_daemon.cli.bus_client import (
    Record,
)
from bangui_daemon.cli.ctl_context import EXIT_OK, Context, as_int, as_text, page_footer, shorten


def _history_rows(ctx: Context, events: Sequence[Record]) -> list[list[object]]:
    return [
        [
            ctx.ts(e.get("timeofban")),
            e.get("action", ""),
            e.get("jail", ""),
            e.get("ip", ""),
            render.format_duration(as_int(e.get("bantime"))) if e.get("action") == "ban" else "",
            as_int(e.get("bancount")),
            as_int(e.get("failures")),
            e.get("country_code", "") or "-",
            shorten(e.get("asn", "")) or "-",
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
        return body + page_footer(len(events), first, total, f"--page {args.page + 1} for more")

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
        country = as_text(geo.get("country_code")) or as_text(history.get("country_code"))
        name = as_text(geo.get("country_name"))
        pairs: list[tuple[str, object]] = [
            ("ip", ip),
            ("country", f"{country} ({name})" if country and name else (country or "-")),
            ("asn", as_text(geo.get("asn")) or as_text(history.get("asn")) or "-"),
            ("org", as_text(geo.get("org")) or as_text(history.get("org")) or "-"),
            ("geo source", as_text(geo.get("source")) or "-"),
            ("total bans", as_int(history.get("total_bans"))),
            ("first seen", ctx.when(history.get("first_seen"))),
            ("last seen", ctx.when(history.get("last_seen"))),
            ("jails", as_text(history.get("jails")) or "-"),
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


async def cmd_lookup(ctx: Context) -> int:
    ips: list[str] = ctx.args.ips
    answers = await ctx.client.lookup_ips(ips)

    def text() -> str:
        rows = [
            [
                a.get("ip", ip),
                a.get("country_code", "") or "-",
                shorten(a.get("country_name", ""), 24) or "-",
                shorten(a.get("asn", "")) or "-",
                shorten(a.get("org", ""), 40) or "-",
                a.get("source", ""),
            ]
            for ip, a in zip(ips, answers, strict=False)
        ]
        return render.table(("ip", "cc", "country", "asn", "org", "source"), rows)

    ctx.emit(answers, text)
    return EXIT_OK


# --- watch ----------------------------------------------------------------------------------
