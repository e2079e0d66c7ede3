"""GetHistory, GetIpHistory, GetTimeline and GetTop against a real temp archive.

Fixture events are written straight into ban_events (and geo_cache), then every query
is checked against a reference computed here in Python from the same fixture list,
never from the archive: filters alone and combined, every page and its total,
timelines with empty buckets, top lists. Time is injected (a fixed clock).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bangui_daemon.archive.db import Archive
from bangui_daemon.archive.events_repo import EventsRepository
from bangui_daemon.errors import InvalidArgument
from bangui_daemon.services.history import HistoryService, TypedValue

NOW = 1_800_000_000
HOUR = 3600
DAY = 86400
START = NOW - 10 * DAY
JAILS = ("sshd", "nginx-http-auth", "blocklist-import")

# Addresses chosen to trip text-prefix shortcuts: 45.33.12.x vs 45.33.1.x / 45.33.120.x,
# a /20 that spans 45.33.0.0-45.33.15.255, IPv6 with non-canonical spellings.
IPS = (
    "45.33.12.7",
    "45.33.12.200",
    "45.33.12.0",
    "45.33.12.255",
    "45.33.1.5",
    "45.33.120.1",
    "45.33.13.9",
    "45.33.15.254",
    "45.33.16.1",
    "45.3.12.7",
    "145.33.12.7",
    "5.188.10.1",
    "203.0.113.9",
    "198.51.100.77",
    "8.8.4.4",
    "2001:db8::1",
    "2001:db8::ff",
    "2001:db8:0:1::1",
    "2001:db9::1",
    "::ffff:45.33.12.7",
)
# ip -> (country_code, asn, org); some addresses have no geo row at all, one a
# negative row (found = 0, empty fields).
GEO = {
    "45.33.12.7": ("US", "AS63949", "Akamai Connected Cloud"),
    "45.33.12.200": ("US", "AS63949", "Akamai Connected Cloud"),
    "45.33.1.5": ("US", "AS63949", "Akamai Connected Cloud"),
    "45.33.13.9": ("DE", "AS24940", "Hetzner Online GmbH"),
    "5.188.10.1": ("RU", "AS49505", "Selectel"),
    "203.0.113.9": ("CN", "AS4134", "Chinanet"),
    "198.51.100.77": ("CN", "AS4837", "China Unicom"),
    "2001:db8::1": ("DE", "AS24940", "Hetzner Online GmbH"),
    "2001:db8::ff": ("NL", "AS60781", "LeaseWeb"),
    "8.8.4.4": ("", "", ""),
}
NETWORKS = (
    "45.33.12.0/24",
    "45.33.12.0/25",
    "45.33.12.192/26",
    "45.33.0.0/20",
    "45.33.0.0/16",
    "45.0.0.0/8",
    "44.0.0.0/7",
    "0.0.0.0/0",
    "45.33.12.7/32",
    "2001:db8::/32",
    "2001:db8::/64",
    "2001:db8::ff/128",
    "::/0",
)


@dataclass(frozen=True)
class Ev:
    id: int
    action: str
    jail: str
    ip: str
    timeofban: int
    bantime: int
    bancount: int
    origin: str
    failures: int
    matches: list[str]
    raw_matches: list[Any]

    @property
    def country(self) -> str:
        return GEO.get(self.ip, ("", "", ""))[0]

    @property
    def asn(self) -> str:
        return GEO.get(self.ip, ("", "", ""))[1]


def make_events(n: int = 420, seed: int = 7) -> list[Ev]:
    rng = random.Random(seed)
    events: list[Ev] = []
    used: set[tuple[str, str, str, int]] = set()
    ident = 0
    while len(events) < n:
        jail = rng.choice(JAILS)
        ip = str(ipaddress.ip_address(rng.choice(IPS)))
        action = "unban" if rng.random() < 0.25 else "ban"
        # several events per second on purpose: the order must break ties by id
        t = START + rng.randrange(0, 10 * DAY, 7 * 60)
        if (action, jail, ip, t) in used:
            continue
        used.add((action, jail, ip, t))
        ident += 1
        if jail == "blocklist-import":
            raw: list[Any] = []
            failures = 0
        else:
            raw = [
                ["", f"Nov 23 17:37:{i:02d}", f" host sshd[{ident}]: Failed password from {ip}"]
                if i % 2 == 0
                else f"Nov 23 17:37:{i:02d} host sshd[{ident}]: Invalid user from {ip}"
                for i in range(rng.randrange(0, 4))
            ]
            failures = len(raw) + rng.randrange(0, 3)
        joined = ["".join(m) if isinstance(m, list) else m for m in raw]
        events.append(
            Ev(
                id=ident * 3,  # ids not dense and not in time order
                action=action,
                jail=jail,
                ip=ip,
                timeofban=t,
                bantime=-1 if rng.random() < 0.05 else rng.choice((600, 3600, 604800)),
                bancount=rng.randrange(1, 4),
                origin="blocklist" if jail == "blocklist-import" else "selfblock",
                failures=failures,
                matches=joined,
                raw_matches=raw,
            )
        )
    return events


EVENTS = make_events()


@pytest.fixture
async def archive(tmp_path: Path) -> AsyncIterator[Archive]:
    arch = await Archive.open(str(tmp_path / "archive.sqlite3"))
    async with arch.write() as conn:
        await conn.executemany(
            "INSERT INTO ban_events (id, action, jail, ip, timeofban, bantime, bancount, data, "
            "origin, recorded_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'history_sync')",
            [
                (
                    e.id,
                    e.action,
                    e.jail,
                    e.ip,
                    e.timeofban,
                    e.bantime,
                    e.bancount,
                    json.dumps({"matches": e.raw_matches, "failures": e.failures}).encode(),
                    e.origin,
                )
                for e in EVENTS
            ],
        )
        await conn.executemany(
            "INSERT INTO geo_cache (ip, found, country_code, asn, org, source, resolved_at, "
            "last_seen) VALUES (?, ?, ?, ?, ?, 'mmdb', ?, ?)",
            [(ip, int(bool(c)), c, a, o, NOW, NOW) for ip, (c, a, o) in GEO.items()],
        )
    try:
        yield arch
    finally:
        await arch.close()


@pytest.fixture
async def service(archive: Archive) -> HistoryService:
    events = EventsRepository(archive)
    await events.load()
    return HistoryService(events, lambda _jail: "selfblock", lambda: None, clock=lambda: NOW)


# ------------------------------------------------------------------ reference
def _matches(key: str, value: Any) -> Callable[[Ev], bool]:
    if key == "since":
        return lambda e: e.timeofban >= value
    if key == "until":
        return lambda e: e.timeofban < value
    if key == "jail":
        return lambda e: e.jail == value
    if key == "origin":
        return lambda e: e.origin == value
    if key == "action":
        return lambda e: e.action == value
    if key == "country_code":
        return lambda e: e.country == value.upper()
    if key == "ip":
        if "/" in value:
            net = ipaddress.ip_network(value, strict=False)
            return lambda e: ipaddress.ip_address(e.ip) in net
        address = ipaddress.ip_address(value)
        return lambda e: ipaddress.ip_address(e.ip) == address
    raise AssertionError(key)


def reference(flt: dict[str, Any]) -> list[Ev]:
    preds = [_matches(k, v) for k, v in flt.items()]
    hits = [e for e in EVENTS if all(p(e) for p in preds)]
    return sorted(hits, key=lambda e: (-e.timeofban, -e.id))


SIGNATURES = {
    "since": "x",
    "until": "x",
    "jail": "s",
    "ip": "s",
    "origin": "s",
    "country_code": "s",
    "action": "s",
}
CANDIDATES: dict[str, list[Any]] = {
    # bounds inside an hour too: totals add whole hours from ban_event_hours to exact
    # counts of the partial hours at either end
    "since": [
        START - 1,
        START + 2 * DAY,
        START + 5 * DAY + 7 * 60,
        START + 6 * DAY + 1799,
        NOW - HOUR,
        NOW + DAY,
    ],
    "until": [START, START + 3 * DAY, START + 6 * DAY + 5000, START + 8 * DAY + 7 * 60, NOW + 1],
    "jail": [*JAILS, "no-such-jail"],
    "ip": [
        "45.33.12.7",
        "2001:DB8:0::0001",
        "::ffff:45.33.12.7",
        "8.8.4.4",
        "192.0.2.1",
        *NETWORKS,
        "45.33.12.77/24",  # host bits set: taken as its network
    ],
    "origin": ["selfblock", "blocklist"],
    "country_code": ["US", "de", "CN", "NL", "ZZ"],
    "action": ["ban", "unban"],
}


def typed(flt: dict[str, Any]) -> dict[str, TypedValue]:
    return {k: (SIGNATURES[k], v) for k, v in flt.items()}


def key_of(e: Any) -> tuple[Any, ...]:
    return (e.action, e.jail, e.ip, e.timeofban)


async def check(service: HistoryService, flt: dict[str, Any], page_size: int = 1000) -> int:
    """Walk every page of `flt`: totals, order and content against the reference."""
    want = reference(flt)
    got: list[Any] = []
    page = 1
    while True:
        events, total = await service.history(typed(flt), page, page_size)
        assert total == len(want), (flt, page)
        got.extend(events)
        if len(events) < page_size:
            break
        page += 1
    assert [key_of(e) for e in got] == [key_of(e) for e in want], flt
    return len(want)


# ---------------------------------------------------------------------- tests
async def test_no_filter_returns_everything_newest_first(service: HistoryService) -> None:
    assert await check(service, {}, page_size=50) == len(EVENTS)


@pytest.mark.parametrize("key", sorted(CANDIDATES))
async def test_each_filter_alone(service: HistoryService, key: str) -> None:
    nonempty = 0
    for value in CANDIDATES[key]:
        nonempty += bool(await check(service, {key: value}, page_size=37))
    assert nonempty >= 2  # the candidates do select something


async def test_every_combination_of_filters(service: HistoryService) -> None:
    rng = random.Random(11)
    keys = sorted(CANDIDATES)
    seen_hits = 0
    for r in range(2, len(keys) + 1):
        for combo in itertools.combinations(keys, r):
            for _ in range(4):
                flt = {k: rng.choice(CANDIDATES[k]) for k in combo}
                seen_hits += bool(await check(service, flt))
    assert seen_hits > 100  # not only empty answers


async def test_combined_filters_paged_with_total_on_every_page(service: HistoryService) -> None:
    flt = {"since": START + DAY, "until": NOW, "ip": "45.33.0.0/20", "action": "ban"}
    n = await check(service, flt, page_size=3)
    assert n > 10
    # a page past the end is empty and still carries the total
    events, total = await service.history(typed(flt), n // 3 + 5, 3)
    assert events == []
    assert total == n


async def test_event_fields(service: HistoryService) -> None:
    events, _ = await service.history({}, 1, 1000)
    by_key = {key_of(e): e for e in EVENTS}
    for got in events:
        want = by_key[key_of(got)]
        assert got.bantime == want.bantime
        assert got.bancount == want.bancount
        assert got.origin == want.origin
        assert got.failures == want.failures
        assert got.matches == want.matches
        country, asn, org = GEO.get(got.ip, ("", "", ""))
        assert (got.country_code, got.asn, got.org) == (country, asn, org)
    assert any(len(e.matches) >= 2 for e in events)


@pytest.mark.parametrize(
    "raw",
    [
        {"sinse": ("x", 1)},
        {"since": ("s", "1")},
        {"since": ("i", 1)},
        {"since": ("t", 1)},
        {"until": ("u", 1)},
        {"jail": ("x", 1)},
        {"jail": ("as", ["sshd"])},
        {"ip": ("u", 1)},
        {"ip": ("s", "45.33.12")},
        {"ip": ("s", "45.33.12.0/33")},
        {"ip": ("s", "not an address")},
        {"ip": ("s", "")},
        {"origin": ("s", "manual")},
        {"action": ("s", "bans")},
        {"action": ("b", True)},
        {"country_code": ("s", "USA")},
        {"country_code": ("s", "1X")},
        {"jail": ("s", "")},
        {"": ("s", "x")},
    ],
)
async def test_bad_filter_is_invalid_argument(
    service: HistoryService, raw: dict[str, TypedValue]
) -> None:
    with pytest.raises(InvalidArgument):
        await service.history(raw, 1, 10)


async def test_page_size_limits_accepted(service: HistoryService) -> None:
    events, total = await service.history({}, 1, 1)
    assert len(events) == 1
    assert total == len(EVENTS)
    events, _ = await service.history({}, 1, 1000)
    assert len(events) == min(1000, len(EVENTS))


# ------------------------------------------------------------- GetIpHistory
@pytest.mark.parametrize("ip", ["45.33.12.7", "2001:db8::ff", "8.8.4.4", "5.188.10.1"])
async def test_ip_history(service: HistoryService, ip: str) -> None:
    want = reference({"ip": ip})
    got = await service.ip_history(ip.upper())
    assert got.ip == ip
    assert [key_of(e) for e in got.events] == [key_of(e) for e in want]
    assert got.total_bans == sum(e.action == "ban" for e in want)
    assert got.first_seen == min(e.timeofban for e in want)
    assert got.last_seen == max(e.timeofban for e in want)
    assert got.jails == sorted({e.jail for e in want})
    assert (got.country_code, got.asn, got.org) == GEO.get(ip, ("", "", ""))


async def test_ip_history_unknown_and_invalid(service: HistoryService) -> None:
    got = await service.ip_history("192.0.2.55")
    assert (got.total_bans, got.first_seen, got.last_seen, got.events) == (0, 0, 0, [])
    with pytest.raises(InvalidArgument):
        await service.ip_history("45.33.12.0/24")


# --------------------------------------------------------------- GetTimeline
@pytest.mark.parametrize("bucket", [HOUR, 6 * HOUR, DAY, 7 * 60 * 13])
@pytest.mark.parametrize("offset", [123, 0])  # 0: whole hours, summed from ban_event_hours
async def test_timeline_counts_bans_and_keeps_empty_buckets(
    service: HistoryService, bucket: int, offset: int
) -> None:
    since = START + 2 * DAY + offset
    got = await service.timeline(since, bucket)
    starts = [s for s, _ in got]
    assert starts[0] == since
    assert all(b - a == bucket for a, b in itertools.pairwise(starts))
    assert starts[-1] <= NOW < starts[-1] + bucket
    counts = Counter(
        (e.timeofban - since) // bucket
        for e in EVENTS
        if e.action == "ban" and since <= e.timeofban <= NOW
    )
    assert got == [(since + i * bucket, counts.get(i, 0)) for i in range(len(got))]
    assert sum(n for _, n in got) == sum(counts.values())


async def test_timeline_has_zero_buckets_where_nothing_happened(archive: Archive) -> None:
    async with archive.write() as conn:
        await conn.execute("DELETE FROM ban_events")
        await conn.executemany(
            "INSERT INTO ban_events (action, jail, ip, timeofban) VALUES ('ban', 'sshd', ?, ?)",
            [("45.33.12.7", NOW - 5 * HOUR + 10), ("45.33.12.8", NOW - HOUR + 20)],
        )
    events = EventsRepository(archive)
    await events.load()
    service = HistoryService(events, lambda _j: "selfblock", lambda: None, clock=lambda: NOW)
    since = NOW - 6 * HOUR
    assert await service.timeline(since, HOUR) == [
        (since, 0),
        (since + HOUR, 1),
        (since + 2 * HOUR, 0),
        (since + 3 * HOUR, 0),
        (since + 4 * HOUR, 0),
        (since + 5 * HOUR, 1),
        (since + 6 * HOUR, 0),  # the bucket holding "now"
    ]
    # since = 0: from the first ban, aligned to the bucket
    got = await service.timeline(0, HOUR)
    first = NOW - 5 * HOUR + 10
    assert got[0] == (first - first % HOUR, 1)
    assert sum(n for _, n in got) == 2
    assert await service.timeline(NOW + 1, HOUR) == []


async def test_timeline_on_an_empty_archive_is_all_zeros(tmp_path: Path) -> None:
    arch = await Archive.open(str(tmp_path / "empty.sqlite3"))
    try:
        events = EventsRepository(arch)
        await events.load()
        service = HistoryService(events, lambda _j: "selfblock", lambda: None, clock=lambda: NOW)
        got = await service.timeline(0, HOUR)
        assert len(got) >= 24
        assert all(n == 0 for _, n in got)
    finally:
        await arch.close()


async def test_timeline_too_many_buckets(service: HistoryService) -> None:
    with pytest.raises(InvalidArgument):
        await service.timeline(1, 1)


# -------------------------------------------------------------------- GetTop
def top_reference(dimension: str, since: int) -> Counter[str]:
    fields: dict[str, Callable[[Ev], str]] = {
        "jail": lambda e: e.jail,
        "ip": lambda e: e.ip,
        "country": lambda e: e.country,
        "asn": lambda e: e.asn,
    }
    field = fields[dimension]
    return Counter(
        field(e) for e in EVENTS if e.action == "ban" and e.timeofban >= since and field(e)
    )


# right after a ban inside an hour: that hour is partial and the ban must not count
AFTER_A_BAN = next(e.timeofban for e in EVENTS if e.action == "ban" and e.timeofban % HOUR) + 1


@pytest.mark.parametrize("dimension", ["jail", "ip", "country", "asn"])
@pytest.mark.parametrize("since", [0, START + 4 * DAY, AFTER_A_BAN, NOW + 1])
@pytest.mark.parametrize("limit", [1, 3, 1000])
async def test_top_is_ordered_and_limited(
    service: HistoryService, dimension: str, since: int, limit: int
) -> None:
    want = top_reference(dimension, since)
    got = await service.top(dimension, since, limit)
    assert len(got) == min(limit, len(want))
    counts = [n for _, n in got]
    assert counts == sorted(counts, reverse=True)
    assert counts == sorted(want.values(), reverse=True)[:limit]
    for key, n in got:
        assert want[key] == n
    assert len({k for k, _ in got}) == len(got)


# Ranges of pages, times, buckets and limits: tests/unit/test_dbus_validate.py and
# tests/integration/test_dbus_edge.py (they are checked at the D-Bus edge).
@pytest.mark.parametrize("dimension", ["country_code", "org", ""])
async def test_top_bad_dimension(service: HistoryService, dimension: str) -> None:
    with pytest.raises(InvalidArgument):
        await service.top(dimension, 0, 10)
