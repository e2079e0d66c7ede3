"""GeoService, the geo_resolve task and the Geo D-Bus interface, against a real temp
archive and MaxMind's test MMDBs (answers from tests/data/geoip/README.md).

Time is injected (a fake clock); the resolver re-checks files on every lookup
(check_interval=0) so a replaced file is seen without waiting.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import DBusError

from bangui_daemon.archive.db import Archive
from bangui_daemon.archive.geo_repo import DAY, GeoCacheRepository
from bangui_daemon.dbus.geo import GeoInterface
from bangui_daemon.errors import InvalidArgument
from bangui_daemon.events import Event, EventHub, PropertiesChanged
from bangui_daemon.geo.lookup import GeoAnswer, MmdbResolver
from bangui_daemon.models import NO_GEO, GeoFields
from bangui_daemon.services.geo import MAX_LOOKUP, GeoService
from bangui_daemon.tasks.geo_resolve import GeoResolve

DATA = Path(__file__).resolve().parent.parent / "data" / "geoip"
COUNTRY = str(DATA / "GeoLite2-Country-Test.mmdb")
CITY = str(DATA / "GeoIP2-City-Test.mmdb")
ASN = str(DATA / "GeoLite2-ASN-Test.mmdb")
T0 = 1_800_000_000

SE = ("SE", "Sweden", "AS29518", "Bredband2 AB")
US = ("US", "United States", "AS209", "")
JP = ("JP", "Japan", "", "")
NOTHING = ("", "", "", "")


def fields(a: GeoAnswer) -> tuple[str, str, str, str]:
    return (a.country_code, a.country_name, a.asn, a.org)


class FakeClock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


class FakeFallback:
    """Answers like HttpGeoFallback: ``answers`` by address, the rest "fail"
    (source api, not found); addresses in ``defer`` are not attempted."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.answers: dict[str, GeoAnswer] = {}
        self.defer: set[str] = set()

    async def resolve(self, ips: Sequence[str]) -> list[GeoAnswer]:
        self.calls.append(list(ips))
        return [
            GeoAnswer(ip=ip, source="none")
            if ip in self.defer
            else self.answers.get(ip, GeoAnswer(ip=ip, source="api"))
            for ip in ips
        ]


@pytest.fixture
def repo(archive: Archive) -> GeoCacheRepository:
    return GeoCacheRepository(archive)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def resolver() -> Iterator[MmdbResolver]:
    with MmdbResolver(COUNTRY, ASN, check_interval=0) as r:
        yield r


@pytest.fixture
async def service(repo: GeoCacheRepository, resolver: MmdbResolver, clock: FakeClock) -> GeoService:
    s = GeoService(repo, resolver, None, clock)
    await s.load()
    return s


# ---- lookups ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("89.160.20.112", SE),
        ("216.160.83.56", US),
        ("2001:218::1", JP),
        ("8.8.8.8", NOTHING),
    ],
)
async def test_second_lookup_is_answered_from_the_cache(
    service: GeoService, ip: str, expected: tuple[str, str, str, str]
) -> None:
    first = await service.lookup_ip(ip)
    assert (fields(first), first.source) == (expected, "mmdb")
    second = await service.lookup_ip(ip)
    assert (second.ip, fields(second), second.source) == (ip, expected, "cache")


async def test_malformed_addresses_are_refused_before_any_work(service: GeoService) -> None:
    with pytest.raises(InvalidArgument):
        await service.lookup_ip("300.1.1.1")
    with pytest.raises(InvalidArgument):
        await service.lookup_ips(["89.160.20.112", "not an ip"])
    assert service.pending == 0
    assert service.fields("89.160.20.112") == NO_GEO


async def test_lookup_ips_keeps_order_and_canonicalises(service: GeoService) -> None:
    await service.lookup_ip("216.160.83.56")
    asked = ["8.8.8.8", "216.160.83.56", "2001:0218:0000::1", "89.160.20.112", "8.8.8.8"]
    answers = await service.lookup_ips(asked)
    assert [(a.ip, a.country_code, a.source) for a in answers] == [
        ("8.8.8.8", "", "mmdb"),
        ("216.160.83.56", "US", "cache"),
        ("2001:218::1", "JP", "mmdb"),
        ("89.160.20.112", "SE", "mmdb"),
        ("8.8.8.8", "", "mmdb"),
    ]
    mapped = await service.lookup_ips(["::ffff:89.160.20.112", "::FFFF:5aa0:1470"])
    assert [a.ip for a in mapped] == ["::ffff:89.160.20.112", "::ffff:90.160.20.112"]
    assert await service.lookup_ips([]) == []


async def test_lookup_ips_refuses_more_than_the_limit(service: GeoService) -> None:
    many = [f"10.0.{i // 256}.{i % 256}" for i in range(MAX_LOOKUP)]
    assert len(await service.lookup_ips(many)) == MAX_LOOKUP
    with pytest.raises(InvalidArgument, match="at most 10000"):
        await service.lookup_ips([*many, "10.200.0.1"])


async def test_fields_come_from_memory_only(service: GeoService) -> None:
    assert service.fields("89.160.20.112") == NO_GEO  # never resolved: not looked up here
    assert service.pending == 0
    await service.lookup_ips(["89.160.20.112", "2001:218::1", "8.8.8.8"])
    assert service.fields("89.160.20.112") == GeoFields("SE", "AS29518", "Bredband2 AB")
    assert service.fields("2001:0218::0001") == GeoFields("JP", "", "")
    assert service.fields("8.8.8.8") == NO_GEO
    assert service.fields("garbage") == NO_GEO


async def test_answers_are_written_in_batches_and_survive_a_restart(
    service: GeoService, repo: GeoCacheRepository, resolver: MmdbResolver, clock: FakeClock
) -> None:
    await service.lookup_ips(["89.160.20.112", "8.8.8.8"])
    assert await repo.count() == 0  # in memory until the flush
    assert service.entries == 0
    assert await service.flush() == {"written": 2, "new": 2, "touched": 0}
    assert await repo.count() == 2 == service.entries
    stored = await repo.get_many(["89.160.20.112", "8.8.8.8"])
    assert stored["8.8.8.8"].found is False
    assert stored["89.160.20.112"].db_build == resolver.database_build_id()

    restarted = GeoService(repo, resolver, None, clock)
    await restarted.load()
    assert restarted.entries == 2
    assert restarted.fields("89.160.20.112").country_code == "SE"
    assert (await restarted.lookup_ip("8.8.8.8")).source == "cache"


async def test_a_large_backlog_is_flushed_by_the_lookup(
    repo: GeoCacheRepository, resolver: MmdbResolver, clock: FakeClock
) -> None:
    service = GeoService(repo, resolver, None, clock, flush_at=3)
    await service.load()
    await service.lookup_ips(["1.0.0.1", "1.0.0.2"])
    assert await repo.count() == 0
    await service.lookup_ips(["1.0.0.3"])
    assert await repo.count() == 3


async def test_negative_entries_expire(
    repo: GeoCacheRepository, clock: FakeClock, tmp_path: Path
) -> None:
    with MmdbResolver("", "", check_interval=0) as none:
        service = GeoService(repo, none, None, clock)
        await service.load()
        assert (await service.lookup_ip("89.160.20.112")).source == "none"
        clock.now += DAY - 1
        assert (await service.lookup_ip("89.160.20.112")).source == "cache"
        clock.now += 1
        assert (await service.lookup_ip("89.160.20.112")).source == "none"


async def test_no_mmdb_gives_empty_fields(
    repo: GeoCacheRepository, clock: FakeClock, tmp_path: Path
) -> None:
    with MmdbResolver(str(tmp_path / "absent.mmdb"), "", check_interval=0) as none:
        service = GeoService(repo, none, None, clock)
        await service.load()
        answer = await service.lookup_ip("89.160.20.112")
        assert (fields(answer), answer.source) == (NOTHING, "none")
        assert service.fields("89.160.20.112") == NO_GEO
        result = await GeoResolve(service, _addresses(["89.160.20.112", "1.0.0.1"])).run()
        assert (result["resolved"], result["cached"]) == (1, 1)
        assert service.entries == 2

        # Installing a database makes the "none" negatives stale at once.
        shutil.copyfile(COUNTRY, tmp_path / "absent.mmdb")
        answer = await service.lookup_ip("89.160.20.112")
        assert (answer.country_code, answer.source) == ("SE", "mmdb")


async def test_replacing_the_mmdb_changes_answers_without_restart(
    repo: GeoCacheRepository, clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "country.mmdb"
    shutil.copyfile(COUNTRY, path)
    with MmdbResolver(str(path), "", check_interval=0) as resolver:
        service = GeoService(repo, resolver, None, clock)
        await service.load()
        asked = ["175.16.199.1", "214.78.0.1"]
        assert [a.country_code for a in await service.lookup_ips(asked)] == ["", "US"]
        assert {a.source for a in await service.lookup_ips(asked)} == {"cache"}
        await service.flush()

        staging = tmp_path / "country.mmdb.tmp"
        shutil.copyfile(CITY, staging)
        os.replace(staging, path)
        answers = await service.lookup_ips(asked)
        assert [(a.country_code, a.source) for a in answers] == [("CN", "mmdb"), ("", "mmdb")]
        assert service.fields("175.16.199.1").country_code == "CN"
        await service.flush()
        stored = await repo.get_many(asked)
        assert stored["175.16.199.1"].country_code == "CN"
        assert stored["175.16.199.1"].db_build.startswith("country=GeoIP2-City@")


async def test_memory_is_bounded_and_the_table_still_answers(
    repo: GeoCacheRepository, resolver: MmdbResolver, clock: FakeClock
) -> None:
    fallback = FakeFallback()
    fallback.answers["8.8.8.8"] = GeoAnswer("8.8.8.8", "US", "United States", "AS15169", "G", "api")
    first = GeoService(repo, resolver, fallback, clock)
    await first.load()
    await first.resolve_pending(["8.8.8.8"])
    await first.flush()
    clock.now += 10
    await first.lookup_ips(["89.160.20.112", "216.160.83.56"])
    await first.flush()

    small = GeoService(repo, resolver, None, clock, max_memory=2)
    await small.load()
    assert small.entries == 3
    # 8.8.8.8 (seen longest ago) did not fit; the MMDB cannot answer it, the table can.
    assert small.fields("8.8.8.8") == NO_GEO
    answer = await small.lookup_ip("8.8.8.8")
    assert (answer.asn, answer.source) == ("AS15169", "cache")
    assert small.fields("8.8.8.8").asn == "AS15169"


# ---- the geo_resolve task and the HTTP fallback ------------------------------------


def _addresses(ips: list[str]) -> Callable[[], Awaitable[list[str]]]:
    async def get() -> list[str]:
        return list(ips)

    return get


async def test_geo_resolve_resolves_what_is_not_cached_and_flushes(
    service: GeoService, repo: GeoCacheRepository
) -> None:
    await service.lookup_ip("89.160.20.112")
    banned = ["89.160.20.112", "216.160.83.56", "8.8.8.8", "bogus", "216.160.83.56"]
    result = await GeoResolve(service, _addresses(banned)).run()
    assert result["addresses"] == 3
    assert result["invalid"] == 1
    assert result["cached"] == 1
    assert result["resolved"] == 2
    assert result["found"] == 1
    assert result["fallback"] == 0
    assert result["written"] == 3
    assert result["entries"] == 3 == await repo.count()
    again = await GeoResolve(service, _addresses(banned)).run()
    assert (again["cached"], again["resolved"], again["written"]) == (3, 0, 0)


async def test_fallback_is_used_only_by_the_task_for_mmdb_negatives(
    repo: GeoCacheRepository, resolver: MmdbResolver, clock: FakeClock
) -> None:
    fallback = FakeFallback()
    fallback.answers["8.8.8.8"] = GeoAnswer(
        "8.8.8.8", "US", "United States", "AS15169", "Google LLC", "api"
    )
    service = GeoService(repo, resolver, fallback, clock)
    await service.load()
    assert (await service.lookup_ip("8.8.8.8")).source == "mmdb"
    assert fallback.calls == []  # never from a lookup

    task = GeoResolve(service, _addresses(["89.160.20.112", "8.8.8.8", "1.1.1.1"]))
    result = await task.run()
    assert fallback.calls == [["8.8.8.8", "1.1.1.1"]]
    assert (result["fallback"], result["fallback_failed"]) == (1, 1)
    answer = await service.lookup_ip("8.8.8.8")
    assert (answer.asn, answer.org, answer.source) == ("AS15169", "Google LLC", "cache")
    assert service.fields("8.8.8.8") == GeoFields("US", "AS15169", "Google LLC")

    # The failed one is a negative for a day, then asked again; answers are kept.
    await task.run()
    assert fallback.calls[1:] == []
    clock.now += DAY
    await task.run()
    assert fallback.calls[1:] == [["1.1.1.1"]]
    assert (await repo.get_many(["8.8.8.8"]))["8.8.8.8"].source == "api"


async def test_addresses_the_fallback_did_not_attempt_are_asked_next_time(
    repo: GeoCacheRepository, resolver: MmdbResolver, clock: FakeClock
) -> None:
    fallback = FakeFallback()
    fallback.defer.add("8.8.8.8")
    service = GeoService(repo, resolver, fallback, clock)
    await service.load()
    task = GeoResolve(service, _addresses(["8.8.8.8"]))
    assert (await task.run())["fallback_deferred"] == 1
    fallback.defer.clear()
    fallback.answers["8.8.8.8"] = GeoAnswer("8.8.8.8", "US", asn="AS15169", source="api")
    assert (await task.run())["fallback"] == 1
    assert fallback.calls == [["8.8.8.8"], ["8.8.8.8"]]
    assert service.fields("8.8.8.8").asn == "AS15169"


async def test_cache_entries_changes_are_published(
    repo: GeoCacheRepository, resolver: MmdbResolver, clock: FakeClock
) -> None:
    hub = EventHub()
    seen: list[Event] = []
    hub.subscribe(seen.append)
    service = GeoService(repo, resolver, None, clock, hub=hub)
    await service.load()
    await service.lookup_ips(["89.160.20.112", "8.8.8.8"])
    await service.flush()
    await service.flush()  # unchanged: nothing published
    assert seen == [PropertiesChanged({"CacheEntries": 2}, "geo")]
    assert seen[0].interface == "geo"  # type: ignore[union-attr]


# ---- the D-Bus interface ----------------------------------------------------------


async def call(iface: GeoInterface, member: str, *args: object) -> Any:
    """Run an exported method as the bus would: dbus-fast's wrapper discards the
    return value, the handler it wraps (the shim's, with error mapping) keeps it."""
    handler = getattr(type(iface), member).__wrapped__
    return await handler(iface, *args)


async def test_geo_interface_shapes_answers(service: GeoService) -> None:
    iface = GeoInterface(service)
    one = await call(iface, "lookup_ip", "89.160.20.112")
    assert {k: v.signature for k, v in one.items()} == dict.fromkeys(
        ("ip", "country_code", "country_name", "asn", "org", "source"), "s"
    )
    assert {k: v.value for k, v in one.items()} == {
        "ip": "89.160.20.112",
        "country_code": "SE",
        "country_name": "Sweden",
        "asn": "AS29518",
        "org": "Bredband2 AB",
        "source": "mmdb",
    }
    many = await call(iface, "lookup_ips", ["8.8.8.8", "89.160.20.112"])
    assert [(r["ip"].value, r["source"].value) for r in many] == [
        ("8.8.8.8", "mmdb"),
        ("89.160.20.112", "cache"),
    ]
    with pytest.raises(DBusError) as caught:
        await call(iface, "lookup_ip", "1.2.3")
    assert caught.value.type == "org.bangui.Daemon1.Error.InvalidArgument"
    await service.flush()
    entries: object = iface.cache_entries  # dbus-fast makes the getter a property
    assert entries == 2
    intro = iface.introspect()
    assert [(m.name, m.in_signature, m.out_signature) for m in intro.methods] == [
        ("LookupIp", "s", "a{sv}"),
        ("LookupIps", "as", "aa{sv}"),
    ]
    assert [(p.name, p.signature) for p in intro.properties] == [("CacheEntries", "x")]
