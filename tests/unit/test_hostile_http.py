"""fetch() against a raw asyncio HTTP server on 127.0.0.1 that lies at the HTTP level.

aiohttp.web would not send a Content-Length that disagrees with the body, a header
line of a megabyte or headers without end; this server writes whatever it is told.
(Redirect rules, gzip bombs, caps and trickling are in test_blocklist_fetch.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import resource
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bangui_daemon.blocklist.fetch import (
    FetchError,
    FetchResult,
    FetchTimeout,
    TooLarge,
    TooManyRedirects,
    fetch,
)

BODY = b"45.1.2.3\n45.1.2.4\n45.1.2.5\n"
CAP = 1024 * 1024
Writer = Callable[[asyncio.StreamWriter, asyncio.Event], Awaitable[None]]


async def _lie_longer_then_close(w: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + BODY)


async def _lie_longer_then_hang(w: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + BODY)
    await w.drain()
    await stop.wait()


async def _lie_shorter(w: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n" + BODY)


async def _huge_header(w: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    big = b"X-Big: " + b"a" * (1024 * 1024) + b"\r\n"
    w.write(b"HTTP/1.1 200 OK\r\n" + big + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)


async def _endless_headers(w: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    w.write(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Junk: " + b"a" * 100 + b"\r\n"
    for _ in range(10_000):  # 1 GB at most; the client hangs up long before
        w.write(line * 1000)
        await w.drain()


def _members() -> bytes:
    """Three gzip members whose output is a multiple of fetch's 64 KiB inflate piece."""
    return b"".join(gzip.compress(part) for part in MEMBERS)


async def _gzip_members(w: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    body = _members()
    w.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body))
    w.write(body)


async def _gzip_bomb(w: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    # 1 GiB of zeros as 1,024 members of 1 MiB (~1 KB each).
    body = gzip.compress(b"\0" * (1024 * 1024), 9) * 1024
    w.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body))
    w.write(body)


async def _redirect_loop(w: asyncio.StreamWriter, stop: asyncio.Event) -> None:
    w.write(b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n")


MODES: dict[str, Writer] = {
    "longer-close": _lie_longer_then_close,
    "longer-hang": _lie_longer_then_hang,
    "shorter": _lie_shorter,
    "huge-header": _huge_header,
    "endless-headers": _endless_headers,
    "loop": _redirect_loop,
    "gzip-members": _gzip_members,
    "gzip-bomb": _gzip_bomb,
}
MEMBERS = [
    b"45.1.2.3\n" * (128 * 1024 // 9) + b"#" * (128 * 1024 % 9),
    b"45.9.9.9\n",
    b"45.8.8.8\n",
]


class RawSite:
    def __init__(self) -> None:
        self.port = 0
        self.requests = 0
        self.stop = asyncio.Event()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:  # keep-alive: the redirect loop comes back on one connection
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests += 1
                path = head.split(b" ", 2)[1].decode().lstrip("/")
                await MODES[path](writer, self.stop)
                await writer.drain()
                if path != "loop":
                    break
        writer.close()


@pytest.fixture
async def raw() -> AsyncIterator[RawSite]:
    site = RawSite()
    server = await asyncio.start_server(site.handle, "127.0.0.1", 0)
    site.port = server.sockets[0].getsockname()[1]
    try:
        yield site
    finally:
        site.stop.set()
        server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.wait_closed()


async def get(url: str, **kwargs: Any) -> FetchResult:
    options: dict[str, Any] = {"max_bytes": CAP, "timeout": 5.0, "file_dir": "/nonexistent"}
    options.update(kwargs)
    return await fetch(url, **options)


async def test_content_length_longer_than_the_body_fails(raw: RawSite) -> None:
    with pytest.raises(FetchError, match="payload is not completed"):
        await get(raw.url("longer-close"))


async def test_content_length_longer_and_silence_fails_by_the_deadline(raw: RawSite) -> None:
    started = time.monotonic()
    with pytest.raises(FetchTimeout, match=r"within 0\.5 s"):
        await get(raw.url("longer-hang"), timeout=0.5)
    assert time.monotonic() - started < 3


async def test_content_length_shorter_than_the_body_never_yields_the_rest(raw: RawSite) -> None:
    # HTTP cannot tell a lie from the truth here; what matters is that nothing past
    # the declared length becomes part of the list (aiohttp refuses the excess).
    try:
        result = await get(raw.url("shorter"))
    except FetchError:
        return  # refused as a whole: fine
    assert b"".join(result.chunks) == BODY[:9]


@pytest.mark.parametrize("mode", ["huge-header", "endless-headers"])
async def test_oversized_headers_fail_fast(raw: RawSite, mode: str) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError, match="download failed") as info:
        await get(raw.url(mode))
    assert time.monotonic() - started < 3
    assert len(str(info.value)) < 400  # a sentence, not the header


async def test_redirect_loop_stops_after_the_limit(raw: RawSite) -> None:
    with pytest.raises(TooManyRedirects):
        await get(raw.url("loop"))
    assert raw.requests == 4  # the first request and three redirects, no more


async def test_gzip_members_ending_on_a_piece_boundary_decode_exactly(raw: RawSite) -> None:
    assert len(MEMBERS[0]) == 128 * 1024
    result = await get(raw.url("gzip-members"))
    assert b"".join(result.chunks) == b"".join(MEMBERS)


async def test_multi_member_gzip_bomb_stops_at_the_cap_in_bounded_memory(raw: RawSite) -> None:
    # Before the fix, every member boundary doubled the undecoded rest: gigabytes.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with pytest.raises(TooLarge):
        await get(raw.url("gzip-bomb"), max_bytes=16 * 1024 * 1024)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert grown < 100 * 1024 * 1024, f"peak RSS grew by {grown / 1e6:.0f} MB"
