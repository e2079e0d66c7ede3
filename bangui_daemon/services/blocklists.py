"""Blocklist use-cases: sources CRUD, imports (one at a time per source), previews."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

import structlog

from bangui_daemon.archive.import_runs_repo import RunRow
from bangui_daemon.archive.sources_repo import DuplicateName, SourceRow
from bangui_daemon.blocklist.importer import FAILED, Importer, ImportOutcome, Preview
from bangui_daemon.errors import InvalidArgument, NotFound

log = structlog.get_logger(__name__)

MAX_NAME = 100
MAX_URL = 2048
MAX_PAGE_SIZE = 1000
SCHEMES = ("http", "https", "file")
TypedValue = tuple[str, object]  # (D-Bus signature, value)
Feed = Callable[[], Sequence[bytes] | None]
"""The current content of a source fed by another part of the daemon (CrowdSec);
None until the feed knows it (an empty content would unban everything it listed)."""


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise InvalidArgument(f"a source name is 1 to {MAX_NAME} printable characters")
    return name


def check_url(url: str) -> str:
    """Accept http(s) URLs with a host, and file:// URLs (the importer checks the path)."""
    url = url.strip()
    if len(url) > MAX_URL or not url.isprintable():
        raise InvalidArgument(f"a source URL is at most {MAX_URL} printable characters")
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise InvalidArgument("a source URL must be http://, https:// or file://")
    if parts.scheme != "file" and not parts.hostname:
        raise InvalidArgument("a source URL needs a host name")
    if parts.scheme == "file" and not parts.path.startswith("/"):
        raise InvalidArgument("a file:// source needs an absolute path")
    return url


class BlocklistService:
    def __init__(self, importer: Importer, clock: Callable[[], float] = time.time) -> None:
        self._importer = importer
        self._sources = importer.sources
        self._runs = importer.runs
        self._clock = clock
        self._running: dict[int, asyncio.Task[ImportOutcome]] = {}
        self._feeds: dict[str, Feed] = {}  # source name -> its content

    async def register_feed(self, name: str, url: str, content: Feed) -> int:
        """Make the source `name` (created when missing) take its content from `content`.

        A feed is managed by its section of the config: D-Bus callers cannot rename,
        repoint or remove it, and its imports never download anything. An admin's own
        source of that name is never taken over.
        """
        owned = await self._importer.feed_source_id(name)
        for source in await self._sources.all():
            if source.name == name and source.id != owned:
                raise InvalidArgument(
                    f"a source named {name!r} exists already; rename it to use [{name}]"
                )
        self._feeds[name] = content
        if owned is not None and await self._sources.get(owned) is not None:
            await self._sources.update(owned, name, url, True)
            return owned
        source_id = await self._sources.add(name, url, True, int(self._clock()))
        await self._importer.set_feed_source_id(name, source_id)
        log.info("blocklist_source_added", source_id=source_id, name=name, feed=True)
        return source_id

    async def import_feed(self, name: str) -> ImportOutcome:
        source_id = await self._importer.feed_source_id(name)
        if source_id is None or name not in self._feeds:
            raise NotFound(f"there is no blocklist feed named {name!r}")
        return await self.import_source(source_id)

    async def remove_orphan_feed(self, name: str) -> None:
        """Remove the source of a feed whose config section is gone (unbans what only it
        listed), so turning CrowdSec off leaves none of its bans behind."""
        owned = await self._importer.feed_source_id(name)
        source = None if owned is None else await self._sources.get(owned)
        if source is not None and name not in self._feeds:
            await self._importer.remove_source(source)
            log.info("blocklist_feed_removed", source_id=source.id, name=name)

    def _refuse_feed(self, source: SourceRow) -> None:
        if source.name in self._feeds:
            raise InvalidArgument(
                f"the source {source.name!r} is managed by the [{source.name}] section of the "
                "config; change it there"
            )

    async def list_sources(self) -> list[SourceRow]:
        return await self._sources.all()

    async def _get(self, source_id: int) -> SourceRow:
        source = await self._sources.get(source_id)
        if source is None:
            raise NotFound(f"there is no blocklist source with id {source_id}")
        return source

    async def add_source(self, name: str, url: str, enabled: bool) -> int:
        name, url = check_name(name), check_url(url)
        if name in self._feeds:
            raise InvalidArgument(f"the source name {name!r} is reserved for its config section")
        try:
            source_id = await self._sources.add(name, url, enabled, int(self._clock()))
        except DuplicateName:
            raise InvalidArgument(f"a source named {name!r} exists already") from None
        log.info("blocklist_source_added", source_id=source_id, name=name)
        return source_id

    async def update_source(self, source_id: int, changes: Mapping[str, TypedValue]) -> None:
        source = await self._get(source_id)
        self._refuse_feed(source)
        expected = {"name": "s", "url": "s", "enabled": "b"}
        for key, (signature, _value) in changes.items():
            if key not in expected:
                raise InvalidArgument(f"unknown change {key[:40]!r}; known: name, url, enabled")
            if signature != expected[key]:
                raise InvalidArgument(f"{key} must have type {expected[key]}, got {signature}")
        name = check_name(str(changes["name"][1])) if "name" in changes else source.name
        if name in self._feeds:
            raise InvalidArgument(f"the source name {name!r} is reserved for its config section")
        url = check_url(str(changes["url"][1])) if "url" in changes else source.url
        enabled = bool(changes["enabled"][1]) if "enabled" in changes else source.enabled
        try:
            await self._sources.update(source_id, name, url, enabled)
        except DuplicateName:
            raise InvalidArgument(f"a source named {name!r} exists already") from None

    async def remove_source(self, source_id: int) -> int:
        source = await self._get(source_id)
        self._refuse_feed(source)
        running = self._running.get(source_id)
        if running is not None:
            await asyncio.shield(running)
        return await self._importer.remove_source(source)

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
        feed = self._feeds.get(source.name)
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
            if source.enabled and source.name not in self._feeds  # feeds import themselves
        ]

    async def preview(self, url: str) -> Preview:
        return await self._importer.preview(check_url(url))

    async def runs(self, source_id: int, page: int, page_size: int) -> tuple[list[RunRow], int]:
        if page < 1:
            raise InvalidArgument("page starts at 1")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size must be from 1 to {MAX_PAGE_SIZE}")
        if source_id:
            await self._get(source_id)
        return await self._runs.page(source_id, (page - 1) * page_size, page_size)
