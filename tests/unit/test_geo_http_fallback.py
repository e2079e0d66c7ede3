"""HttpGeoFallback against a fake ip-api.com batch server on 127.0.0.1 (no real network).

Time is a fake clock shared by the client's rate limiter and the fake server, so the
rate-limit tests are deterministic and never sleep.
"""

from __future__ import annotations

import asyncio
import bisect
import ipaddress
import random
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from bangui_daemon.geo.http_fallback import (
    GEO_API_REQUEST_FAILED,
    MAX_BATCH_SIZE,
    HttpGeoFallback,
    SlidingWindowLimiter,
)
from bangui_daemon.geo.lookup import GeoAnswer

FIELDS = "?fields=status,message,countryCode,country,as,org,query"

KNOWN: dict[str, dict[str, str]] = {
    "89.160.20.112": {
        "countryCode": "SE",
        "country": "Sweden",
        "as": "AS29518 Bredband2 AB",
        "org": "Bredband2",
    },
    "8.8.8.8": {
        "countryCode": "US",
        "country": "United States",
        "as": "AS15169 Google LLC",
        "org": "Google Public DNS",
    },
    "2001:218::1": {"countryCode": "JP", "country": "Japan", "as": "AS2914 NTT", "org": ""},
    "1.1.1.1": {"countryCode": "AU", "country": "Australia", "as": "", "org": "Cloudflare"},
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


class FakeIpApi:
    """Answers like ip-api.com's /batch and records what it saw and when."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.requests: list[tuple[float, list[str]]] = []
        self.status = 200
        self.headers: dict[str, str] = {}
        self.raw_body: bytes | None = None
        self.echo_query = True
        self.hang: asyncio.Event | None = None

    async def handle(self, request: web.Request) -> web.Response:
        queries = await request.json()
        assert isinstance(queries, list)
        assert len(queries) <= MAX_BATCH_SIZE
        self.requests.append((self.clock(), queries))
        if self.hang is not None:
            await self.hang.wait()
        if self.status != 200 or self.raw_body is not None:
            return web.Response(status=self.status, body=self.raw_body, headers=self.headers)
        return web.json_response([self.item(q) for q in queries], headers=self.headers)

    def item(self, query: str) -> dict[str, str]:
        known = KNOWN.get(query)
        item = {"status": "success", **known} if known else {"status": "fail"}
        if self.echo_query:
            item["query"] = query
        return item

    def request_times(self) -> list[float]:
        return [t for t, _ in self.requests]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def api(clock: FakeClock) -> AsyncIterator[tuple[FakeIpApi, str]]:
    fake = FakeIpApi(clock)
    app = web.Application()
    app.router.add_post("/batch", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield fake, f"http://127.0.0.1:{server.port}/batch{FIELDS}"
    finally:
        if fake.hang is not None:
            fake.hang.set()
        await server.close()


@pytest.fixture
def refused_url() -> Iterator[str]:
    # A bound socket that does not listen: connecting to it is refused at once.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/batch{FIELDS}"


def public_ips(n: int, first: str = "20.0.0.0") -> list[str]:
    base = int(ipaddress.IPv4Address(first))
    return [str(ipaddress.IPv4Address(base + i)) for i in range(n)]


def most_in_any_window(times: list[float], window: float = 60.0) -> int:
    """Largest number of requests in any interval (t - window, t]; ``times`` sorted.
    Checking intervals that end at a request suffices: a busiest one can be shrunk
    to end at its last request."""
    return max(
        (i + 1 - bisect.bisect_right(times, t - window) for i, t in enumerate(times)),
        default=0,
    )


async def test_answers_are_mapped_in_the_order_asked(
    api: tuple[FakeIpApi, str], clock: FakeClock
) -> None:
    fake, url = api
    ips = [
        "89.160.20.112",
        "10.0.0.1",  # private: never sent
        "8.8.8.8",
        "bogus",  # malformed: never sent
        "2001:0218::1",
        "89.160.20.112",  # duplicate: asked once
        "::ffff:8.8.8.8",  # sent as 8.8.8.8, answered under its own key
        "5.5.5.5",  # the service says "fail"
        "1.1.1.1",
    ]
    async with HttpGeoFallback(url, clock=clock) as fallback:
        answers = await fallback.resolve(ips)
    assert [q for _, q in fake.requests] == [
        ["89.160.20.112", "8.8.8.8", "2001:218::1", "5.5.5.5", "1.1.1.1"]
    ]
    assert answers == [
        GeoAnswer("89.160.20.112", "SE", "Sweden", "AS29518", "Bredband2 AB", "api"),
        GeoAnswer("10.0.0.1", source="api"),
        GeoAnswer("8.8.8.8", "US", "United States", "AS15169", "Google LLC", "api"),
        GeoAnswer("bogus", source="api"),
        GeoAnswer("2001:218::1", "JP", "Japan", "AS2914", "NTT", "api"),
        GeoAnswer("89.160.20.112", "SE", "Sweden", "AS29518", "Bredband2 AB", "api"),
        GeoAnswer("::ffff:8.8.8.8", "US", "United States", "AS15169", "Google LLC", "api"),
        GeoAnswer("5.5.5.5", source="api"),
        GeoAnswer("1.1.1.1", "AU", "Australia", "", "Cloudflare", "api"),
    ]
    assert [a.found for a in answers] == [True, False, True, False, True, True, True, False, True]


async def test_answers_without_query_field_are_taken_in_order(
    api: tuple[FakeIpApi, str], clock: FakeClock
) -> None:
    fake, url = api
    fake.echo_query = False
    async with HttpGeoFallback(url, clock=clock) as fallback:
        answers = await fallback.resolve(["5.5.5.5", "8.8.8.8", "89.160.20.112"])
    assert [a.country_code for a in answers] == ["", "US", "SE"]


async def test_requests_hold_at_most_100_addresses(
    api: tuple[FakeIpApi, str], clock: FakeClock
) -> None:
    fake, url = api
    ips = public_ips(250)
    async with HttpGeoFallback(url, clock=clock) as fallback:
        answers = await fallback.resolve(ips)
    assert [len(q) for _, q in fake.requests] == [100, 100, 50]
    assert [q for _, batch in fake.requests for q in batch] == ips
    assert [a.ip for a in answers] == ips
    assert all(a.source == "api" and not a.found for a in answers)


async def test_rate_limit_is_never_exceeded(api: tuple[FakeIpApi, str], clock: FakeClock) -> None:
    fake, url = api
    ips = public_ips(1000)  # 10 requests' worth at a limit of 3 per minute
    todo = list(ips)
    done: dict[str, GeoAnswer] = {}
    async with HttpGeoFallback(url, requests_per_minute=3, clock=clock) as fallback:
        first = await fallback.resolve(todo)
        assert len(fake.requests) == 3
        assert [a.source for a in first].count("api") == 300
        assert [a.source for a in first].count("none") == 700  # not attempted
        # A periodic task retries what was not attempted, every 7 s of fake time.
        answers = first
        for _ in range(100):
            done.update((a.ip, a) for a in answers if a.source != "none")
            todo = [ip for ip in ips if ip not in done]
            if not todo:
                break
            clock.now += 7
            answers = await fallback.resolve(todo)
    assert len(done) == 1000
    times = fake.request_times()
    assert len(times) == 10
    assert most_in_any_window(times) == 3
    # Slots come back exactly one window after they were taken, not earlier.
    assert times[3] - times[0] >= 60


async def test_server_rate_headers_pause_requests(
    api: tuple[FakeIpApi, str], clock: FakeClock
) -> None:
    fake, url = api
    fake.headers = {"X-Rl": "0", "X-Ttl": "30"}
    async with HttpGeoFallback(url, clock=clock) as fallback:
        assert (await fallback.resolve(["8.8.8.8"]))[0].country_code == "US"
        clock.now += 29
        assert (await fallback.resolve(["1.1.1.1"]))[0].source == "none"
        assert len(fake.requests) == 1
        clock.now += 1
        fake.headers = {}
        assert (await fallback.resolve(["1.1.1.1"]))[0].country_code == "AU"
    assert len(fake.requests) == 2


async def test_http_429_means_not_attempted(api: tuple[FakeIpApi, str], clock: FakeClock) -> None:
    fake, url = api
    fake.status = 429
    async with HttpGeoFallback(url, clock=clock) as fallback:
        answers = await fallback.resolve(public_ips(150))
        assert {a.source for a in answers} == {"none"}
        assert len(fake.requests) == 1
        clock.now += 59  # no X-Ttl: paused for a whole window
        fake.status = 200
        await fallback.resolve(["8.8.8.8"])
        assert len(fake.requests) == 1
        clock.now += 1
        assert (await fallback.resolve(["8.8.8.8"]))[0].found
    assert len(fake.requests) == 2


@pytest.mark.parametrize(("status", "body"), [(500, b"oops"), (200, b"<html>"), (200, b"{}")])
async def test_failing_server_gives_negative_answers(
    api: tuple[FakeIpApi, str], clock: FakeClock, status: int, body: bytes
) -> None:
    fake, url = api
    fake.status, fake.raw_body = status, body
    with capture_logs() as logs:
        async with HttpGeoFallback(url, clock=clock) as fallback:
            answers = await fallback.resolve(public_ips(150))
    # The failed batch is a negative answer; the rest is left for a later tick.
    assert [a.source for a in answers] == ["api"] * 100 + ["none"] * 50
    assert not any(a.found for a in answers)
    assert len(fake.requests) == 1
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [GEO_API_REQUEST_FAILED]


async def test_connection_refused_gives_negative_answers(
    refused_url: str, clock: FakeClock
) -> None:
    with capture_logs() as logs:
        async with HttpGeoFallback(refused_url, clock=clock) as fallback:
            answers = await fallback.resolve(["8.8.8.8", "89.160.20.112"])
    assert answers == [GeoAnswer("8.8.8.8", source="api"), GeoAnswer("89.160.20.112", source="api")]
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [GEO_API_REQUEST_FAILED]


async def test_timeout_gives_negative_answers(api: tuple[FakeIpApi, str], clock: FakeClock) -> None:
    fake, url = api
    fake.hang = asyncio.Event()  # released by the fixture at teardown
    async with HttpGeoFallback(url, clock=clock, timeout=0.2) as fallback:
        answers = await fallback.resolve(["8.8.8.8"])
    assert answers == [GeoAnswer("8.8.8.8", source="api")]
    assert len(fake.requests) == 1


async def test_session_reopens_after_close(api: tuple[FakeIpApi, str], clock: FakeClock) -> None:
    _, url = api
    fallback = HttpGeoFallback(url, clock=clock)
    assert (await fallback.resolve(["8.8.8.8"]))[0].found
    await fallback.close()
    assert (await fallback.resolve(["1.1.1.1"]))[0].found
    await fallback.close()
    await fallback.close()


async def test_nothing_to_send_sends_nothing(api: tuple[FakeIpApi, str], clock: FakeClock) -> None:
    fake, url = api
    async with HttpGeoFallback(url, clock=clock) as fallback:
        assert await fallback.resolve([]) == []
        assert await fallback.resolve(["127.0.0.1", "fe80::1"]) == [
            GeoAnswer("127.0.0.1", source="api"),
            GeoAnswer("fe80::1", source="api"),
        ]
    assert fake.requests == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "ftp://example.invalid/batch"},
        {"url": "http://127.0.0.1/batch", "requests_per_minute": 0},
        {"url": "http://127.0.0.1/batch", "batch_size": 101},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        HttpGeoFallback(**kwargs)


def test_sliding_window_limiter_invariant_under_random_load() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(limit=15, window=60.0, clock=clock)
    rng = random.Random(1234)
    granted: list[float] = []
    refused = 0
    for _ in range(5000):
        clock.now += rng.choice([0.0, 0.001, 0.5, 1.0, 3.0, 4.0, 10.0])
        if limiter.try_acquire():
            granted.append(clock.now)
        else:
            # Refused only when the window really is full: the limit is used, not wasted.
            refused += 1
            assert sum(1 for u in granted[-16:] if clock.now - 60 < u <= clock.now) == 15
    assert refused > 1000
    assert most_in_any_window(granted) == 15
