"""geo_cache repository and the geo_cache_cleanup task, against a real temp archive.

Time is injected everywhere (entries carry explicit stamps, the task a fake clock):
nothing sleeps.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from bangui_daemon.archive.db import Archive
from bangui_daemon.archive.geo_repo import (
    API_TTL,
    DAY,
    DELETE_BATCH,
    NEGATIVE_TTL,
    CacheEntry,
    GeoCacheRepository,
)
from bangui_daemon.geo.lookup import MmdbResolver
from bangui_daemon.services.geo import GeoService
from bangui_daemon.tasks.retention import GeoCacheCleanup

DATA = Path(__file__).resolve().parent.parent / "data" / "geoip"
COUNTRY = str(DATA / "GeoLite2-Country-Test.mmdb")
ASN = str(DATA / "GeoLite2-ASN-Test.mmdb")
T0 = 1_800_000_000
BUILD = "country=GeoLite2-Country@1;asn=GeoLite2-ASN@1"


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def entry(
    ip: str,
    *,
    found: bool = True,
    source: str = "mmdb",
    build: str = BUILD,
    resolved_at: int = T0,
    last_seen: int | None = None,
    country: str = "SE",
) -> CacheEntry:
    return CacheEntry(
        ip=ip,
        found=found,
        country_code=country if found else "",
        country_name="Sweden" if found else "",
        asn="AS29518" if found else "",
        org="Bredband2 AB" if found else "",
        source=source,
        db_build=build,
        resolved_at=resolved_at,
        last_seen=resolved_at if last_seen is None else last_seen,
    )


@pytest.fixture
def repo(archive: Archive) -> GeoCacheRepository:
    return GeoCacheRepository(archive)


async def last_seen(archive: Archive, ips: Iterable[str]) -> dict[str, int]:
    rows = await archive.fetchall("SELECT ip, last_seen FROM geo_cache")
    wanted = set(ips)
    return {str(ip): int(ts) for ip, ts in rows if ip in wanted}


async def test_bulk_upsert_stores_positive_and_negative_entries(
    repo: GeoCacheRepository,
) -> None:
    batch = [entry("89.160.20.112"), entry("8.8.8.8", found=False)]
    assert await repo.upsert(batch) == 2
    assert await repo.count() == 2
    stored = await repo.get_many(["8.8.8.8", "89.160.20.112", "1.1.1.1"])
    assert stored == {e.ip: e for e in batch}
    assert stored["8.8.8.8"].found is False

    # The same addresses again: nothing new, answers replaced.
    again = [entry("89.160.20.112", country="DE", resolved_at=T0 + 5), entry("8.8.8.8")]
    assert await repo.upsert(again) == 0
    stored = await repo.get_many(["8.8.8.8", "89.160.20.112"])
    assert stored["89.160.20.112"].country_code == "DE"
    assert stored["8.8.8.8"].found is True
    assert await repo.count() == 2
    assert await repo.upsert([]) == 0


async def test_upsert_never_moves_last_seen_backwards(
    repo: GeoCacheRepository, archive: Archive
) -> None:
    await repo.upsert([entry("1.0.0.1", last_seen=T0 + 100)])
    await repo.upsert([entry("1.0.0.1", resolved_at=T0 + 1)])
    assert await last_seen(archive, ["1.0.0.1"]) == {"1.0.0.1": T0 + 100}


async def test_a_failing_batch_writes_nothing(repo: GeoCacheRepository) -> None:
    bad = entry("1.0.0.2")
    bad.country_code = None  # type: ignore[assignment]  # NOT NULL violation
    with pytest.raises(sqlite3.IntegrityError):
        await repo.upsert([entry("1.0.0.1"), bad])
    assert await repo.count() == 0


async def test_touch_refreshes_last_seen_of_existing_entries_only(
    repo: GeoCacheRepository, archive: Archive
) -> None:
    await repo.upsert([entry("1.0.0.1"), entry("1.0.0.2"), entry("1.0.0.3", last_seen=T0 + 50)])
    assert await repo.touch(["1.0.0.1", "1.0.0.3", "9.9.9.9"], T0 + 10) == 1
    assert await last_seen(archive, ["1.0.0.1", "1.0.0.2", "1.0.0.3"]) == {
        "1.0.0.1": T0 + 10,
        "1.0.0.2": T0,
        "1.0.0.3": T0 + 50,  # never backwards
    }
    assert await repo.touch([], T0) == 0
    assert await repo.count() == 3


async def unresolved(
    repo: GeoCacheRepository,
    ips: Iterable[str],
    *,
    build: str | None = None,
    now: float | None = None,
) -> list[str]:
    """Which of ``ips`` have no entry (with ``build`` and ``now``: no fresh one), in
    the order given, duplicates once."""
    wanted = list(dict.fromkeys(ips))
    stored = await repo.get_many(wanted)
    return [
        ip
        for ip in wanted
        if (entry := stored.get(ip)) is None
        or (build is not None and now is not None and not repo.is_fresh(entry, build, now))
    ]


async def test_unresolved_lists_missing_addresses_in_order(repo: GeoCacheRepository) -> None:
    await repo.upsert([entry("1.0.0.2"), entry("1.0.0.4", found=False)])
    asked = ["1.0.0.3", "1.0.0.2", "1.0.0.1", "1.0.0.3", "1.0.0.4"]
    assert await unresolved(repo, asked) == ["1.0.0.3", "1.0.0.1"]
    assert await unresolved(repo, []) == []


async def test_many_addresses_are_chunked(repo: GeoCacheRepository) -> None:
    ips = [f"10.{i // 256}.{i % 256}.1" for i in range(2100)]
    assert await repo.upsert(entry(ip) for ip in ips) == 2100
    assert len(await repo.get_many(ips)) == 2100
    assert await unresolved(repo, [*ips, "11.0.0.1"]) == ["11.0.0.1"]


@pytest.mark.parametrize(
    ("kind", "fresh_until"),
    [
        ({"source": "api", "found": False}, NEGATIVE_TTL),
        ({"source": "none", "found": False}, NEGATIVE_TTL),
        ({"source": "api", "found": True}, API_TTL),
    ],
)
async def test_entries_expire_after_their_ttl(
    repo: GeoCacheRepository, kind: dict[str, Any], fresh_until: int
) -> None:
    await repo.upsert([entry("1.0.0.1", **kind)])
    stored = (await repo.get_many(["1.0.0.1"]))["1.0.0.1"]
    assert repo.is_fresh(stored, BUILD, T0 + fresh_until - 1)
    assert not repo.is_fresh(stored, BUILD, T0 + fresh_until)
    assert await unresolved(repo, ["1.0.0.1"], build=BUILD, now=T0 + fresh_until - 1) == []
    assert await unresolved(repo, ["1.0.0.1"], build=BUILD, now=T0 + fresh_until) == ["1.0.0.1"]


async def test_mmdb_entries_hold_for_their_build_only(repo: GeoCacheRepository) -> None:
    await repo.upsert([entry("1.0.0.1"), entry("1.0.0.2", found=False)])
    much_later = T0 + 400 * DAY
    assert await unresolved(repo, ["1.0.0.1", "1.0.0.2"], build=BUILD, now=much_later) == []
    other = "country=GeoLite2-Country@2;asn=GeoLite2-ASN@1"
    assert await unresolved(repo, ["1.0.0.1", "1.0.0.2"], build=other, now=T0) == [
        "1.0.0.1",
        "1.0.0.2",
    ]
    # A "none" negative (no database) is stale as soon as a database appears.
    await repo.upsert([entry("1.0.0.3", found=False, source="none", build="absent")])
    assert await unresolved(repo, ["1.0.0.3"], build=BUILD, now=T0) == ["1.0.0.3"]


async def test_delete_stale_deletes_exactly_the_older_entries(
    repo: GeoCacheRepository, archive: Archive
) -> None:
    cutoff = T0
    await repo.upsert(
        [
            entry("1.0.0.1", last_seen=cutoff - 10),
            entry("1.0.0.2", last_seen=cutoff - 1, found=False),
            entry("1.0.0.3", last_seen=cutoff),
            entry("1.0.0.4", last_seen=cutoff + 5),
        ]
    )
    assert await repo.delete_stale(cutoff) == 2
    assert sorted(await last_seen(archive, ["1.0.0.1", "1.0.0.2", "1.0.0.3", "1.0.0.4"])) == [
        "1.0.0.3",
        "1.0.0.4",
    ]
    assert await repo.delete_stale(cutoff) == 0


async def test_delete_stale_works_in_batches(repo: GeoCacheRepository) -> None:
    n = DELETE_BATCH * 2 + 7
    await repo.upsert(entry(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(n))
    await repo.upsert([entry("11.0.0.1", last_seen=T0 + 1)])
    assert await repo.delete_stale(T0 + 1) == n
    assert await repo.count() == 1


# ---- the cleanup task, through the service -------------------------------------


@pytest.fixture
def resolver() -> MmdbResolver:
    return MmdbResolver(COUNTRY, ASN)


async def test_cleanup_deletes_entries_older_than_the_retention(
    archive: Archive, repo: GeoCacheRepository, resolver: MmdbResolver
) -> None:
    clock = FakeClock()
    await repo.upsert(
        [
            entry("1.0.0.1", last_seen=T0 - 91 * DAY),
            entry("1.0.0.2", last_seen=T0 - 90 * DAY - 1, found=False),
            entry("1.0.0.3", last_seen=T0 - 90 * DAY),
            entry("1.0.0.4", last_seen=T0 - DAY),
        ]
    )
    service = GeoService(repo, resolver, None, clock)
    await service.load()
    task = GeoCacheCleanup(service, lambda: 90, clock)
    with capture_logs() as logs:
        result = await task.run()
    assert result["deleted"] == 2
    assert result["cutoff"] == T0 - 90 * DAY
    assert result["entries"] == 2 == service.entries
    assert [(e["event"], e["log_level"], e["deleted"]) for e in logs] == [
        ("geo_cache_cleanup_complete", "info", 2)
    ]
    assert sorted(await last_seen(archive, ["1.0.0.1", "1.0.0.2", "1.0.0.3", "1.0.0.4"])) == [
        "1.0.0.3",
        "1.0.0.4",
    ]
    # Memory forgot them too.
    assert service.fields("1.0.0.1").asn == ""
    assert service.fields("1.0.0.4").asn == "AS29518"

    with capture_logs() as logs:
        assert (await task.run())["deleted"] == 0
    assert [(e["event"], e["log_level"]) for e in logs] == [("geo_cache_cleanup_complete", "debug")]


async def test_cleanup_with_zero_retention_keeps_everything(
    repo: GeoCacheRepository, resolver: MmdbResolver
) -> None:
    await repo.upsert([entry("1.0.0.1", last_seen=0)])
    service = GeoService(repo, resolver, None, FakeClock())
    await service.load()
    assert (await GeoCacheCleanup(service, lambda: 0).run())["deleted"] == 0
    assert await repo.count() == 1


async def test_lookups_refresh_last_seen_so_used_entries_survive(
    archive: Archive, repo: GeoCacheRepository, resolver: MmdbResolver
) -> None:
    clock = FakeClock()
    service = GeoService(repo, resolver, None, clock)
    await service.load()
    await service.lookup_ips(["89.160.20.112", "216.160.83.56", "2001:218::1"])
    await service.flush()

    clock.now = T0 + 89 * DAY
    assert (await service.lookup_ip("89.160.20.112")).source == "cache"  # a hit touches
    assert service.fields("2001:218::1").country_code == "JP"  # so does ListBans
    clock.now = T0 + 91 * DAY
    # The touches are still pending in memory: the task writes them before deleting.
    assert service.pending == 2
    result = await GeoCacheCleanup(service, lambda: 90, clock).run()
    assert result["deleted"] == 1
    assert set(await last_seen(archive, ["89.160.20.112", "2001:218::1"])) == {
        "89.160.20.112",
        "2001:218::1",
    }
    assert await unresolved(repo, ["216.160.83.56"]) == ["216.160.83.56"]
    # The deleted address comes back resolved afresh.
    assert (await service.lookup_ip("216.160.83.56")).source == "mmdb"


class TouchDuringFlush(GeoCacheRepository):
    """Uses an entry while the flush of touches is in progress (an await away)."""

    service: GeoService
    ip = ""

    async def touch(self, ips: Iterable[str], now: int) -> int:
        if self.ip:
            self.service.fields(self.ip)
        return await super().touch(ips, now)


async def test_an_entry_used_during_the_cleanup_flush_is_not_lost(
    archive: Archive, resolver: MmdbResolver
) -> None:
    clock = FakeClock()
    repo = TouchDuringFlush(archive)
    service = GeoService(repo, resolver, None, clock)
    repo.service = service
    await service.load()
    await service.lookup_ips(["89.160.20.112", "216.160.83.56"])
    await service.flush()

    clock.now = T0 + 91 * DAY
    service.fields("216.160.83.56")  # a pending touch, so the flush calls touch()
    repo.ip = "89.160.20.112"  # ... during which this one is used
    assert await GeoCacheCleanup(service, lambda: 90, clock).run() == {
        "deleted": 1,  # 89.160.20.112: its row was old; it is written again
        "cutoff": T0 + DAY,
        "retention_days": 90,
        "entries": 1,
    }
    repo.ip = ""
    await service.flush()
    assert await last_seen(archive, ["89.160.20.112", "216.160.83.56"]) == {
        "89.160.20.112": T0 + 91 * DAY,
        "216.160.83.56": T0 + 91 * DAY,
    }
    assert service.entries == 2
