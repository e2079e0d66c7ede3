"""Geo answers for D-Bus callers and tasks: MMDB + an in-memory cache, sqlite behind it.

Why it is shaped this way:

- The hot path never touches sqlite: an MMDB lookup (C extension) plus a dict hit is
  20-100x faster than an aiosqlite point read, so ``lookup_ips`` answers from memory
  and the MMDB, and ``fields`` (ListBans) is synchronous and memory-only.
- New answers enter memory at once and are written in batches by :meth:`flush` (the
  geo_resolve task, a large backlog, shutdown); ``last_seen`` touches are collected
  the same way and at most once per ``touch_granularity`` per entry, so a panel that
  polls ListBans every few seconds does not rewrite thousands of rows each time.
- Memory is bounded (``max_memory`` entries, about 300 bytes each). While everything
  stored fits, memory mirrors the table; beyond that the table is consulted only
  where the MMDB cannot answer (an HTTP answer may be stored there).
- The HTTP fallback sends banned addresses to a third party and is rate-limited, so
  only the geo_resolve task uses it, never a D-Bus call, and only for addresses the
  MMDB could not answer.
- The cleanup must not delete a row whose entry was touched after the pending
  touches were written: :meth:`delete_stale` decides what memory keeps without
  yielding between the flush and the DELETE, and re-queues such entries as upserts.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import structlog

from bangui_daemon.archive.geo_repo import CacheEntry, GeoCacheRepository
from bangui_daemon.errors import InvalidArgument
from bangui_daemon.events import EventHub, PropertiesChanged
from bangui_daemon.geo.lookup import GeoAnswer as GeoAnswer  # the D-Bus edge shows these
from bangui_daemon.geo.lookup import MmdbResolver, normalise_ip
from bangui_daemon.models import NO_GEO, GeoFields

__all__ = ["MAX_LOOKUP", "GeoFallback", "GeoPropertiesChanged", "GeoService"]

log = structlog.get_logger(__name__)

MAX_LOOKUP: Final = 10_000  # LookupIps limit of the contract
MAX_MEMORY: Final = 200_000  # entries kept in memory (~60 MB at most)
TOUCH_GRANULARITY: Final = 3600  # seconds; retention is counted in days
FLUSH_AT: Final = 20_000  # pending answers that trigger a write from a lookup
RESOLVE_CHUNK: Final = 2000  # MMDB lookups between yields to the event loop
MAX_FALLBACK_PER_RUN: Final = 1500  # 15 requests/min x 100: what ip-api allows a minute


class GeoFallback(Protocol):
    """What the service needs of ``HttpGeoFallback`` (tests pass fakes)."""

    async def resolve(self, ips: Sequence[str]) -> list[GeoAnswer]: ...


@dataclass(frozen=True)
class GeoPropertiesChanged(PropertiesChanged):
    """PropertiesChanged of the Geo interface.

    A subclass because the signal pump keeps one handler per event *type*: the Geo
    interface can register for this one without replacing the core's handler.
    """

    interface: str = "geo"


class GeoService:
    """Geo lookups with a bounded in-memory cache persisted in batches to geo_cache."""

    def __init__(
        self,
        repo: GeoCacheRepository,
        resolver: MmdbResolver,
        fallback: GeoFallback | None,
        clock: Callable[[], float] = time.time,
        *,
        max_memory: int = MAX_MEMORY,
        touch_granularity: int = TOUCH_GRANULARITY,
        flush_at: int = FLUSH_AT,
        hub: EventHub | None = None,
    ) -> None:
        self._repo = repo
        self._resolver = resolver
        self._fallback = fallback
        self._clock = clock
        self._max_memory = max(1, max_memory)
        self._touch_granularity = touch_granularity
        self._flush_at = flush_at
        self._hub = hub
        self._entries: dict[str, CacheEntry] = {}  # oldest first: evicted first
        self._pending: dict[str, CacheEntry] = {}  # answers not yet written
        self._touched: set[str] = set()  # stored entries whose last_seen must move
        self._complete = True  # memory holds every stored entry
        self._count = 0  # rows in geo_cache as of the last write
        self._published = 0
        self._lock = asyncio.Lock()  # flush and delete_stale, one at a time

    # ---- state ------------------------------------------------------------

    @property
    def entries(self) -> int:
        """Rows in the cache table (GetStatus geo_cache_entries, CacheEntries);
        answers not flushed yet are counted once written."""
        return self._count

    @property
    def pending(self) -> int:
        """Answers and touches waiting for :meth:`flush`."""
        return len(self._pending) + len(self._touched)

    async def load(self) -> None:
        """Warm memory with the most recently seen entries (at most ``max_memory``)."""
        self._count = self._published = await self._repo.count()
        rows = await self._repo.recent(self._max_memory)
        self._entries = {e.ip: e for e in reversed(rows)}
        self._complete = self._count <= len(rows)
        log.debug("geo_cache_loaded", entries=self._count, in_memory=len(self._entries))

    def maybe_reload(self) -> bool:
        """Reopen MMDB files that changed (throttled by the resolver)."""
        return self._resolver.maybe_reload()

    # ---- lookups ----------------------------------------------------------

    async def lookup_ip(self, ip: str) -> GeoAnswer:
        """One address; InvalidArgument when malformed."""
        return (await self.lookup_ips([ip]))[0]

    async def lookup_ips(self, ips: Sequence[str]) -> list[GeoAnswer]:
        """Answers in the order asked; at most MAX_LOOKUP addresses, all validated
        before any is looked up. Source ``"cache"`` for a fresh cached answer."""
        if len(ips) > MAX_LOOKUP:
            raise InvalidArgument(f"at most {MAX_LOOKUP} addresses can be looked up at once.")
        known = self._entries
        # A key of the cache is a canonical address already: skip parsing it again.
        keys = [ip if ip in known else normalise_ip(ip) for ip in ips]
        now = self._clock()
        build = self._build()
        out: dict[str, GeoAnswer] = {}
        misses: list[str] = []
        for ip in dict.fromkeys(keys):
            entry = self._entries.get(ip)
            if entry is not None and self._repo.is_fresh(entry, build, now):
                self._touch(entry, now)
                out[ip] = _cached(entry)
            else:
                misses.append(ip)
        for start in range(0, len(misses), RESOLVE_CHUNK):
            if start:
                await asyncio.sleep(0)  # let other callers and the ban watch run
            answers = self._resolver.lookup_many(misses[start : start + RESOLVE_CHUNK])
            build, now = self._resolver.database_build_id(), self._clock()
            stored = await self._stored_for(answers)
            for answer in answers:
                entry = stored.get(answer.ip)
                if entry is not None and self._repo.is_fresh(entry, build, now):
                    self._remember(entry)
                    self._touch(entry, now)
                    out[answer.ip] = _cached(entry)
                else:
                    out[answer.ip] = self._accept(answer, build, now)
        if len(self._pending) >= self._flush_at and not self._lock.locked():
            try:
                await self.flush()
            except Exception as exc:  # the answers stand; the task writes them later
                log.warning("geo_cache_flush_failed", error=str(exc))
        return [out[k] for k in keys]

    def fields(self, ip: str) -> GeoFields:
        """Country/ASN/org for ListBans: memory only, never blocks, never raises.
        A stale entry still answers (better than nothing until it is resolved again)."""
        entry = self._entries.get(ip)
        if entry is None:
            try:
                key = normalise_ip(ip)
            except InvalidArgument:
                return NO_GEO
            entry = self._entries.get(key) if key != ip else None
            if entry is None:
                return NO_GEO
        self._touch(entry, self._clock())
        if not entry.found:
            return NO_GEO
        return GeoFields(country_code=entry.country_code, asn=entry.asn, org=entry.org)

    async def resolve_now(self, ips: Sequence[str]) -> None:
        """Answer and store these addresses at once: a new ban's, before its BanAdded,
        so ListBans (memory) and the archived event (country and ASN are copied from
        geo_cache when it is written) carry them when a client asks on the signal.
        Malformed addresses (fail2ban bans any string) are skipped."""
        keys: list[str] = []
        for ip in ips:
            with contextlib.suppress(InvalidArgument):
                keys.append(normalise_ip(ip))
        if not keys:
            return
        await self.lookup_ips(keys)
        async with self._lock:
            entries = [self._pending.pop(ip) for ip in dict.fromkeys(keys) if ip in self._pending]
            if not entries:
                return
            try:
                self._count += await self._repo.upsert(entries)
            except BaseException:
                self._pending.update({e.ip: e for e in entries if e.ip not in self._pending})
                raise
        self._publish_count()

    # ---- the geo_resolve task ------------------------------------------------

    async def resolve_pending(self, ips: Iterable[str]) -> dict[str, int]:
        """Resolve what is not freshly cached among ``ips`` (banned and recent
        addresses, most important first); ask the HTTP fallback, when configured,
        about addresses the MMDB cannot answer. Malformed addresses are skipped."""
        keys: list[str] = []
        invalid = 0
        for ip in ips:
            try:
                keys.append(normalise_ip(ip))
            except InvalidArgument:
                invalid += 1
        unique = list(dict.fromkeys(keys))
        if not self._complete:
            stored = await self._repo.get_many([ip for ip in unique if ip not in self._entries])
            for hit in stored.values():
                self._remember(hit)
        now, build = self._clock(), self._build()
        cached = resolved = found = 0
        want: list[str] = []
        ask_api: list[str] = []
        for ip in unique:
            entry = self._entries.get(ip)
            if entry is not None and self._repo.is_fresh(entry, build, now):
                cached += 1
                self._touch(entry, now)
                if self._wants_api(entry):
                    ask_api.append(ip)
            else:
                want.append(ip)
        for start in range(0, len(want), RESOLVE_CHUNK):
            if start:
                await asyncio.sleep(0)
            answers = self._resolver.lookup_many(want[start : start + RESOLVE_CHUNK])
            build, now = self._resolver.database_build_id(), self._clock()
            for answer in answers:
                self._accept(answer, build, now)
                resolved += 1
                found += answer.found
                if not answer.found and self._fallback is not None:
                    ask_api.append(answer.ip)
        result = {
            "addresses": len(unique),
            "invalid": invalid,
            "cached": cached,
            "resolved": resolved,
            "found": found,
            "fallback": 0,
            "fallback_failed": 0,
            "fallback_deferred": 0,
        }
        if self._fallback is not None and ask_api:
            result.update(await self._ask_fallback(self._fallback, ask_api))
        return result

    def _wants_api(self, entry: CacheEntry) -> bool:
        return self._fallback is not None and not entry.found and entry.source != "api"

    async def _ask_fallback(self, fallback: GeoFallback, ips: list[str]) -> dict[str, int]:
        batch = ips[:MAX_FALLBACK_PER_RUN]
        answers = await fallback.resolve(batch)
        build, now = self._resolver.database_build_id(), self._clock()
        answered = failed = 0
        for answer in answers:
            if answer.source != "api":
                continue  # not attempted (rate limit): the next run asks again
            self._accept(answer, build, now)
            answered += answer.found
            failed += not answer.found
        return {
            "fallback": answered,
            "fallback_failed": failed,
            "fallback_deferred": len(ips) - answered - failed,
        }

    # ---- persistence ------------------------------------------------------

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

    # ---- internals --------------------------------------------------------

    def _build(self) -> str:
        self._resolver.maybe_reload()
        return self._resolver.database_build_id()

    async def _stored_for(self, answers: Sequence[GeoAnswer]) -> dict[str, CacheEntry]:
        """Stored entries for MMDB negatives that memory does not hold (only when
        memory is incomplete): the table may have an HTTP answer for them."""
        if self._complete:
            return {}
        unknown = [a.ip for a in answers if not a.found and a.ip not in self._entries]
        return await self._repo.get_many(unknown) if unknown else {}

    def _touch(self, entry: CacheEntry, now: float) -> None:
        """Note a use; written at most once per touch_granularity per entry."""
        if now - entry.last_seen < self._touch_granularity:
            return
        if entry.ip in self._pending:
            entry.last_seen = int(now)
        else:
            self._touched.add(entry.ip)

    def _remember(self, entry: CacheEntry) -> None:
        entries = self._entries
        entries.pop(entry.ip, None)  # re-inserted last: evicted last
        entries[entry.ip] = entry
        if len(entries) > self._max_memory:
            del entries[next(iter(entries))]
            self._complete = False

    def _accept(self, answer: GeoAnswer, build: str, now: float) -> GeoAnswer:
        """Cache a fresh answer (memory now, table on flush); return what to serve.

        An MMDB negative does not replace an expired HTTP answer while the fallback
        is configured: the old answer is better than none until the task asks again.
        """
        old = self._entries.get(answer.ip)
        if (
            not answer.found
            and answer.source != "api"
            and old is not None
            and old.found
            and old.source == "api"
            and self._fallback is not None
        ):
            self._touch(old, now)
            return _cached(old)
        intern = sys.intern
        stamp = int(now)
        entry = CacheEntry(
            ip=answer.ip,
            found=answer.found,
            country_code=intern(answer.country_code),
            country_name=intern(answer.country_name),
            asn=intern(answer.asn),
            org=intern(answer.org),
            source=answer.source,
            db_build=intern(build),
            resolved_at=stamp,
            last_seen=max(stamp, old.last_seen) if old is not None else stamp,
        )
        self._remember(entry)
        self._pending[entry.ip] = entry
        self._touched.discard(entry.ip)
        return answer

    def _publish_count(self) -> None:
        if self._hub is not None and self._count != self._published:
            self._published = self._count
            self._hub.publish(GeoPropertiesChanged({"CacheEntries": self._count}))


def _cached(entry: CacheEntry) -> GeoAnswer:
    return GeoAnswer(
        ip=entry.ip,
        country_code=entry.country_code,
        country_name=entry.country_name,
        asn=entry.asn,
        org=entry.org,
        source="cache",
    )
