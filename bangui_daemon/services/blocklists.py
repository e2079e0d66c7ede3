"""Blocklist use-cases: sources CRUD, imports (one at a time per source), previews."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from urllib.parse import urlsplit

import structlog

from bangui_daemon.archive.import_runs_repo import ImportRunsRepository
from bangui_daemon.archive.import_runs_repo import RunRow as RunRow  # the D-Bus edge shows these
from bangui_daemon.archive.sources_repo import DuplicateName, SourceRow, SourcesRepository
from bangui_daemon.blocklist.fetch import redact_url
from bangui_daemon.blocklist.importer import FAILED, Importer, Preview
from bangui_daemon.blocklist.importer import ImportOutcome as ImportOutcome
from bangui_daemon.config import BlocklistSource
from bangui_daemon.errors import InvalidArgument, NotFound, quote

log = structlog.get_logger(__name__)

MAX_NAME = 100
MAX_URL = 2048
TypedValue = tuple[str, object]  # (D-Bus signature, value)
Feed = Callable[[], Sequence[bytes] | None]
"""The current content of a source fed by another part of the daemon (CrowdSec);
None until the feed knows it (an empty content would unban everything it listed)."""


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise InvalidArgument(f"a source name is 1 to {MAX_NAME} printable characters")
    return name


MAX_INTERVAL = 366 * 86400
MAX_SOURCE_ENTRIES = 10_000_000
CHANGE_TYPES: dict[str, tuple[str, ...]] = {
    "name": ("s",),
    "url": ("s",),
    "enabled": ("b",),
    "interval": ("x", "t", "u", "i"),
    "max_entries": ("u", "x", "t", "i"),
}
"""UpdateSource's keys and the D-Bus types each accepts (the first is documented)."""


def check_interval(value: object) -> int:
    """Seconds between scheduled imports of one source; 0 = the task's interval."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INTERVAL:
        raise InvalidArgument(f"interval must be 0 (the default) to {MAX_INTERVAL} seconds")
    return value


def check_max_entries(value: object) -> int:
    """A source's entry cap; 0 = blocklist.max_entries."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument("max_entries must be a whole number")
    if not 0 <= value <= MAX_SOURCE_ENTRIES:
        raise InvalidArgument(f"max_entries must be 0 (the default) to {MAX_SOURCE_ENTRIES}")
    return value


CONFIG = "config"
"""`managed` of the sources the config declares."""


def _options(s: SourceRow) -> tuple[str, bool, int, int, str]:
    return (s.url, s.enabled, s.interval, s.max_entries, s.managed)


class BlocklistService:
    """Sources, imports and previews. Source URLs are shown with their credentials
    redacted (`redact_url`); the stored URL keeps them for the download."""

    def __init__(
        self,
        importer: Importer,
        sources: SourcesRepository,
        runs: ImportRunsRepository,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._importer = importer
        self._sources = sources
        self._runs = runs
        self._clock = clock
        self._running: dict[int, asyncio.Task[ImportOutcome]] = {}
        self._feeds: dict[str, Feed] = {}  # source name -> its content
        self.on_sources_changed: Callable[[], Awaitable[None]] | None = None
        """Told after sources are added, changed or removed (intervals may have moved)."""

    async def _changed(self) -> None:
        if self.on_sources_changed is not None:
            await self.on_sources_changed()

    # ---- sources managed by the config ------------------------------------------

    async def register_feed(self, name: str, url: str, content: Feed) -> int:
        """Make the source `name` (created when missing) take its content from `content`.

        A feed is managed by its section of the config (`managed` = its name): D-Bus
        callers cannot rename, repoint or remove it, and its imports never download
        anything. An admin's own source of that name is never taken over.
        """
        existing = await self._by_name(name)
        if existing is not None and existing.managed != name:
            raise InvalidArgument(
                f"a source named {name!r} exists already; rename it to use [{name}]"
            )
        self._feeds[name] = content
        if existing is not None:
            await self._write(existing, url=url, enabled=True)
            return existing.id
        source_id = await self._sources.add(name, url, True, int(self._clock()), managed=name)
        log.info("blocklist_source_added", source_id=source_id, name=name, managed=name)
        return source_id

    async def import_feed(self, name: str) -> ImportOutcome:
        source = await self._by_name(name)
        if source is None or name not in self._feeds:
            raise NotFound(f"there is no blocklist feed named {name!r}")
        return await self.import_source(source.id)

    async def remove_orphan_feed(self, name: str) -> None:
        """Remove the source of a feed whose config section is gone (unbans what only it
        listed), so turning CrowdSec off leaves none of its bans behind."""
        source = await self._by_name(name)
        if source is not None and source.managed == name and name not in self._feeds:
            await self.remove_source(source.id, managed=True)
            log.info("blocklist_feed_removed", source_id=source.id, name=name)

    async def reconcile(self, declared: Sequence[BlocklistSource]) -> dict[str, int]:
        """Make the config's sources exist as declared (start and SIGHUP).

        Added and changed ones are written; a config source no longer declared is
        removed, unbanning what only it listed. A D-Bus source of a declared name is
        taken over by the config (the admin moved it there).
        """
        counts = {"added": 0, "changed": 0, "removed": 0}
        wanted = {d.name: d for d in declared}
        for gone in await self._sources.all():
            if gone.managed == CONFIG and gone.name not in wanted:
                await self.remove_source(gone.id, managed=True)
                counts["removed"] += 1
                log.info("blocklist_config_source_removed", source_id=gone.id, name=gone.name)
        for d in declared:
            url = self._check_url(d.url)
            source = await self._by_name(d.name)
            if source is None:
                await self._sources.add(
                    d.name, url, d.enabled, int(self._clock()), managed=CONFIG,
                    interval=d.interval, max_entries=d.max_entries,
                )  # fmt: skip
                counts["added"] += 1
                log.info("blocklist_config_source_added", name=d.name)
            elif source.managed not in ("", CONFIG):
                log.warning("blocklist_config_source_name_taken", name=d.name, by=source.managed)
            elif _options(source) != (url, d.enabled, d.interval, d.max_entries, CONFIG):
                await self._write(
                    source, url=url, enabled=d.enabled, interval=d.interval,
                    max_entries=d.max_entries, managed=CONFIG,
                )  # fmt: skip
                counts["changed"] += 1
                log.info("blocklist_config_source_changed", source_id=source.id, name=d.name)
        await self._changed()
        return counts

    async def _by_name(self, name: str) -> SourceRow | None:
        return next((s for s in await self._sources.all() if s.name == name), None)

    async def _write(self, source: SourceRow, **changes: object) -> None:
        row = replace(source, **changes)  # type: ignore[arg-type]
        try:
            await self._sources.update(
                row.id, row.name, row.url, row.enabled, managed=row.managed,
                interval=row.interval, max_entries=row.max_entries,
            )  # fmt: skip
        except DuplicateName:
            raise InvalidArgument(f"a source named {quote(row.name)} exists already") from None

    @staticmethod
    def _refuse_managed(source: SourceRow) -> None:
        if source.managed:
            where = "[[blocklist.source]]" if source.managed == CONFIG else f"[{source.managed}]"
            raise InvalidArgument(
                f"the source {source.name!r} is managed by {where} in the config; change it there"
            )

    # ---- D-Bus callers ----------------------------------------------------------

    def _check_url(self, url: str) -> str:
        """A URL fit to store: short, printable, and one the fetcher can ever download."""
        url = url.strip()
        if len(url) > MAX_URL or not url.isprintable():
            raise InvalidArgument(f"a source URL is at most {MAX_URL} printable characters")
        if not url.isascii() and urlsplit(url).scheme.lower() != "file":
            # aiohttp 3.8 fails inside on non-ASCII userinfo; a file path is only opened
            raise InvalidArgument("a download URL must be ASCII: percent-encode other characters")
        self._importer.check_url(url)
        if urlsplit(url).netloc.rpartition("@")[0] == "***":  # copied from ListSources
            raise InvalidArgument("the URL has '***' where ListSources hid its credentials")
        return url

    async def list_sources(self) -> list[SourceRow]:
        """Every source, its URL without credentials."""
        return [dataclasses.replace(s, url=redact_url(s.url)) for s in await self._sources.all()]

    async def _get(self, source_id: int) -> SourceRow:
        source = await self._sources.get(source_id)
        if source is None:
            raise NotFound(f"there is no blocklist source with id {source_id}")
        return source

    async def _refuse_reserved(self, name: str, source_id: int = 0) -> None:
        taken = await self._by_name(name)
        if name in self._feeds or (taken is not None and taken.managed and taken.id != source_id):
            raise InvalidArgument(f"the source name {name!r} is reserved for its config section")

    async def add_source(self, name: str, url: str, enabled: bool) -> int:
        name, url = check_name(name), self._check_url(url)
        await self._refuse_reserved(name)
        try:
            source_id = await self._sources.add(name, url, enabled, int(self._clock()))
        except DuplicateName:
            raise InvalidArgument(f"a source named {quote(name)} exists already") from None
        log.info("blocklist_source_added", source_id=source_id, name=name)
        await self._changed()
        return source_id

    async def update_source(self, source_id: int, changes: Mapping[str, TypedValue]) -> None:
        source = await self._get(source_id)
        self._refuse_managed(source)
        for key, (signature, _value) in changes.items():
            if key not in CHANGE_TYPES:
                raise InvalidArgument(
                    f"unknown change {quote(key)}; known: {', '.join(CHANGE_TYPES)}"
                )
            if signature not in CHANGE_TYPES[key]:
                raise InvalidArgument(
                    f"{key} must have type {CHANGE_TYPES[key][0]}, got {signature[:8]}"
                )
        name = check_name(str(changes["name"][1])) if "name" in changes else source.name
        await self._refuse_reserved(name, source_id)
        url = self._check_url(str(changes["url"][1])) if "url" in changes else source.url
        enabled = bool(changes["enabled"][1]) if "enabled" in changes else source.enabled
        interval = (
            check_interval(changes["interval"][1]) if "interval" in changes else source.interval
        )
        max_entries = (
            check_max_entries(changes["max_entries"][1])
            if "max_entries" in changes
            else source.max_entries
        )
        await self._write(
            source, name=name, url=url, enabled=enabled, interval=interval,
            max_entries=max_entries,
        )  # fmt: skip
        await self._changed()

    async def remove_source(self, source_id: int, *, managed: bool = False) -> int:
        """Unban what only this source listed, then delete it; `managed` lets the
        config's own reconciliation remove what D-Bus callers may not."""
        source = await self._get(source_id)
        if not managed:
            self._refuse_managed(source)
        running = self._running.get(source_id)
        if running is not None:
            await asyncio.shield(running)
        removed = await self._importer.remove_source(source)
        await self._changed()
        return removed

    async def import_source(self, source_id: int) -> ImportOutcome:
        """Import now; a second caller while it runs gets the same run's result."""
        running = self._running.get(source_id)
        if running is not None:
            log.info("blocklist_import_lost_race", source_id=source_id)
            return await asyncio.shield(running)
        source = await self._get(source_id)
        running = self._running.get(source_id)  # re-check: the lookup above awaited
        if running is not None:
            log.info("blocklist_import_lost_race", source_id=source_id)
            return await asyncio.shield(running)
        feed = self._feeds.get(source.name) if source.managed == source.name else None
        content = None if feed is None else feed()
        if feed is not None and content is None:
            return ImportOutcome(FAILED, error=f"{source.name}: nothing received yet")
        task = asyncio.create_task(
            self._importer.import_source(source, content), name=f"import-{source_id}"
        )
        self._running[source_id] = task
        task.add_done_callback(lambda _t: self._running.pop(source_id, None))
        return await asyncio.shield(task)

    async def import_all(self) -> list[tuple[int, ImportOutcome]]:
        """Import every enabled source, one after the other (fail2ban is single-threaded)."""
        return [
            (source.id, await self.import_source(source.id))
            for source in await self._sources.all()
            if source.enabled and source.managed != source.name  # feeds import themselves
        ]

    async def import_due(self, default_interval: float) -> list[tuple[int, ImportOutcome]]:
        """The scheduled run: import the enabled sources whose own interval has passed.

        A source without an interval of its own follows the task's; the task then runs
        often enough for the shortest one. Conditional GET keeps unchanged polls cheap.
        """
        now = self._clock()
        due = [
            source
            for source in await self._sources.all()
            if source.enabled
            and source.managed != source.name
            and now - source.last_run >= (source.interval or default_interval) - 1
        ]
        return [(source.id, await self.import_source(source.id)) for source in due]

    async def shortest_interval(self) -> int:
        """The smallest interval of an enabled source of its own (0 = none)."""
        own = [s.interval for s in await self._sources.all() if s.enabled and s.interval]
        return min(own, default=0)

    async def preview(self, url: str) -> Preview:
        return await self._importer.preview(self._check_url(url))

    async def runs(self, source_id: int, page: int, page_size: int) -> tuple[list[RunRow], int]:
        """ListImportRuns: one page (from 1; ranges checked at the D-Bus edge)."""
        if source_id:
            await self._get(source_id)
        return await self._runs.page(source_id, (page - 1) * page_size, page_size)
