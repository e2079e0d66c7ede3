"""geo_cache: one row per canonical address text, positive and negative answers.

Why it is shaped this way:

- Writes come in batches (the service collects answers and ``last_seen`` touches in
  memory and flushes them), each batch ONE ``BEGIN IMMEDIATE`` transaction with
  ``executemany``: thousands of rows cost one fsync, and the ban watch never waits
  behind a long series of small transactions.
- ``last_seen`` is what the cleanup task ages out (90 days by default), so an address
  nobody asks about stops costing space, while one that keeps being banned or looked
  up stays (its touches refresh it). Deletes run in short batches, like the history
  purge, so the writer lock is never held long.
- Negative entries must not be final: an address the MMDB does not know may be in the
  next build, and an HTTP fallback failure is often transient. :meth:`is_fresh`
  decides when an entry must be resolved again (see its table).
- ``IN (...)`` lists are chunked below sqlite's older 999-variable limit.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import aiosqlite

from bangui_daemon.archive.db import Archive, Row

__all__ = ["API_TTL", "DAY", "NEGATIVE_TTL", "CacheEntry", "GeoCacheRepository"]

DAY: Final = 86400
NEGATIVE_TTL: Final = DAY  # "api"/"none" negatives: ask again after a day
API_TTL: Final = 30 * DAY  # HTTP answers: no build id tells when they change
CHUNK: Final = 500  # variables per IN (...) list
UPSERT_BATCH: Final = 2000  # answers per transaction (each may update many archived events)
DELETE_BATCH: Final = 5000

_COLUMNS: Final = (
    "ip, found, country_code, country_name, asn, org, source, db_build, resolved_at, last_seen"
)


@dataclass(slots=True)
class CacheEntry:
    """One cached answer. Mutable only in ``last_seen`` (touches move it forward).

    ``source`` is where the answer came from (``"mmdb"``, ``"api"``, ``"none"``),
    ``db_build`` the MMDB build id (``MmdbResolver.database_build_id()``) in effect
    when it was resolved.
    """

    ip: str
    found: bool
    country_code: str
    country_name: str
    asn: str
    org: str
    source: str
    db_build: str
    resolved_at: int
    last_seen: int

    @classmethod
    def from_row(cls, row: Row) -> CacheEntry:
        # Interned: a cache of 100k addresses holds a few hundred distinct countries
        # and organisations, not 100k copies of each.
        intern = sys.intern
        return cls(
            ip=str(row[0]),
            found=bool(row[1]),
            country_code=intern(str(row[2])),
            country_name=intern(str(row[3])),
            asn=intern(str(row[4])),
            org=intern(str(row[5])),
            source=intern(str(row[6])),
            db_build=intern(str(row[7])),
            resolved_at=int(row[8]),
            last_seen=int(row[9]),
        )

    def as_row(self) -> Row:
        return (
            self.ip,
            int(self.found),
            self.country_code,
            self.country_name,
            self.asn,
            self.org,
            self.source,
            self.db_build,
            self.resolved_at,
            self.last_seen,
        )


def _chunks(items: Sequence[str], size: int = CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


class GeoCacheRepository:
    """Reads (reader connection) and batched writes (one transaction each) of geo_cache.

    Addresses must already be canonical (``geo.lookup.normalise_ip``): the history
    queries join ``geo_cache.ip`` to ``ban_events.ip`` by text.
    """

    def __init__(
        self, archive: Archive, *, negative_ttl: int = NEGATIVE_TTL, api_ttl: int = API_TTL
    ) -> None:
        self._archive = archive
        self.negative_ttl = negative_ttl
        self.api_ttl = api_ttl

    def is_fresh(self, entry: CacheEntry, build: str, now: float) -> bool:
        """Whether ``entry`` may still be served; otherwise resolve it again.

        ===========================  ===============================================
        entry                        fresh while
        ===========================  ===============================================
        ``mmdb`` (found or not)      the MMDB build id is unchanged
        ``none`` (no MMDB open)      build unchanged and younger than negative_ttl
        ``api`` found                younger than api_ttl
        ``api`` not found            younger than negative_ttl
        ===========================  ===============================================
        """
        age = now - entry.resolved_at
        if entry.source == "api":
            return age < (self.api_ttl if entry.found else self.negative_ttl)
        if entry.db_build != build:
            return False
        return entry.found or entry.source != "none" or age < self.negative_ttl

    async def upsert(self, entries: Iterable[CacheEntry]) -> int:
        """Insert or replace answers, UPSERT_BATCH per transaction; return how many rows
        are new.

        A new answer also updates every archived event of its address (triggers of
        migration 4), so a large flush is cut into batches that let the ban watch and
        the sync write in between. ``last_seen`` never moves backwards, so a late write
        of an older answer cannot make a touched entry look unused.
        """
        rows = [e.as_row() for e in entries]
        new = 0
        for start in range(0, len(rows), UPSERT_BATCH):
            batch = rows[start : start + UPSERT_BATCH]
            ips = list(dict.fromkeys(str(r[0]) for r in batch))
            async with self._archive.write() as conn:
                existing = 0
                for chunk in _chunks(ips):
                    existing += await _scalar(
                        conn,
                        f"SELECT count(*) FROM geo_cache WHERE ip IN ({_marks(len(chunk))})",
                        chunk,
                    )
                await conn.executemany(
                    f"INSERT INTO geo_cache ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?) "
                    "ON CONFLICT (ip) DO UPDATE SET found = excluded.found, "
                    "country_code = excluded.country_code, "
                    "country_name = excluded.country_name, "
                    "asn = excluded.asn, org = excluded.org, source = excluded.source, "
                    "db_build = excluded.db_build, resolved_at = excluded.resolved_at, "
                    "last_seen = max(geo_cache.last_seen, excluded.last_seen)",
                    batch,
                )
            new += len(ips) - existing
        return new

    async def touch(self, ips: Iterable[str], now: int) -> int:
        """Move ``last_seen`` of existing entries to ``now`` in one transaction; return
        how many rows changed (absent addresses are ignored)."""
        params = [(now, ip, now) for ip in ips]
        if not params:
            return 0
        async with self._archive.write() as conn:
            before = conn.total_changes
            await conn.executemany(
                "UPDATE geo_cache SET last_seen = ? WHERE ip = ? AND last_seen < ?", params
            )
            return int(conn.total_changes - before)

    async def get_many(self, ips: Iterable[str]) -> dict[str, CacheEntry]:
        """The stored entries of these addresses (absent ones are left out)."""
        wanted = list(dict.fromkeys(ips))
        found: dict[str, CacheEntry] = {}
        for chunk in _chunks(wanted):
            rows = await self._archive.fetchall(
                f"SELECT {_COLUMNS} FROM geo_cache WHERE ip IN ({_marks(len(chunk))})", chunk
            )
            for row in rows:
                entry = CacheEntry.from_row(row)
                found[entry.ip] = entry
        return found

    async def recent(self, limit: int) -> list[CacheEntry]:
        """Up to ``limit`` entries, most recently seen first (to warm a bounded cache)."""
        rows = await self._archive.fetchall(
            f"SELECT {_COLUMNS} FROM geo_cache ORDER BY last_seen DESC LIMIT ?", (limit,)
        )
        return [CacheEntry.from_row(r) for r in rows]

    async def count(self) -> int:
        return int(await self._archive.scalar("SELECT count(*) FROM geo_cache") or 0)

    async def delete_stale(self, cutoff: int) -> int:
        """Delete entries last seen before ``cutoff`` in short transactions; return
        the count. An interrupted run is simply continued by the next one."""
        return await self._archive.change_in_batches(
            "DELETE FROM geo_cache WHERE ip IN "
            "(SELECT ip FROM geo_cache WHERE last_seen < ? LIMIT ?)",
            (cutoff,),
            DELETE_BATCH,
        )


async def _scalar(conn: aiosqlite.Connection, sql: str, params: Sequence[object]) -> int:
    async with conn.execute(sql, tuple(params)) as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0
