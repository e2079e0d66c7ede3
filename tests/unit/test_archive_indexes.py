"""The archive's derived structures stay exact: hourly counts and the two ip indexes.

ban_event_hours is kept by triggers, and GetHistory's total is built from it; the
recent and main ip indexes split one address's rows (migration 0004). Every check
here compares against a plain count or scan of ban_events itself.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from bangui_daemon.archive.db import Archive, bundled_migrations
from bangui_daemon.archive.events_repo import EventsRepository, HistoryFilter, LiveEvent
from bangui_daemon.errors import NotEnoughSpace

NOW = 1_800_000_000
HOUR = 3600
JAILS = ("sshd", "nginx", "blocklist-import")


async def hours_match_events(archive: Archive) -> None:
    """The hourly counts equal a GROUP BY over ban_events, hour by hour."""
    want = await archive.fetchall(
        "SELECT (timeofban - (timeofban < 0) * 3599) / 3600, jail, action, origin, count(*) "
        "FROM ban_events GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
    )
    got = await archive.fetchall(
        "SELECT hour, jail, action, origin, events FROM ban_event_hours WHERE events != 0 "
        "ORDER BY 1, 2, 3, 4"
    )
    assert got == want


def random_filter(rng: random.Random) -> HistoryFilter:
    since = rng.choice([None, NOW - rng.randrange(0, 3 * 86400)])
    until = rng.choice([None, NOW - rng.randrange(-HOUR, 2 * 86400)])
    return HistoryFilter(
        since=since,
        until=until,
        jail=rng.choice([None, *JAILS]),
        action=rng.choice([None, "ban", "unban"]),
        origin=rng.choice([None, "selfblock", "blocklist"]),
    )


async def exact_total(archive: Archive, f: HistoryFilter) -> int:
    rows = await archive.fetchall("SELECT timeofban, jail, action, origin FROM ban_events")
    return sum(
        1
        for t, jail, action, origin in rows
        if (f.since is None or t >= f.since)
        and (f.until is None or t < f.until)
        and (f.jail is None or jail == f.jail)
        and (f.action is None or action == f.action)
        and (f.origin is None or origin == f.origin)
    )


async def test_hour_counts_and_totals_follow_every_kind_of_write(archive: Archive) -> None:
    rng = random.Random(5)
    events = EventsRepository(archive)
    await events.load()

    def live(i: int) -> LiveEvent:
        jail = rng.choice(JAILS)
        return LiveEvent(
            rng.choice(("ban", "unban")),
            jail,
            f"198.51.{i // 256 % 256}.{i % 256}",
            # many times on or next to an hour boundary
            NOW - rng.randrange(0, 72) * HOUR - rng.choice((0, 1, 2, 1799, HOUR - 1)),
            600,
            "blocklist" if jail == "blocklist-import" else "selfblock",
        )

    assert await events.record_live([live(i) for i in range(600)]) > 0
    await hours_match_events(archive)
    async with archive.write() as conn:
        # what the sync's alignment does (one second later), across hour boundaries too
        await conn.execute(
            "UPDATE ban_events SET timeofban = timeofban + 1 WHERE id % 3 = 0 "
            "AND NOT EXISTS (SELECT 1 FROM ban_events AS o WHERE o.timeofban = "
            "ban_events.timeofban + 1 AND o.jail = ban_events.jail AND o.ip = ban_events.ip "
            "AND o.action = ban_events.action)"
        )
        await conn.execute(
            "UPDATE ban_events SET jail = 'nginx' WHERE id % 7 = 0 AND jail = 'sshd'"
        )
        await conn.execute("DELETE FROM ban_events WHERE id % 11 = 0")
    await hours_match_events(archive)
    assert await events.purge_before(NOW - 36 * HOUR - 1799, batch=50) > 0
    await hours_match_events(archive)
    emptied = await archive.scalar("SELECT count(*) FROM ban_event_hours WHERE events = 0")
    assert emptied == 0  # the purge drops the hours it emptied

    for _ in range(300):
        f = random_filter(rng)
        _, total = await events.page(f, 0, 5)
        assert total == await exact_total(archive, f), f


async def test_total_with_an_address_or_country_is_counted_exactly(archive: Archive) -> None:
    events = EventsRepository(archive)
    await events.load()
    await events.record_live(
        [
            LiveEvent("ban", "sshd", "203.0.113.9", NOW - i * 1000, 600, "selfblock")
            for i in range(9)
        ]
    )
    _, total = await events.page(HistoryFilter(ip="203.0.113.9", since=NOW - 4500), 0, 2)
    assert total == 5


async def test_bounds_at_the_ends_of_int64_count_exactly(archive: Archive) -> None:
    events = EventsRepository(archive)
    await events.load()
    await events.record_live([LiveEvent("ban", "sshd", "203.0.113.9", NOW, 600, "selfblock")])
    low, high = -(2**63), 2**63 - 1
    for since, until, want in ((high, None, 0), (None, low, 0), (low, high, 1), (low, None, 1)):
        _, total = await events.page(HistoryFilter(since=since, until=until), 0, 5)
        assert total == want, (since, until)
    assert await events.top("jail", high, 5) == []
    assert await events.top("jail", 0, 5) == [("sshd", 1)]


# ------------------------------------------------------------ the two ip indexes
async def ip_answers(events: EventsRepository, ip: str) -> tuple[Any, ...]:
    page, total = await events.page(HistoryFilter(ip=ip), 0, 100)
    net_page, net_total = await events.page(HistoryFilter(network="192.0.2.0/24"), 0, 100)
    return (
        [(r.action, r.jail, r.timeofban) for r in await events.for_ip(ip, 100)],
        await events.ip_summary(ip),
        await events.ip_jails(ip),
        [r.id for r in page],
        total,
        sorted(r.id for r in net_page),
        net_total,
    )


async def test_rows_are_found_in_the_recent_and_the_main_ip_index(archive: Archive) -> None:
    events = EventsRepository(archive)
    await events.load()
    async with archive.write() as conn:  # as a bulk sync page writes: main index
        await conn.executemany(
            "INSERT INTO ban_events (action, jail, ip, timeofban, ip_indexed) "
            "VALUES ('ban', ?, ?, ?, 1)",
            [("sshd", f"192.0.2.{i % 5}", NOW - 10_000 - i) for i in range(40)],
        )
    await events.record_live(  # as the ban watch writes: recent index
        [
            LiveEvent("ban", "nginx", f"192.0.2.{i % 5}", NOW - i, 600, "selfblock")
            for i in range(30)
        ]
    )
    assert await events.recent_ips() == 30
    before = await ip_answers(events, "192.0.2.3")
    history, (bans, first, last), jails, page, total, net_ids, net_total = before
    assert len(page) == total
    assert total == bans == len(history) == 8 + 6
    assert jails == ["nginx", "sshd"]
    assert (first, last) == (NOW - 10_000 - 38, NOW - 3)
    assert net_total == len(net_ids) == 70

    assert await events.merge_recent_ips(batch=7) == 30  # several batches, one short
    assert await events.recent_ips() == 0
    assert await ip_answers(events, "192.0.2.3") == before
    assert await events.merge_recent_ips() == 0


async def test_merge_batches_take_rows_in_address_order(archive: Archive) -> None:
    events = EventsRepository(archive)
    await events.load()
    await events.record_live(
        [LiveEvent("ban", "sshd", f"10.0.0.{i}", NOW - i, 600, "selfblock") for i in (9, 1, 5, 3)]
    )
    await archive.change_in_batches(  # one batch of two, as merge_recent_ips runs it
        "UPDATE ban_events SET ip_indexed = 1 WHERE id IN (SELECT id FROM ban_events "
        "WHERE ip_indexed = 0 ORDER BY ip LIMIT ?)",
        (),
        2,
        on_batch=lambda _n: None,
    )
    merged = await archive.fetchall("SELECT ip FROM ban_events WHERE ip_indexed = 1 ORDER BY ip")
    assert [r[0] for r in merged] == ["10.0.0.1", "10.0.0.3", "10.0.0.5", "10.0.0.9"]


# ------------------------------------------------------------------ countries
async def country_hours_match_events(archive: Archive) -> None:
    want = await archive.fetchall(
        "SELECT country_code, (timeofban - (timeofban < 0) * 3599) / 3600, jail, action, "
        "origin, count(*) FROM ban_events WHERE country_code != '' "
        "GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"
    )
    got = await archive.fetchall(
        "SELECT country_code, hour, jail, action, origin, events FROM ban_event_country_hours "
        "WHERE events != 0 ORDER BY 1, 2, 3, 4, 5"
    )
    assert got == want


async def set_geo(archive: Archive, ip: str, country: str, asn: str, found: int = 1) -> None:
    async with archive.write() as conn:
        await conn.execute(
            "INSERT INTO geo_cache (ip, found, country_code, asn, source, resolved_at, "
            "last_seen) VALUES (?, ?, ?, ?, 'mmdb', 0, 0) ON CONFLICT (ip) DO UPDATE SET "
            "found = excluded.found, country_code = excluded.country_code, asn = excluded.asn",
            (ip, found, country, asn),
        )


async def geo_of(events: EventsRepository, ip: str) -> set[tuple[str, str]]:
    return {(r.country_code, r.asn) for r in await events.for_ip(ip, 100)}


async def test_events_take_and_keep_the_country_their_address_resolved_to(
    archive: Archive,
) -> None:
    events = EventsRepository(archive)
    await events.load()
    a, b, c = "203.0.113.1", "203.0.113.2", "203.0.113.3"
    await events.record_live(
        [
            LiveEvent("ban", "sshd", ip, NOW - i * 900, 600, "selfblock")
            for i in range(8)
            for ip in (a, c)
        ]
    )
    await events.merge_recent_ips(batch=3)  # some of them in the main ip index
    await events.record_live([LiveEvent("ban", "nginx", a, NOW + 5, 600, "selfblock")])
    assert await geo_of(events, a) == {("", "")}

    await set_geo(archive, a, "CN", "AS4134")  # resolved later: every event of a takes it
    assert await geo_of(events, a) == {("CN", "AS4134")}
    await set_geo(archive, b, "DE", "AS24940")  # known first: the event has it at once
    await events.record_live([LiveEvent("ban", "sshd", b, NOW, 600, "selfblock")])
    assert await geo_of(events, b) == {("DE", "AS24940")}
    await set_geo(archive, c, "", "", found=0)  # a negative answer sets nothing
    assert await geo_of(events, c) == {("", "")}
    await set_geo(archive, a, "", "", found=0)  # ... and erases nothing
    assert await geo_of(events, a) == {("CN", "AS4134")}
    await set_geo(archive, a, "US", "AS7018")  # a new database's answer replaces it
    assert await geo_of(events, a) == {("US", "AS7018")}
    await set_geo(archive, a, "", "AS7922")  # found, but no country database open
    assert await geo_of(events, a) == {("US", "AS7922")}
    await set_geo(archive, a, "US", "AS7018")
    async with archive.write() as conn:  # the geo cache cleanup
        await conn.execute("DELETE FROM geo_cache")
    assert await geo_of(events, a) == {("US", "AS7018")}  # history keeps "from where"
    await country_hours_match_events(archive)

    page, total = await events.page(HistoryFilter(country_code="US"), 0, 4)
    assert total == 9
    assert [r.timeofban for r in page] == [NOW + 5, NOW, NOW - 900, NOW - 1800]
    _, total = await events.page(HistoryFilter(country_code="US", since=NOW - 2000), 0, 4)
    assert total == 4
    _, total = await events.page(HistoryFilter(country_code="US", jail="nginx"), 0, 4)
    assert total == 1
    assert await events.top("country", 0, 5) == [("US", 9), ("DE", 1)]
    assert await events.top("asn", NOW - 1000, 5) == [("AS7018", 3), ("AS24940", 1)]
    await events.purge_before(NOW - 3000, batch=2)
    await country_hours_match_events(archive)
    zero = "SELECT count(*) FROM ban_event_country_hours WHERE events = 0"
    assert await archive.scalar(zero) == 0  # emptied hours do not pile up
    _, total = await events.page(HistoryFilter(country_code="US"), 0, 4)
    assert total == 5


async def test_a_country_page_searches_its_own_index(archive: Archive) -> None:
    events = EventsRepository(archive)
    await events.load()
    plans: list[list[str]] = []
    real_fetchall = archive.fetchall

    async def fetchall(sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        plan = await real_fetchall("EXPLAIN QUERY PLAN " + sql, params)
        plans.append([str(r[3]) for r in plan])
        return await real_fetchall(sql, params)

    archive.fetchall = fetchall  # type: ignore[method-assign]
    await events.page(HistoryFilter(country_code="CN", jail="sshd", since=NOW - 86400), 0, 50)
    (page_plan,) = plans
    assert any("ban_events_country_time (country_code=? AND timeofban>?)" in p for p in page_plan)


# ------------------------------------------------------------------- migration
async def test_migration_4_keeps_every_event_and_counts_them(tmp_path: Path) -> None:
    path = str(tmp_path / "archive.sqlite3")
    old = await Archive.open(path, migrations=bundled_migrations()[:3])
    async with old.write() as conn:
        await conn.executemany(
            "INSERT INTO ban_events (action, jail, ip, timeofban, data, recorded_by) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (
                    ("ban", "unban")[i % 2],
                    JAILS[i % 3],
                    f"2001:db8::{i:x}",
                    NOW - i * 977,
                    b'{"matches": [], "failures": 0}',
                    ("history_sync", "ban_watch")[i % 5 == 0],
                )
                for i in range(500)
            ],
        )
        await conn.execute(  # the v3 geo cache knows one address, negatively another
            "INSERT INTO geo_cache (ip, found, country_code, asn, source, resolved_at, "
            "last_seen) VALUES ('2001:db8::7', 1, 'NL', 'AS60781', 'mmdb', 0, 0), "
            "('2001:db8::8', 0, '', '', 'none', 0, 0)"
        )
    before = await old.fetchall(
        "SELECT id, action, jail, ip, timeofban, data, recorded_by FROM ban_events ORDER BY id"
    )
    await old.close()

    seen: list[int] = []
    arch = await Archive.open(path, on_migration=lambda m: seen.append(m.version))
    try:
        assert seen == list(range(4, len(bundled_migrations()) + 1))  # 4, then the later ones
        after = await arch.fetchall(
            "SELECT id, action, jail, ip, timeofban, data, recorded_by FROM ban_events ORDER BY id"
        )
        assert after == before
        assert await arch.scalar("SELECT count(*) FROM ban_events WHERE ip_indexed = 0") == 0
        await hours_match_events(arch)
        await country_hours_match_events(arch)
        geo = await arch.fetchall(
            "SELECT ip, country_code, asn FROM ban_events WHERE country_code != '' OR asn != ''"
        )
        assert geo == [("2001:db8::7", "NL", "AS60781")]
        events = EventsRepository(arch)
        await events.load()
        assert events.count == 500
        # the natural key still refuses a duplicate, under its new column order
        dup = before[10]
        again = LiveEvent(dup[1], dup[2], dup[3], dup[4], 0, "selfblock")
        assert await events.record_live([again]) == 0
    finally:
        await arch.close()


async def test_a_migration_that_would_not_fit_is_refused_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "archive.sqlite3")
    old = await Archive.open(path, migrations=bundled_migrations()[:3])
    async with old.write() as conn:
        await conn.executemany(
            "INSERT INTO ban_events (action, jail, ip, timeofban, data) "
            "VALUES ('ban', 'sshd', ?, ?, ?)",
            [(f"198.51.100.{i % 250}", NOW - i, b"x" * 200) for i in range(2000)],
        )
    await old.close()
    size = await asyncio.to_thread(os.path.getsize, path)
    real_usage = shutil.disk_usage

    def usage(where: str) -> Any:
        total, used, _free = real_usage(where)
        return type(real_usage(where))(total, used, 2 * size)  # less than 3x the archive

    monkeypatch.setattr(shutil, "disk_usage", usage)
    seen: list[int] = []
    with pytest.raises(NotEnoughSpace, match=r"needs about .* MiB free"):
        await Archive.open(path, on_migration=lambda m: seen.append(m.version))
    assert seen == []
    monkeypatch.setattr(shutil, "disk_usage", real_usage)
    arch = await Archive.open(path)  # with the space there, it migrates
    try:
        assert await arch.scalar("SELECT version FROM schema_version") == len(bundled_migrations())
        assert await arch.scalar("SELECT count(*) FROM ban_events") == 2000
        wal = await asyncio.to_thread(os.path.getsize, f"{path}-wal")
        assert wal == 0  # the rebuild's WAL was given back
    finally:
        await arch.close()
