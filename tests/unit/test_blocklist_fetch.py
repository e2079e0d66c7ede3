"""fetch() against local aiohttp servers on 127.0.0.1 (http, and https when openssl exists).

No real network. The only timed waits are the trickling server's pauses, which are the
behaviour under test, and the deadline that must cut it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from ssl import PROTOCOL_TLS_SERVER, SSLContext
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bangui_daemon.blocklist.fetch import (
    MAX_REDIRECTS,
    USER_AGENT,
    FetchError,
    FetchResult,
    FetchTimeout,
    HttpStatusError,
    RedirectRefused,
    TooLarge,
    TooManyRedirects,
    UnsupportedUrl,
    _describe,
    check_url,
    fetch,
    redact_url,
    redirect_target,
)
from bangui_daemon.blocklist.parse import parse_blocklist
from bangui_daemon.errors import InvalidArgument

CAP = 64 * 1024
LIST = b"# test list\n192.0.2.1\n198.51.100.0/24 ; SBL1\n2001:db8::1\n"
ETAG = '"v1"'
LAST_MODIFIED = "Wed, 01 Jan 2025 00:00:00 GMT"
SECRET = "SECRET-BODY-TEXT"


@dataclass
class Site:
    base: str
    seen: list[dict[str, str]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path


async def _serve(app: web.Application, ssl: SSLContext | None = None) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"{'https' if ssl else 'http'}://127.0.0.1:{port}"


def _app(site: Site, stop: asyncio.Event) -> web.Application:
    async def plain_list(request: web.Request) -> web.StreamResponse:
        site.seen.append(dict(request.headers))
        if request.headers.get("If-None-Match") == ETAG:
            return web.Response(status=304, headers={"ETag": ETAG})
        if request.headers.get("If-Modified-Since") == LAST_MODIFIED:
            return web.Response(status=304)
        return web.Response(body=LIST, headers={"ETag": ETAG, "Last-Modified": LAST_MODIFIED})

    async def big(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"1.2.3.4\n" * (CAP // 8 + 1))

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            for _ in range(64):  # 4 MiB at most, far above CAP
                await resp.write(b"1.2.3.4\n" * 8192)
        return resp

    async def bomb(request: web.Request) -> web.StreamResponse:
        body = gzip.compress(b"\0" * (16 * 1024 * 1024))
        assert len(body) < CAP
        return web.Response(body=body, headers={"Content-Encoding": "gzip"})

    async def encoded(request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        if kind == "gzip":  # two members, as `cat a.gz b.gz` makes
            half = len(LIST) // 2
            body = gzip.compress(LIST[:half]) + gzip.compress(LIST[half:])
            encoding = "gzip"
        elif kind == "zlib":
            body, encoding = zlib.compress(LIST), "deflate"
        elif kind == "raw":
            obj = zlib.compressobj(wbits=-zlib.MAX_WBITS)
            body, encoding = obj.compress(LIST) + obj.flush(), "deflate"
        elif kind == "truncated":
            body, encoding = gzip.compress(LIST)[:-12], "gzip"
        else:
            body, encoding = LIST, "br"
        return web.Response(body=body, headers={"Content-Encoding": encoding})

    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            for _ in range(400):  # never more than ~20 s, even if the client hangs on
                await resp.write(b"1")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.05)
                if stop.is_set():
                    break
        return resp

    async def redirect(request: web.Request) -> web.StreamResponse:
        left = int(request.match_info["n"])
        if left == 0:
            return web.Response(body=LIST)
        raise web.HTTPFound(f"/redirect/{left - 1}")  # relative on purpose

    async def to(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.query["url"])

    async def status(request: web.Request) -> web.StreamResponse:
        return web.Response(status=int(request.match_info["code"]), text=SECRET)

    app = web.Application()
    app.router.add_get("/list", plain_list)
    app.router.add_get("/big", big)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/bomb", bomb)
    app.router.add_get("/encoded/{kind}", encoded)
    app.router.add_get("/trickle", trickle)
    app.router.add_get("/redirect/{n}", redirect)
    app.router.add_get("/to", to)
    app.router.add_get("/status/{code}", status)
    return app


@pytest.fixture
async def server() -> AsyncIterator[Site]:
    stop = asyncio.Event()
    site = Site(base="")
    runner, site.base = await _serve(_app(site, stop))
    try:
        yield site
    finally:
        stop.set()
        await runner.cleanup()


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[Site]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a throw-away certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    command = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    await asyncio.to_thread(subprocess.run, command, check=True, capture_output=True)
    ctx = SSLContext(PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    stop = asyncio.Event()
    site = Site(base="")
    runner, site.base = await _serve(_app(site, stop), ctx)
    try:
        yield site
    finally:
        stop.set()
        await runner.cleanup()


async def get(url: str, **kwargs: Any) -> FetchResult:
    options: dict[str, Any] = {"max_bytes": CAP, "timeout": 10.0, "file_dir": "/nonexistent"}
    options.update(kwargs)
    return await fetch(url, **options)


# ------------------------------------------------------------------------ http
async def test_plain_list_is_returned_as_chunks_the_parser_takes(server: Site) -> None:
    result = await fetch(server.url("/list"), max_bytes=CAP, timeout=10, file_dir="/x")
    assert not result.not_modified
    assert b"".join(result.chunks) == LIST
    assert result.size == len(LIST)
    assert result.etag == ETAG
    assert result.last_modified == LAST_MODIFIED
    assert result.final_url == server.url("/list")
    assert parse_blocklist(result.chunks).entries == [
        "192.0.2.1",
        "198.51.100.0/24",
        "2001:db8::1",
    ]
    assert server.seen[0]["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith("bangui-daemon/")


async def test_etag_round_trip_gives_not_modified(server: Site) -> None:
    first = await fetch(server.url("/list"), max_bytes=CAP, timeout=10, file_dir="/x")
    again = await fetch(
        server.url("/list"), max_bytes=CAP, timeout=10, file_dir="/x", etag=first.etag
    )
    assert server.seen[1]["If-None-Match"] == ETAG
    assert again.not_modified
    assert again.chunks == ()
    assert again.etag == ETAG


async def test_last_modified_round_trip_gives_not_modified(server: Site) -> None:
    first = await fetch(server.url("/list"), max_bytes=CAP, timeout=10, file_dir="/x")
    again = await fetch(
        server.url("/list"),
        max_bytes=CAP,
        timeout=10,
        file_dir="/x",
        last_modified=first.last_modified,
    )
    assert server.seen[1]["If-Modified-Since"] == LAST_MODIFIED
    assert "If-None-Match" not in server.seen[1]
    assert again.not_modified
    assert again.last_modified == LAST_MODIFIED  # kept when the 304 does not repeat it


async def test_oversize_by_content_length_fails_before_reading(server: Site) -> None:
    with pytest.raises(TooLarge, match="Content-Length") as info:
        await get(server.url("/big"))
    assert info.value.max_bytes == CAP


async def test_oversize_chunked_body_fails_while_streaming(server: Site) -> None:
    with pytest.raises(TooLarge, match=f"larger than {CAP} bytes$"):
        await get(server.url("/chunked"))


@pytest.mark.parametrize("auto_decompress", [False, True])
async def test_gzip_bomb_is_stopped_at_the_cap(server: Site, auto_decompress: bool) -> None:
    if not auto_decompress:
        with pytest.raises(TooLarge):
            await get(server.url("/bomb"))
        return
    # A caller's session that inflates by itself: the decoded bytes are counted too.
    async with aiohttp.ClientSession(auto_decompress=True) as session:
        with pytest.raises(TooLarge):
            await get(server.url("/bomb"), session=session)


@pytest.mark.parametrize("kind", ["gzip", "zlib", "raw"])
async def test_compressed_bodies_are_decoded(server: Site, kind: str) -> None:
    result = await fetch(server.url(f"/encoded/{kind}"), max_bytes=CAP, timeout=10, file_dir="/x")
    assert b"".join(result.chunks) == LIST
    assert result.size == len(LIST)


async def test_truncated_or_unknown_encoding_fails(server: Site) -> None:
    with pytest.raises(FetchError, match="truncated"):
        await get(server.url("/encoded/truncated"))
    with pytest.raises(FetchError, match="Content-Encoding"):
        await get(server.url("/encoded/br"))


async def test_trickling_server_fails_by_the_total_timeout(server: Site) -> None:
    started = time.monotonic()
    with pytest.raises(FetchTimeout, match=r"within 0\.5 s"):
        await get(server.url("/trickle"), timeout=0.5)
    assert time.monotonic() - started < 3.0


async def test_three_redirects_are_followed(server: Site) -> None:
    result = await fetch(
        server.url(f"/redirect/{MAX_REDIRECTS}"), max_bytes=CAP, timeout=10, file_dir="/x"
    )
    assert b"".join(result.chunks) == LIST
    assert result.final_url == server.url("/redirect/0")


async def test_four_redirects_fail(server: Site) -> None:
    with pytest.raises(TooManyRedirects, match="more than 3 times"):
        await get(server.url(f"/redirect/{MAX_REDIRECTS + 1}"))


async def test_redirect_to_file_url_is_refused(server: Site) -> None:
    with pytest.raises(RedirectRefused, match="other than http or https"):
        await get(server.url("/to?url=file:///etc/passwd"))


async def test_https_to_http_redirect_is_refused(server: Site, tls_server: Site) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session:
        ok = await get(tls_server.url("/to?url=/list"), session=session)
        assert ok.final_url == tls_server.url("/list")
        assert b"".join(ok.chunks) == LIST
        with pytest.raises(RedirectRefused, match="https to plain http"):
            await get(tls_server.url(f"/to?url={server.url('/list')}"), session=session)
    assert server.seen == []  # the downgrade was never requested


@pytest.mark.parametrize("code", [404, 500])
async def test_error_status_fails_with_the_code(server: Site, code: int) -> None:
    with pytest.raises(HttpStatusError, match=f"HTTP {code}") as info:
        await get(server.url(f"/status/{code}"))
    assert info.value.status == code
    assert SECRET not in str(info.value)


async def test_connection_refused_is_a_fetch_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FetchError, match="download failed"):
        await get(f"http://127.0.0.1:{port}/list")


# ----------------------------------------------------------- redirect decision
def test_redirect_target_rules() -> None:
    assert redirect_target("http://a/x/y", "z") == "http://a/x/z"
    assert redirect_target("http://a/x", "https://b/l") == "https://b/l"
    assert redirect_target("https://a/x", "//b/l") == "https://b/l"
    assert redirect_target("https://a/x", "https://b/l") == "https://b/l"
    for bad in ("file:///etc/passwd", "ftp://b/l", "data:,1.2.3.4", "https://:80/l"):
        with pytest.raises(RedirectRefused):
            redirect_target("http://a/x", bad)
    with pytest.raises(RedirectRefused, match="https to plain http"):
        redirect_target("https://a/x", "http://a/x")
    with pytest.raises(RedirectRefused, match="without a Location"):
        redirect_target("http://a/x", None)


# ----------------------------------------------------------------- URL checks
@pytest.mark.parametrize(
    "url", ["ftp://example.org/l", "data:,1.2.3.4", "/etc/passwd", "gopher://x/", "http:///l"]
)
async def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(UnsupportedUrl) as info:
        await get(url)
    assert isinstance(info.value, InvalidArgument)
    assert info.value.dbus_name.endswith(".InvalidArgument")


async def test_bad_limits_and_validators_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        await get("http://127.0.0.1/", max_bytes=0)
    with pytest.raises(InvalidArgument):
        await get("http://127.0.0.1/", timeout=0)
    with pytest.raises(InvalidArgument, match="etag"):
        await get("http://127.0.0.1/", etag='"a"\r\nX-Evil: 1')


# ------------------------------------------------------------------------ file
@pytest.fixture
def lists(tmp_path: Path) -> Path:
    root = tmp_path / "lists"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(LIST)
    (root / "sub" / "b.txt").write_bytes(LIST)
    (tmp_path / "outside.txt").write_bytes(LIST)
    (root / "escape").symlink_to(tmp_path / "outside.txt")
    (root / "alias").symlink_to(root / "a.txt")
    return root


async def test_file_inside_file_dir_is_read(lists: Path) -> None:
    result = await get(f"file://{lists}/sub/b.txt", file_dir=str(lists))
    assert result.size == len(LIST)
    result = await fetch(f"file://{lists}/alias", max_bytes=CAP, timeout=5, file_dir=str(lists))
    assert b"".join(result.chunks) == LIST
    assert result.final_url == f"file://{lists}/a.txt"
    again = await fetch(
        f"file://{lists}/a.txt", max_bytes=CAP, timeout=5, file_dir=str(lists), etag=result.etag
    )
    assert again.not_modified
    assert again.chunks == ()


async def test_file_dir_reached_through_a_symlink_works(lists: Path, tmp_path: Path) -> None:
    (tmp_path / "link-to-lists").symlink_to(lists)
    result = await fetch(
        f"file://{tmp_path}/link-to-lists/a.txt",
        max_bytes=CAP,
        timeout=5,
        file_dir=str(tmp_path / "link-to-lists"),
    )
    assert b"".join(result.chunks) == LIST


@pytest.mark.parametrize(
    "tail",
    ["/../outside.txt", "/%2e%2e/outside.txt", "/escape", "", "/sub/.."],
    ids=["dotdot", "encoded-dotdot", "symlink", "dir-itself", "dir-via-dotdot"],
)
async def test_file_outside_file_dir_is_refused(lists: Path, tail: str) -> None:
    with pytest.raises(UnsupportedUrl, match="below the configured"):
        await get(f"file://{lists}{tail}", file_dir=str(lists))


@pytest.mark.parametrize(
    "tail", ["/../outside.txt", "/escape", "", "/sub/.."], ids=["dotdot", "symlink", "dir", "up"]
)
def test_check_url_applies_the_same_rule_before_any_download(lists: Path, tail: str) -> None:
    check_url(f"file://{lists}/a.txt", str(lists))
    check_url(f"file://{lists}/not-there-yet.txt", str(lists))  # may appear later
    check_url("https://user:pw@127.0.0.1:1/list", str(lists))
    with pytest.raises(UnsupportedUrl, match="below the configured"):
        check_url(f"file://{lists}{tail}", str(lists))
    bad = ("ftp://127.0.0.1/l", "file:///etc/shadow", "http:///l", "http://[::1/l", "http://h:x/")
    for url in (*bad, "http://h:99999/", "http://h:-1/"):
        with pytest.raises(UnsupportedUrl) as info:
            check_url(url, str(lists))
        assert info.value.dbus_name.endswith(".InvalidArgument")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pw@host.example/list", "https://***@host.example/list"),
        ("http://token@127.0.0.1:8080/l?x=1", "http://***@127.0.0.1:8080/l?x=1"),
        ("http://a:b@c@host/l", "http://***@host/l"),
        ("https://host.example/list", "https://host.example/list"),
        ("file:///srv/lists/a.txt", "file:///srv/lists/a.txt"),
        ("http://[::1/x", "(a malformed URL)"),
    ],
)
def test_redact_url_hides_any_userinfo(url: str, shown: str) -> None:
    assert redact_url(url) == shown


async def test_download_failures_are_download_failed_without_credentials() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://alice:hunter22@127.0.0.1:{port}/list"
    with pytest.raises(FetchError) as info:
        await get(url)
    assert info.value.dbus_name == "org.bangui.Daemon1.Error.DownloadFailed"
    # aiohttp's InvalidURL quotes the whole URL: what the fetcher reports is scrubbed
    said = _describe(aiohttp.InvalidURL(url), urllib.parse.urlsplit(url))
    assert said.startswith("InvalidURL: http://***")
    assert said.endswith(f"@127.0.0.1:{port}/list")
    assert "alice" not in said
    assert "hunter22" not in said


async def test_outside_path_is_refused(lists: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedUrl, match="below the configured"):
        await get(f"file://{tmp_path}/outside.txt", file_dir=str(lists))
    with pytest.raises(UnsupportedUrl, match="host"):
        await get(f"file://example.org{lists}/a.txt", file_dir=str(lists))


async def test_file_limits_and_kinds(lists: Path) -> None:
    with pytest.raises(TooLarge):
        await get(f"file://{lists}/a.txt", file_dir=str(lists), max_bytes=len(LIST) - 1)
    with pytest.raises(UnsupportedUrl, match="regular file"):
        await get(f"file://{lists}/sub", file_dir=str(lists))
    os.mkfifo(lists / "fifo")  # must not hang the open
    with pytest.raises(UnsupportedUrl, match="regular file"):
        await get(f"file://{lists}/fifo", file_dir=str(lists))
    with pytest.raises(FetchError, match="No such file"):
        await get(f"file://{lists}/missing.txt", file_dir=str(lists))
