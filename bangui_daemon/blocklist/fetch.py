"""Download one blocklist for the importer, within hard limits.

A blocklist URL comes from an admin, but the server behind it is not trusted: it may
be slow, huge, compressed into a bomb, or redirect somewhere it should not. Hence:

- Schemes: http and https; ``file://`` only for a path that, with symlinks and
  ``..`` resolved, lies below the configured ``file_dir`` (so a source cannot read
  ``/etc/shadow``). Anything else is `UnsupportedUrl` before any I/O; `check_url`
  applies the same rule when a source is stored, so it is refused at once.
- Credentials in a URL (``http://user:password@host/``) are sent as Basic auth and
  shown nowhere: `redact_url` is how a stored URL is displayed, and failure messages
  are scrubbed of them.
- Redirects are followed by hand (``allow_redirects=False``, the same in aiohttp 3.8
  and 3.14): at most `MAX_REDIRECTS`, only to http/https, never https -> http.
- Size: a ``Content-Length`` above the cap fails before reading; then the *decoded*
  bytes are counted while streaming. The default session is made with
  ``auto_decompress=False`` and gzip/deflate are inflated here with
  ``zlib``'s ``max_length``, so a gzip bomb never occupies more than one 64 KiB piece
  beyond the cap (aiohttp 3.8 would inflate a whole socket read at once, up to
  ~1000x its size). A caller's session that decompresses itself is accepted; its
  decoded bytes are counted the same way.
- Time: one deadline (``timeout``) covers connect, every redirect and the whole
  body, so a server trickling a byte a second fails on time; connecting has its own
  shorter bound.
- Conditional GET: ``If-None-Match`` / ``If-Modified-Since``; 304 -> ``not_modified``.

The body comes back as a tuple of chunks: the cap (50 MiB by default) makes holding
it once affordable, the parser takes the chunks as they are (no join, so no second
copy), and nothing is handed on before the download completed within its limits.
"""

from __future__ import annotations

import asyncio
import os
import stat
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from typing import Final

import aiohttp

from bangui_daemon import __version__
from bangui_daemon.errors import DownloadFailed, InvalidArgument

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "MAX_REDIRECTS",
    "USER_AGENT",
    "FetchError",
    "FetchResult",
    "FetchTimeout",
    "HttpStatusError",
    "RedirectRefused",
    "TooLarge",
    "TooManyRedirects",
    "UnsupportedUrl",
    "check_url",
    "fetch",
    "redact_url",
    "redirect_target",
]

MAX_REDIRECTS: Final = 3
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
USER_AGENT: Final = f"bangui-daemon/{__version__}"
CHUNK: Final = 64 * 1024
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_WEB_SCHEMES: Final = ("http", "https")


class FetchError(DownloadFailed):
    """A blocklist could not be downloaded; the message says why, never the body."""


class UnsupportedUrl(FetchError, InvalidArgument):
    """The URL's scheme or file path is not allowed (refused before any I/O)."""

    dbus_name = InvalidArgument.dbus_name  # the caller's mistake, not the download's


class RedirectRefused(FetchError):
    """The server redirected to a scheme we do not follow (file://, https -> http)."""


class TooManyRedirects(FetchError):
    """The server redirected more than `MAX_REDIRECTS` times."""

    def __init__(self) -> None:
        super().__init__(f"the server redirected more than {MAX_REDIRECTS} times")


class TooLarge(FetchError):
    """The (decoded) body is larger than the configured cap."""

    def __init__(self, max_bytes: int, how: str = "") -> None:
        super().__init__(f"the blocklist is larger than {max_bytes} bytes{how}")
        self.max_bytes = max_bytes


class HttpStatusError(FetchError):
    """The server answered with a status other than 2xx or 304."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the server answered HTTP {status}")
        self.status = status


class FetchTimeout(FetchError, TimeoutError):
    """The download (or the connect) did not finish in time."""


@dataclass(frozen=True, slots=True)
class FetchResult:
    """One download: the body's chunks, or `not_modified` with no chunks."""

    not_modified: bool
    chunks: tuple[bytes, ...]
    """The decoded body; hand it to `parse_blocklist` as is."""
    size: int
    """Decoded bytes in `chunks`."""
    etag: str | None
    """Validators to send next time (for a 304, the server's or the ones sent)."""
    last_modified: str | None
    final_url: str
    """After redirects; for ``file://``, the resolved path."""


async def fetch(
    url: str,
    *,
    max_bytes: int,
    timeout: float,  # noqa: ASYNC109 - one deadline over hops and body, set below
    file_dir: str,
    etag: str | None = None,
    last_modified: str | None = None,
    session: aiohttp.ClientSession | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> FetchResult:
    """Download `url` within `max_bytes` decoded bytes and `timeout` seconds overall.

    Raises a `FetchError` subclass for everything that goes wrong (`UnsupportedUrl`,
    `RedirectRefused`, `TooManyRedirects`, `TooLarge`, `HttpStatusError`,
    `FetchTimeout`, or plain `FetchError` for network and decoding failures), and
    `InvalidArgument` for bad limits or validators. `session` is borrowed, never
    closed; without one a private session is opened for this call.
    """
    if max_bytes < 1:
        raise InvalidArgument("max_bytes must be at least 1")
    if not timeout > 0 or not connect_timeout > 0:
        raise InvalidArgument("timeout and connect_timeout must be positive")
    for name, value in (("etag", etag), ("last_modified", last_modified)):
        if value is not None and not _header_safe(value):
            raise InvalidArgument(f"{name} is not a valid header value")
    parts = _check_url(url)

    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            if parts.scheme == "file":
                path = _resolve_file(parts, file_dir)
                return await asyncio.to_thread(_read_file, path, max_bytes, etag)
            http = _Http(max_bytes, connect_timeout, etag, last_modified)
            if session is not None:
                return await http.get(url, session)
            async with aiohttp.ClientSession(auto_decompress=False) as own:
                return await http.get(url, own)
    except TimeoutError:
        if deadline.expired():
            raise FetchTimeout(f"the download did not finish within {timeout:g} s") from None
        raise FetchTimeout(f"could not connect within {connect_timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise FetchError(f"the download failed: {_describe(exc, parts)}") from None


def check_url(url: str, file_dir: str) -> None:
    """Raise `UnsupportedUrl` for a URL that `fetch` would refuse whatever the server does.

    The scheme, the host, and for ``file://`` the path below `file_dir` (resolved now;
    `fetch` resolves it again, as a symlink may change in between).
    """
    parts = _check_url(url)
    if parts.scheme == "file":
        _resolve_file(parts, file_dir)


def redact_url(url: str) -> str:
    """`url` as shown to users and logs: any userinfo (``user:password@``) is ``***@``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "(a malformed URL)"
    _userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + host))


def redirect_target(current: str, location: str | None) -> str:
    """Return the absolute URL a redirect from `current` leads to, if we may follow it.

    Only http and https are followed, and never from https to http: a downgrade
    would let anyone on the path substitute the list.
    """
    if not location:
        raise RedirectRefused("the server redirected without a Location header")
    try:
        target = urllib.parse.urljoin(current, location.strip())
        parts = urllib.parse.urlsplit(target)
        hostname = parts.hostname
    except ValueError:
        raise RedirectRefused("the server redirected to a malformed URL") from None
    scheme = parts.scheme.lower()
    if scheme not in _WEB_SCHEMES:
        raise RedirectRefused("the server redirected to a scheme other than http or https")
    if scheme == "http" and urllib.parse.urlsplit(current).scheme.lower() == "https":
        raise RedirectRefused("the server redirected from https to plain http")
    if not hostname:
        raise RedirectRefused("the server redirected to a URL without a host")
    return target


# ------------------------------------------------------------------------ http
class _Http:
    """One conditional GET with manual redirects; state shared by the hops."""

    def __init__(
        self, max_bytes: int, connect_timeout: float, etag: str | None, last_modified: str | None
    ) -> None:
        self._max_bytes = max_bytes
        # The overall deadline is fetch()'s; aiohttp only bounds the connect.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout)
        self._etag = etag
        self._last_modified = last_modified
        self._headers = {"User-Agent": USER_AGENT}
        if etag is not None:
            self._headers["If-None-Match"] = etag
        if last_modified is not None:
            self._headers["If-Modified-Since"] = last_modified

    async def get(self, url: str, session: aiohttp.ClientSession) -> FetchResult:
        decode = not session.auto_decompress
        headers = dict(self._headers)
        if decode:  # offer only what _Decoder understands
            headers["Accept-Encoding"] = "gzip, deflate"
        for hop in range(MAX_REDIRECTS + 1):
            async with session.get(
                url, headers=headers, allow_redirects=False, timeout=self._timeout
            ) as resp:
                final_url = str(resp.url)
                if resp.status in _REDIRECT_STATUSES:
                    if hop == MAX_REDIRECTS:
                        raise TooManyRedirects
                    url = redirect_target(final_url, resp.headers.get("Location"))
                    continue
                if resp.status == 304:
                    return FetchResult(
                        not_modified=True,
                        chunks=(),
                        size=0,
                        etag=resp.headers.get("ETag", self._etag),
                        last_modified=resp.headers.get("Last-Modified", self._last_modified),
                        final_url=final_url,
                    )
                if not 200 <= resp.status < 300:
                    raise HttpStatusError(resp.status)
                try:
                    chunks, size = await self._read(resp, decode)
                except BaseException:
                    resp.close()  # do not drain (or pool) a connection we gave up on
                    raise
                return FetchResult(
                    not_modified=False,
                    chunks=chunks,
                    size=size,
                    etag=resp.headers.get("ETag"),
                    last_modified=resp.headers.get("Last-Modified"),
                    final_url=final_url,
                )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read(
        self, resp: aiohttp.ClientResponse, decode: bool
    ) -> tuple[tuple[bytes, ...], int]:
        cap = self._max_bytes
        length = resp.content_length
        if length is not None and length > cap:
            raise TooLarge(cap, " (by its Content-Length)")
        decoder = (
            _Decoder.for_encoding(resp.headers.get("Content-Encoding", "")) if decode else None
        )
        body = _Body(cap)
        received = 0
        async for data in resp.content.iter_any():
            received += len(data)
            if received > cap:  # compressed data that inflates to nothing is capped too
                raise TooLarge(cap)
            if decoder is None:
                body.add(data)
            else:
                for piece in decoder.feed(data):
                    body.add(piece)
        if decoder is not None:
            decoder.finish()
        return tuple(body.chunks), body.size


class _Body:
    """Collects decoded chunks and fails as soon as they exceed the cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.size = 0
        self.chunks: list[bytes] = []

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.cap:
            raise TooLarge(self.cap)
        if data:
            self.chunks.append(data)


class _Decoder:
    """gzip (multi-member) / deflate (zlib or raw) inflater yielding <= CHUNK pieces."""

    def __init__(self, name: str, wbits: int | None) -> None:
        self._name = name
        self._wbits = wbits  # None: deflate, zlib-wrapped or raw, decided on the 1st byte
        self._obj: zlib._Decompress | None = None
        self._members = 0

    @classmethod
    def for_encoding(cls, header: str) -> _Decoder | None:
        name = header.strip().lower()
        if name in ("", "identity"):
            return None
        if name in ("gzip", "x-gzip"):
            return cls("gzip", 16 + zlib.MAX_WBITS)
        if name == "deflate":
            return cls("deflate", None)
        raise FetchError("the server used a Content-Encoding other than gzip or deflate")

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            while data:
                obj = self._obj
                if obj is None:
                    if self._members and self._wbits is None:
                        raise FetchError("the deflate body has data after its end")
                    wbits = self._wbits
                    if wbits is None:  # RFC 9110 says zlib; some servers send raw deflate
                        wbits = zlib.MAX_WBITS if data[0] & 0x0F == 8 else -zlib.MAX_WBITS
                    obj = self._obj = zlib.decompressobj(wbits)
                out = obj.decompress(data, CHUNK)
                while True:
                    if out:
                        yield out
                    # At a member's end zlib keeps the rest in both unconsumed_tail and
                    # unused_data; one more decompress call would append it to
                    # unused_data again, doubling it at every member boundary.
                    if len(out) < CHUNK or obj.eof:
                        break
                    out = obj.decompress(obj.unconsumed_tail, CHUNK)
                data = b""
                if obj.eof:  # another gzip member may follow
                    data = obj.unused_data
                    self._obj = None
                    self._members += 1
        except zlib.error:
            raise FetchError(f"the body is not valid {self._name} data") from None

    def finish(self) -> None:
        if self._obj is not None:
            raise FetchError(f"the {self._name} body is truncated")


def _describe(exc: aiohttp.ClientError, parts: urllib.parse.SplitResult) -> str:
    """aiohttp's reason in short, without the URL's credentials (some messages quote it)."""
    text = str(exc)
    userinfo, at, _host = parts.netloc.rpartition("@")
    if at:
        for secret in {userinfo, urllib.parse.unquote(userinfo), *userinfo.split(":")}:
            if len(secret) >= 4:  # shorter ones would mangle the message, not hide much
                text = text.replace(secret, "***")
    name = type(exc).__name__
    return f"{name}: {text[:200]}" if text else name


# ------------------------------------------------------------------------ file
def _resolve_file(parts: urllib.parse.SplitResult, file_dir: str) -> str:
    """Return the real path a file:// URL names, if it lies below `file_dir`."""
    if parts.netloc not in ("", "localhost"):
        raise UnsupportedUrl("a file:// URL must not name a host")
    path = urllib.parse.unquote(parts.path)
    if not os.path.isabs(path) or "\0" in path:
        raise UnsupportedUrl("a file:// URL must hold an absolute path")
    base = os.path.realpath(file_dir)
    real = os.path.realpath(path)
    if real == base or os.path.commonpath((base, real)) != base:
        raise UnsupportedUrl("a file:// URL must point below the configured blocklist file_dir")
    return real


def _read_file(path: str, max_bytes: int, etag: str | None) -> FetchResult:
    """Read a local list with the same cap; its ETag is inode, size and mtime."""
    final_url = "file://" + urllib.parse.quote(path)
    try:
        # O_NOFOLLOW: the last component cannot have become a symlink since the check;
        # O_NONBLOCK: a FIFO cannot hang the open (it is refused just below).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise FetchError(f"cannot open the blocklist file: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsupportedUrl("a file:// URL must name a regular file")
        tag = f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'
        modified = formatdate(st.st_mtime, usegmt=True)
        if etag == tag:
            return FetchResult(
                not_modified=True,
                chunks=(),
                size=0,
                etag=tag,
                last_modified=modified,
                final_url=final_url,
            )
        if st.st_size > max_bytes:
            raise TooLarge(max_bytes)
        body = _Body(max_bytes)  # the file may grow while it is read
        while data := os.read(fd, CHUNK):
            body.add(data)
    except OSError as exc:
        if isinstance(exc, FetchError):
            raise
        raise FetchError(f"cannot read the blocklist file: {exc.strerror}") from None
    finally:
        os.close(fd)
    return FetchResult(
        not_modified=False,
        chunks=tuple(body.chunks),
        size=body.size,
        etag=tag,
        last_modified=modified,
        final_url=final_url,
    )


# ----------------------------------------------------------------------- input
def _check_url(url: str) -> urllib.parse.SplitResult:
    try:
        parts = urllib.parse.urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises for a port that is not 0..65535
    except ValueError:
        raise UnsupportedUrl("the blocklist URL is malformed") from None
    scheme = parts.scheme.lower()
    if scheme == "file":
        return parts._replace(scheme=scheme)
    if scheme not in _WEB_SCHEMES:
        shown = f"{scheme[:20]!r}" if scheme else "none"
        raise UnsupportedUrl(f"only http, https and file URLs are allowed, the scheme is {shown}")
    if not hostname:
        raise UnsupportedUrl("an http or https URL must name a host")
    return parts


def _header_safe(value: str) -> bool:
    return value.isascii() and all(" " <= c <= "~" or c == "\t" for c in value)
