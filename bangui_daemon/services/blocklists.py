"""Blocklist use-cases: sources CRUD, imports (one at a time per source), previews."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import structlog

from bangui_daemon.archive.import_runs_repo import RunRow
from bangui_daemon.archive.sources_repo import DuplicateName, SourceRow
from bangui_daemon.blocklist.fetch import redact_url
from bangui_daemon.blocklist.importer import Importer, ImportOutcome, Preview
from bangui_daemon.errors import InvalidArgument, NotFound, quote

log = structlog.get_logger(__name__)

MAX_NAME = 100
MAX_URL = 2048
TypedValue = tuple[str, object]  # (D-Bus signature, value)


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise InvalidArgument(f"a source name is 1 to {MAX_NAME} printable characters")
    return name


class BlocklistService:
    """Sources, imports and previews. Source URLs are shown with their credentials
    redacted (`redact_url`); the stored URL keeps them for the download."""

    def __init__(self, importer: Importer, clock: Callable[[], float] = time.time) -> None:
        self._importer = importer
        self._sources = importer.sources
        self._runs = importer.runs
        self._clock = clock
        self._running: dict[int, asyncio.Task[ImportOutcome]] = {}

    def _check_url(self, url: str) -> str:
        """A URL fit to store: short, printable, and one the fetcher can ever download."""
        url = url.strip()
        if len(url) > MAX_URL or not url.isprintable():
            raise InvalidArgument(f"a source URL is at most {MAX_URL} printable characters")
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

    async def add_source(self, name: str, url: str, enabled: bool) -> int:
        name, url = check_name(name), self._check_url(url)
        try:
            source_id = await self._sources.add(name, url, enabled, int(self._clock()))
        except DuplicateName:
            raise InvalidArgument(f"a source named {quote(name)} exists already") from None
        log.info("blocklist_source_added", source_id=source_id, name=name)
        return source_id

    async def update_source(self, source_id: int, changes: Mapping[str, TypedValue]) -> None:
        source = await self._get(source_id)
        expected = {"name": "s", "url": "s", "enabled": "b"}
        for key, (signature, _value) in changes.items():
            if key not in expected:
                raise InvalidArgument(f"unknown change {quote(key)}; known: name, url, enabled")
            if signature != expected[key]:
                raise InvalidArgument(f"{key} must have type {expected[key]}, got {signature}")
        name = check_name(str(changes["name"][1])) if "name" in changes else source.name
        url = self._check_url(str(changes["url"][1])) if "url" in changes else source.url
        enabled = bool(changes["enabled"][1]) if "enabled" in changes else source.enabled
        try:
            await self._sources.update(source_id, name, url, enabled)
        except DuplicateName:
            raise InvalidArgument(f"a source named {quote(name)} exists already") from None

    async def remove_source(self, source_id: int) -> int:
        source = await self._get(source_id)
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
        task = asyncio.create_task(self._importer.import_source(source), name=f"import-{source_id}")
        self._running[source_id] = task
        task.add_done_callback(lambda _t: self._running.pop(source_id, None))
        return await asyncio.shield(task)

    async def import_all(self) -> list[tuple[int, ImportOutcome]]:
        """Import every enabled source, one after the other (fail2ban is single-threaded)."""
        return [
            (source.id, await self.import_source(source.id))
            for source in await self._sources.all()
            if source.enabled
        ]

    async def preview(self, url: str) -> Preview:
        return await self._importer.preview(self._check_url(url))

    async def runs(self, source_id: int, page: int, page_size: int) -> tuple[list[RunRow], int]:
        """ListImportRuns: one page (from 1; ranges checked at the D-Bus edge)."""
        if source_id:
            await self._get(source_id)
        return await self._runs.page(source_id, (page - 1) * page_size, page_size)
