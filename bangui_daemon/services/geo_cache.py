"""The cache of geo answers: a bounded memory in front of the geo_cache table.

Why it is shaped this way:

- The hot path never touches sqlite: a dict hit is 20-100x faster than an aiosqlite
  point read, so lookups answer from memory and ListBans' ``get`` is synchronous.
- New answers enter memory at once and are written in batches by :meth:`flush` (the
  geo_resolve task, a large backlog, shutdown); ``last_seen`` touches are collected
  the same way and at most once per ``touch_granularity`` per entry, so a panel that
  polls ListBans every few seconds does not rewrite thousands of rows each time.
- Memory is bounded (``max_memory`` entries, about 300 bytes each). While everything
  stored fits, memory mirrors the table; beyond that (``complete`` is False) the
  table is consulted where memory has no answer.
- The cleanup must not delete a row whose entry was touched after the pending
  touches were written: :meth:`delete_stale` decides what memory keeps without
  yielding between the flush and the DELETE, and re-queues such entries as upserts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Final

import structlog

from bangui_daemon.archive.geo_repo import CacheEntry, GeoCacheRepository
from bangui_daemon.events import EventHub, PropertiesChanged

log = structlog.get_logger(__name__)

MAX_MEMORY: Final = 200_000  # entries kept in memory (~60 MB at most)
TOUCH_GRANULARITY: Final = 3600  # seconds; retention is counted in days


class GeoCache:
    """Entries in memory (oldest first: evicted first), answers and touches not yet
    written, and the table's row count, published as the Geo CacheEntries property."""

    def __init__(
        self,
        repo: GeoCacheRepository,
        clock: Callable[[], float],
        *,
        max_memory: int = MAX_MEMORY,
        touch_granularity: int = TOUCH_GRANULARITY,
        hub: EventHub | None = None,
    ) -> None:
        self._repo = repo
        self._clock = clock
        self._max_memory = max(1, max_memory)
        self._touch_granularity = touch_granularity
        self._hub = hub
        self._entries: dict[str, CacheEntry] = {}  # oldest first: evicted first
        self._pending: dict[str, CacheEntry] = {}  # answers not yet written
        self._touched: set[str] = set()  # stored entries whose last_seen must move
        self.complete = True  # memory holds every stored entry
        self._count = 0  # rows in geo_cache as of the last write
        self._published = 0
        self._lock = asyncio.Lock()  # writes (flush, delete_stale), one at a time

    @property
    def entries(self) -> int:
        """Rows in the table; answers not flushed yet are counted once written."""
        return self._count

    @property
    def pending(self) -> int:
        """Answers and touches waiting for :meth:`flush`."""
        return len(self._pending) + len(self._touched)

    @property
    def unwritten(self) -> int:
        """Answers (not touches) waiting for :meth:`flush`."""
        return len(self._pending)

    @property
    def writing(self) -> bool:
        return self._lock.locked()

    def is_fresh(self, entry: CacheEntry, build: str, now: float) -> bool:
        return self._repo.is_fresh(entry, build, now)

    def get(self, ip: str) -> CacheEntry | None:
        """The entry in memory for a canonical address (never the table)."""
        return self._entries.get(ip)

    async def load(self) -> None:
        """Warm memory with the most recently seen entries (at most ``max_memory``)."""
        self._count = self._published = await self._repo.count()
        rows = await self._repo.recent(self._max_memory)
        self._entries = {e.ip: e for e in reversed(rows)}
        self.complete = self._count <= len(rows)
        log.debug("geo_cache_loaded", entries=self._count, in_memory=len(self._entries))

    async def stored(self, ips: Iterable[str]) -> dict[str, CacheEntry]:
        """Table entries of addresses memory does not hold; {} while memory holds
        every stored entry. Memory is left as it is: the caller picks what to keep."""
        if self.complete:
            return {}
        unknown = [ip for ip in ips if ip not in self._entries]
        return await self._repo.get_many(unknown) if unknown else {}

    def touch(self, entry: CacheEntry, now: float) -> None:
        """Note a use; written at most once per touch_granularity per entry."""
        if now - entry.last_seen < self._touch_granularity:
            return
        if entry.ip in self._pending:
            entry.last_seen = int(now)
        else:
            self._touched.add(entry.ip)

    def remember(self, entry: CacheEntry) -> None:
        entries = self._entries
        entries.pop(entry.ip, None)  # re-inserted last: evicted last
        entries[entry.ip] = entry
        if len(entries) > self._max_memory:
            del entries[next(iter(entries))]
            self.complete = False

    def put(self, entry: CacheEntry) -> None:
        """A new answer: in memory now, in the table on the next write."""
        self.remember(entry)
        self._pending[entry.ip] = entry
        self._touched.discard(entry.ip)

    async def write(self, ips: Iterable[str]) -> None:
        """Write the pending answers of these addresses now (one transaction)."""
        async with self._lock:
            entries = [self._pending.pop(ip) for ip in dict.fromkeys(ips) if ip in self._pending]
            if not entries:
                return
            try:
                self._count += await self._repo.upsert(entries)
            except BaseException:
                self._pending.update({e.ip: e for e in entries if e.ip not in self._pending})
                raise
        self._publish_count()

    async def flush(self) -> dict[str, int]:
        """Write pending answers (one transaction) and pending touches (another)."""
        async with self._lock:
            result = await self._flush_locked()
        self._publish_count()
        return result

    async def delete_stale(self, cutoff: int) -> int:
        """Drop entries last seen before ``cutoff`` from the table and from memory,
        after writing pending touches; return how many rows were deleted."""
        async with self._lock:
            await self._flush_locked()
            # From here to the DELETE nothing yields, so memory and table agree.
            now = int(self._clock())
            for ip, entry in list(self._entries.items()):
                if entry.last_seen >= cutoff or ip in self._pending:
                    continue
                if ip in self._touched:  # used during the flush: keep it, rewrite it
                    self._touched.discard(ip)
                    entry.last_seen = now
                    self._pending[ip] = entry
                else:
                    del self._entries[ip]
            deleted = await self._repo.delete_stale(cutoff)
            self._count = await self._repo.count()
        self._publish_count()
        return deleted

    async def _flush_locked(self) -> dict[str, int]:
        pending, self._pending = self._pending, {}
        touched, self._touched = self._touched, set()
        new = 0
        if pending:
            try:
                new = await self._repo.upsert(pending.values())
            except BaseException:
                self._pending = {**pending, **self._pending}
                self._touched |= touched
                raise
            self._count += new
        if touched:
            now = int(self._clock())
            try:
                await self._repo.touch(touched, now)
            except BaseException:
                self._touched |= touched
                raise
            for ip in touched:
                entry = self._entries.get(ip)
                if entry is not None and entry.last_seen < now:
                    entry.last_seen = now
        return {"written": len(pending), "new": new, "touched": len(touched)}

    def _publish_count(self) -> None:
        if self._hub is not None and self._count != self._published:
            self._published = self._count
            self._hub.publish(PropertiesChanged({"CacheEntries": self._count}, "geo"))
