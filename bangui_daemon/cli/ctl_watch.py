"""banguictl watch: one line per signal, live."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

from bangui_daemon.cli import render
from bangui_daemon.cli.bus_client import IFACE_PROPERTIES
from bangui_daemon.cli.ctl_context import (
    EXIT_OK,
    EXIT_UNAVAILABLE,
    PROG,
    SIGNAL_ARGS,
    WATCH_MEMBERS,
    WATCHED_PROPERTIES,
    Context,
    as_int,
    as_text,
    json_default,
    on_stop_signals,
)
from bangui_daemon.dbus.names import BUS_NAME, CORE_INTERFACE


def watched(interface: str, member: str, args: Sequence[object]) -> dict[str, object] | None:
    """The named args of a signal `watch` reports, or None for one it ignores.

    PropertiesChanged counts only when State or Fail2banConnected changed, and then
    carries only those.
    """
    if member not in SIGNAL_ARGS:
        return None
    if member == "PropertiesChanged":
        if interface != IFACE_PROPERTIES or len(args) < 2 or args[0] != CORE_INTERFACE:
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
        detail = f"{g('jail')} {g('ip')} banned for {render.format_duration(as_int(g('bantime')))}"
    elif member == "BanRemoved":
        detail = f"{g('jail')} {g('ip')} unbanned"
    elif member == "BansChanged":
        detail = f"+{as_int(g('added'))} -{as_int(g('removed'))} bans"
    elif member == "TaskFinished":
        details = g("details")
        extra = f" ({as_text(details)})" if isinstance(details, dict) and details else ""
        detail = f"{g('name')}: {g('status')}{extra}"
    elif member == "HistorySynced":
        detail = f"{as_int(g('new_events'))} new events archived"
    elif member == "ImportStarted":
        detail = f"source {as_int(g('source_id'))} run {as_int(g('run_id'))}"
    elif member == "ImportProgress":
        done, total = as_int(g("done")), as_int(g("total"))
        pct = f" ({done * 100 // total}%)" if total > 0 else ""
        detail = f"source {as_int(g('source_id'))}: {done}/{total}{pct}"
    elif member == "ImportFinished":
        detail = (
            f"source {as_int(g('source_id'))}: {g('status')}, "
            f"+{as_int(g('added'))} -{as_int(g('removed'))}"
        )
    elif member == "PropertiesChanged":
        changed = g("changed") or {}
        detail = ", ".join(
            f"{'fail2ban connected' if k == 'Fail2banConnected' else k.lower()}: {as_text(v)}"
            for k, v in changed.items()
        )
    else:
        detail = as_text(named)
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

    def on_closed(fut: asyncio.Future[None]) -> None:
        if not fut.cancelled():
            queue.put_nowait("closed")

    with on_stop_signals(lambda: queue.put_nowait("stop")):
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
                    line = json.dumps(doc, default=json_default)
                else:
                    line = watch_line(member, named, stamp)
                ctx.out.write(line + "\n")
                ctx.out.flush()
                printed += 1
        finally:
            closed.cancel()
    if stopped_by == "closed":
        ctx.err.write(f"{PROG}: lost the connection to {ctx.client.address_label}\n")
        return EXIT_UNAVAILABLE
    return EXIT_OK
