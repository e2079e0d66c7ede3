"""Geo answers for D-Bus callers and tasks: the MMDB, the cache (services/geo_cache.py)
and, for the geo_resolve task only, the HTTP fallback.

Why it is shaped this way:

- The hot path never touches sqlite: an MMDB lookup (C extension) plus a hit in the
  cache's memory, so ``lookup_ips`` answers from memory and the MMDB, and ``fields``
  (ListBans) is synchronous and memory-only. Where the cache's memory is incomplete,
  the table is consulted only where the MMDB cannot answer (an HTTP answer may be
  stored there).
- The HTTP fallback sends banned addresses to a third party and is rate-limited, so
  only the geo_resolve task uses it, never a D-Bus call, and only for addresses the
  MMDB could not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final, Protocol

import structlog

from bangui_daemon.archive.geo_repo import CacheEntry, GeoCacheRepository
from bangui_daemon.errors import InvalidArgument
from bangui_daemon.events import EventHub
from bangui_daemon.geo.lookup import GeoAnswer as GeoAnswer  # the D-Bus edge shows these
from bangui_daemon.geo.lookup import MmdbResolver, normalise_ip
from bangui_daemon.models import NO_GEO, GeoFields
from bangui_daemon.services.geo_cache import MAX_MEMORY, TOUCH_GRANULARITY, GeoCache

__all__ = ["MAX_LOOKUP", "GeoFallback", "GeoService"]

log = structlog.get_logger(__name__)

MAX_LOOKUP: Final = 10_000  # LookupIps limit of the contract
FLUSH_AT: Final = 20_000  # pending answers that trigger a write from a lookup
RESOLVE_CHUNK: Final = 2000  # MMDB lookups between yields to the event loop
MAX_FALLBACK_PER_RUN: Final = 1500  # 15 requests/min x 100: what ip-api allows a minute


class GeoFallback(Protocol):
    """What the service needs of ``HttpGeoFallback`` (tests pass fakes)."""

    async def resolve(self, ips: Sequence[str]) -> list[GeoAnswer]: ...


class GeoService:
    """Geo lookups: fresh cached answers first, the MMDB for the rest."""

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
        self._resolver = resolver
        self._fallback = fallback
        self._clock = clock
        self._flush_at = flush_at
        self._cache = GeoCache(
            repo, clock, max_memory=max_memory, touch_granularity=touch_granularity, hub=hub
        )

    # ---- state ------------------------------------------------------------

    @property
    def entries(self) -> int:
        """Rows in the cache table (GetStatus geo_cache_entries, CacheEntries);
        answers not flushed yet are counted once written."""
        return self._cache.entries

    @property
    def pending(self) -> int:
        """Answers and touches waiting for :meth:`flush`."""
        return self._cache.pending

    async def load(self) -> None:
        """Warm the cache's memory from the table."""
        await self._cache.load()

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
        cache = self._cache
        # A key of the cache is a canonical address already: skip parsing it again.
        keys = [ip if cache.get(ip) is not None else normalise_ip(ip) for ip in ips]
        now = self._clock()
        build = self._build()
        out: dict[str, GeoAnswer] = {}
        misses: list[str] = []
        for ip in dict.fromkeys(keys):
            entry = cache.get(ip)
            if entry is not None and cache.is_fresh(entry, build, now):
                cache.touch(entry, now)
                out[ip] = _cached(entry)
            else:
                misses.append(ip)
        for start in range(0, len(misses), RESOLVE_CHUNK):
            if start:
                await asyncio.sleep(0)  # let other callers and the ban watch run
            answers = self._resolver.lookup_many(misses[start : start + RESOLVE_CHUNK])
            build, now = self._resolver.database_build_id(), self._clock()
            # MMDB negatives memory does not hold: the table may have an HTTP answer
            stored = await cache.stored(a.ip for a in answers if not a.found)
            for answer in answers:
                entry = stored.get(answer.ip)
                if entry is not None and cache.is_fresh(entry, build, now):
                    cache.remember(entry)
                    cache.touch(entry, now)
                    out[answer.ip] = _cached(entry)
                else:
                    out[answer.ip] = self._accept(answer, build, now)
        if cache.unwritten >= self._flush_at and not cache.writing:
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - the answers stand; the task writes them later
                log.warning("geo_cache_flush_failed", error=str(exc))
        return [out[k] for k in keys]

    def fields(self, ip: str) -> GeoFields:
        """Country/ASN/org for ListBans: memory only, never blocks, never raises.
        A stale entry still answers (better than nothing until it is resolved again)."""
        entry = self._cache.get(ip)
        if entry is None:
            try:
                key = normalise_ip(ip)
            except InvalidArgument:
                return NO_GEO
            entry = self._cache.get(key) if key != ip else None
            if entry is None:
                return NO_GEO
        self._cache.touch(entry, self._clock())
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
        await self._cache.write(keys)

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
        cache = self._cache
        for hit in (await cache.stored(unique)).values():
            cache.remember(hit)
        now, build = self._clock(), self._build()
        cached = resolved = found = 0
        want: list[str] = []
        ask_api: list[str] = []
        for ip in unique:
            entry = cache.get(ip)
            if entry is not None and cache.is_fresh(entry, build, now):
                cached += 1
                cache.touch(entry, now)
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
        """Write pending answers and touches (see GeoCache.flush)."""
        return await self._cache.flush()

    async def delete_stale(self, cutoff: int) -> int:
        """Drop entries last seen before ``cutoff`` (see GeoCache.delete_stale)."""
        return await self._cache.delete_stale(cutoff)

    # ---- internals --------------------------------------------------------

    def _build(self) -> str:
        self._resolver.maybe_reload()
        return self._resolver.database_build_id()

    def _accept(self, answer: GeoAnswer, build: str, now: float) -> GeoAnswer:
        """Cache a fresh answer (memory now, table on flush); return what to serve.

        An MMDB negative does not replace an expired HTTP answer while the fallback
        is configured: the old answer is better than none until the task asks again.
        """
        old = self._cache.get(answer.ip)
        if (
            not answer.found
            and answer.source != "api"
            and old is not None
            and old.found
            and old.source == "api"
            and self._fallback is not None
        ):
            self._cache.touch(old, now)
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
        self._cache.put(entry)
        return answer


def _cached(entry: CacheEntry) -> GeoAnswer:
    return GeoAnswer(
        ip=entry.ip,
        country_code=entry.country_code,
        country_name=entry.country_name,
        asn=entry.asn,
        org=entry.org,
        source="cache",
    )
