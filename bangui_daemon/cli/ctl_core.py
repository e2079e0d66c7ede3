"""banguictl commands of the core interface: status, jails, bans, ban, unban, tasks, run."""

from __future__ import annotations

from bangui_daemon.cli import render
from bangui_daemon.cli.bus_client import Record
from bangui_daemon.cli.ctl_context import (
    EXIT_ERROR,
    EXIT_OK,
    FAILED_STATUSES,
    PROG,
    Context,
    as_int,
    as_text,
    extras,
    page_footer,
    record_lines,
    shorten,
)
from bangui_daemon.dbus.names import CORE_INTERFACE


async def cmd_status(ctx: Context) -> int:
    status = await ctx.client.get_status()
    props = await ctx.client.get_all_properties(CORE_INTERFACE)
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
        f2b = f"connected, {as_text(status.get('fail2ban_version'))}" if connected else "down"
        started = as_int(props.get("StartedAt"))
        interface = as_text(props.get("InterfaceVersion"))
        pairs: list[tuple[str, object]] = [
            ("daemon", f"{as_text(status.get('version'))} (interface {interface})"),
            ("state", as_text(props.get("State"))),
            ("started", ctx.when(started)),
            ("fail2ban", f2b),
            ("jails", as_text(status.get("jails")) or "-"),
            ("active bans", as_text(status.get("active_bans"))),
            ("archived events", as_text(status.get("archived_events"))),
            ("last history sync", ctx.when(status.get("last_history_sync"))),
            ("geo cache entries", as_text(status.get("geo_cache_entries"))),
            *extras(status, known),
        ]
        return render.key_values(pairs)

    ctx.emit({"status": status, "properties": props}, text)
    return EXIT_OK


async def cmd_jails(ctx: Context) -> int:
    jails = await ctx.client.list_jails()
    rows = [
        [
            j.get("name", ""),
            as_int(j.get("currently_banned")),
            as_int(j.get("total_banned")),
            as_int(j.get("currently_failed")),
            as_int(j.get("total_failed")),
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
                render.format_duration(as_int(b.get("bantime"))),
                "never" if as_int(b.get("expires")) < 0 else ctx.rel(b.get("expires")),
                as_int(b.get("bancount")),
                b.get("country_code", "") or "-",
                shorten(b.get("asn", "")) or "-",
                shorten(b.get("org", ""), 28) or "-",
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
        return body + page_footer(len(bans), args.offset + 1, total, hint)

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
                render.format_duration(as_int(t.get("interval"))),
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


def failed_status(result: Record) -> bool:
    return str(result.get("status", "")) in FAILED_STATUSES


async def cmd_run(ctx: Context) -> int:
    result = await ctx.client.run_task(ctx.args.task)
    ctx.emit(
        {"task": ctx.args.task, "result": result},
        lambda: record_lines(ctx, result) or f"{render.clean(ctx.args.task)}: done",
    )
    if failed_status(result):
        ctx.err.write(f"{PROG}: task {render.clean(ctx.args.task)} {as_text(result['status'])}\n")
        return EXIT_ERROR
    return EXIT_OK
