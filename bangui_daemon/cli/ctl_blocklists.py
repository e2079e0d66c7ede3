"""banguictl commands of the Blocklists interface: sources, import, preview, runs."""

from __future__ import annotations

from collections.abc import Sequence

from bangui_daemon.cli import render
from bangui_daemon.cli.bus_client import DaemonError, Record
from bangui_daemon.cli.ctl_context import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    Context,
    as_int,
    as_text,
    extras,
    page_footer,
    record_lines,
    shorten,
)
from bangui_daemon.cli.ctl_core import failed_status


async def cmd_sources(ctx: Context) -> int:
    sources = await ctx.client.list_sources()

    def text() -> str:
        rows = [
            [
                as_int(s.get("id")),
                s.get("name", ""),
                "yes" if s.get("enabled") else "no",
                as_text(s.get("managed")) or "-",
                render.format_duration(as_int(s.get("interval"))) if s.get("interval") else "-",
                ctx.rel(s.get("last_run"), "never"),
                s.get("last_status", "") or "-",
                as_int(s.get("listed")),
                as_int(s.get("last_imported")),
                shorten(s.get("url", ""), 50),
            ]
            for s in sources
        ]
        headers = (
            "id", "name", "enabled", "managed", "every", "last run", "status", "entries",
            "imported", "url",
        )  # fmt: skip
        return render.table(headers, rows, empty="no blocklist sources")

    ctx.emit(sources, text)
    return EXIT_OK


async def cmd_source(ctx: Context) -> int:
    """`source add|update|remove|enable|disable`: change the sources over D-Bus."""
    a = ctx.args
    action: str = a.source_action
    if action == "add":
        source_id = await ctx.client.add_source(a.name, a.url, not a.disabled)
        changes = _option_changes(a)
        if changes:
            await ctx.client.update_source(source_id, changes)
        ctx.emit({"id": source_id}, lambda: f"added source {source_id} ({a.name})")
        return EXIT_OK
    source_id = a.source_id
    if action == "remove":
        await ctx.client.remove_source(source_id)
        ctx.emit({"id": source_id, "removed": True}, lambda: f"removed source {source_id}")
        return EXIT_OK
    if action in ("enable", "disable"):
        update: dict[str, str | bool | int] = {"enabled": action == "enable"}
    else:
        update = _option_changes(a)
        if a.name is not None:
            update["name"] = a.name
        if a.url is not None:
            update["url"] = a.url
        if not update:
            ctx.err.write(f"{PROG}: source update: nothing to change (see --help)\n")
            return EXIT_USAGE
    await ctx.client.update_source(source_id, update)
    ctx.emit({"id": source_id, **update}, lambda: f"source {source_id}: {action}d")
    return EXIT_OK


def _option_changes(args: object) -> dict[str, str | bool | int]:
    changes: dict[str, str | bool | int] = {}
    interval = getattr(args, "interval", None)
    if interval is not None:
        changes["interval"] = interval
    max_entries = getattr(args, "max_entries", None)
    if max_entries is not None:
        changes["max_entries"] = max_entries
    return changes


def _source_id(result: Record) -> int:
    """ImportAll's records may name their source (an additive key); 0 when they don't."""
    return as_int(result.get("source_id", result.get("id")))


def _import_text(results: Sequence[Record], names: dict[int, str]) -> str:
    if not results:
        return "no enabled sources"
    headers = ["status", "entries", "added", "removed", "invalid", "refused", "error"]
    rows: list[list[object]] = [
        [
            r.get("status", ""),
            as_int(r.get("entries")),
            as_int(r.get("added")),
            as_int(r.get("removed")),
            as_int(r.get("invalid")),
            as_int(r.get("refused")),
            shorten(r.get("error", ""), 60),
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

    def __call__(self, _interface: str, member: str, args: list[object]) -> None:
        if member != "ImportProgress" or len(args) < 3:
            return
        source, done, total = (as_int(a) for a in args[:3])
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
    return {as_int(s.get("id")): as_text(s.get("name")) for s in sources}


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
            lambda: record_lines(ctx, single),
        )
    failed = [r for r in results if failed_status(r)]
    for r in failed:
        error = as_text(r.get("error")) or "no reason given"
        which = f"import of source {_source_id(r)}" if _source_id(r) else "import"
        ctx.err.write(f"{PROG}: {which} failed: {render.clean(error)}\n")
    return EXIT_ERROR if failed else EXIT_OK


SAMPLES = {"sample": "sample", "refused_sample": "refused (sample)", "invalid_sample": "invalid"}


async def cmd_preview(ctx: Context) -> int:
    preview = await ctx.client.preview_source(ctx.args.url)

    def text() -> str:
        pairs = [
            ("entries", as_int(preview.get("entries"))),
            ("invalid", as_int(preview.get("invalid"))),
            ("refused", as_int(preview.get("refused"))),
            *extras(preview, ("entries", "invalid", "refused", *SAMPLES)),
        ]
        parts = [render.key_values(pairs)]
        for key, title in SAMPLES.items():
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
            started, finished = as_int(r.get("started_at")), as_int(r.get("finished_at"))
            took = render.format_duration(finished - started) if finished >= started > 0 else "-"
            rows.append(
                [
                    as_int(r.get("run_id")),
                    as_int(r.get("source_id")),
                    r.get("status", ""),
                    ctx.ts(started),
                    took,
                    as_int(r.get("imported")),
                    as_int(r.get("invalid")),
                    as_int(r.get("refused")),
                    as_text(r.get("content_hash"))[:12],
                    shorten(r.get("error", ""), 40),
                ]
            )
        headers = (
            "run", "source", "status", "started", "took", "imported", "invalid", "refused",
            "hash", "error",
        )  # fmt: skip
        body = render.table(headers, rows, empty="no import runs")
        first = (args.page - 1) * args.page_size + 1
        return body + page_footer(len(runs), first, total, f"--page {args.page + 1} for more")

    ctx.emit({"runs": runs, "total": total, "page": args.page, "page_size": args.page_size}, text)
    return EXIT_OK
