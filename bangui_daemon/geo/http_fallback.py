"""Optional HTTP fallback for addresses the MMDB cannot answer (ip-api.com batch style).

Off by default: the daemon builds one only when the config enables it, because it
sends banned addresses to a third party.

Why it is shaped this way:

- The free ip-api.com batch endpoint allows 15 requests a minute and bans clients
  that keep exceeding it, so every request first takes a slot from a sliding-window
  limiter (:class:`SlidingWindowLimiter`) that can never allow more than
  ``requests_per_minute`` requests in any 60 s window, and the service's own
  ``X-Rl`` (requests left) / ``X-Ttl`` (seconds to reset) headers and HTTP 429 pause
  it further.
- It is called from a periodic task, so it never waits for the limit: it sends what
  the limit allows now and returns the rest as *not attempted* (``source="none"``);
  the next tick retries those.
- It never raises into the caller for network or server trouble. Addresses it asked
  about and got no answer for come back *failed*: ``found`` False, ``source="api"``,
  which a cache stores as an expiring negative entry. After one failed request the
  rest of the call is not attempted, so a dead server does not burn the quota.

Answers:

============================  =========  ===================================
outcome                       ``found``  ``source``
============================  =========  ===================================
answered                      True       ``"api"``
"fail" / server or net error  False      ``"api"``  (cache as negative)
non-global or malformed       False      ``"api"``  (never sent)
over the rate limit / 429     False      ``"none"`` (not attempted: retry)
============================  =========  ===================================

Works with aiohttp 3.8 (Debian bookworm) and 3.14: only long-standing API is used
(``ClientSession``, ``ClientTimeout``, ``StreamReader.iter_chunked``).
"""

from __future__ import annotations

import collections
import ipaddress
import json
import re
import time
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, Final

import aiohttp
import structlog

from bangui_daemon import __version__
from bangui_daemon.errors import InvalidArgument
from bangui_daemon.geo.lookup import GeoAnswer, normalise_ip

__all__ = [
    "GEO_API_RATE_LIMITED",
    "GEO_API_REQUEST_FAILED",
    "IP_API_BATCH_URL",
    "MAX_BATCH_SIZE",
    "HttpGeoFallback",
    "SlidingWindowLimiter",
]

log = structlog.get_logger()

GEO_API_REQUEST_FAILED: Final = "geo_api_request_failed"
GEO_API_RATE_LIMITED: Final = "geo_api_rate_limited"

IP_API_BATCH_URL: Final = (
    "http://ip-api.com/batch?fields=status,message,countryCode,country,as,org,query"
)
MAX_BATCH_SIZE: Final = 100  # the service's per-request maximum
WINDOW_SECONDS: Final = 60.0
MAX_RESPONSE_BYTES: Final = 1 << 20  # 100 answers are ~15 KiB; refuse anything silly
_MAX_TEXT: Final = 200

_AS_FIELD = re.compile(r"AS(\d{1,10})\b\s*(.*)", re.DOTALL)
_COUNTRY_CODE = re.compile(r"[A-Z]{2}")


class SlidingWindowLimiter:
    """At most ``limit`` acquisitions in any ``window``-second interval.

    It keeps the times of the acquisitions of the last ``window`` seconds and grants a
    new one at time ``t`` only while fewer than ``limit`` of them lie in
    ``(t - window, t]``. So for any interval ``(s - window, s]``: its last grant, at
    ``t <= s``, saw all earlier grants of the interval (they are ``> s - window >=
    t - window``) and there were fewer than ``limit``; the interval holds at most
    ``limit``. ``pause_until`` adds a hard stop (the server asked us to wait).
    """

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("limit must be at least 1 and window positive")
        self._limit = limit
        self._window = window
        self._clock = clock
        self._grants: collections.deque[float] = collections.deque()
        self._paused_until = float("-inf")

    def try_acquire(self) -> bool:
        """Take a slot now if one is free; never waits."""
        now = self._clock()
        while self._grants and self._grants[0] <= now - self._window:
            self._grants.popleft()
        if now < self._paused_until or len(self._grants) >= self._limit:
            return False
        self._grants.append(now)
        return True

    def pause_until(self, when: float) -> None:
        """Grant nothing before ``when`` (clock time)."""
        self._paused_until = max(self._paused_until, when)


class _RequestFailedError(Exception):
    """One batch request got no usable answer; the message is for the log."""


class _RateLimitedError(Exception):
    """The server refused the batch for rate (HTTP 429): nothing was resolved."""


class HttpGeoFallback:
    """Resolves addresses through an ip-api.com style ``/batch`` endpoint.

    ``url`` is the full endpoint, fields included (see :data:`IP_API_BATCH_URL`).
    ``clock`` must be monotonic; tests inject a fake one.
    """

    def __init__(
        self,
        url: str,
        requests_per_minute: int = 15,
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = 10.0,
        batch_size: int = MAX_BATCH_SIZE,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH_SIZE}")
        if not url.startswith(("http://", "https://")):
            raise ValueError("the geo API URL must be http:// or https://")
        self._url = url
        # Logged instead of the URL, which may carry an API key (pro.ip-api.com).
        self._host = urllib.parse.urlsplit(url).hostname or ""
        self._clock = clock
        self._timeout = timeout
        self._batch_size = batch_size
        self._limiter = SlidingWindowLimiter(requests_per_minute, WINDOW_SECONDS, clock)
        self._session: aiohttp.ClientSession | None = None

    async def resolve(self, ips: Sequence[str]) -> list[GeoAnswer]:
        """One answer per address, in the order asked (see the module table)."""
        answers: dict[str, GeoAnswer] = {}
        keys: list[str] = []
        # Text sent to the service -> our keys for it (``::ffff:a.b.c.d`` and
        # ``a.b.c.d`` share one query; duplicates are asked once).
        wanted: dict[str, list[str]] = {}
        for ip in ips:
            key, query = _classify(ip)
            keys.append(key)
            if query is None:
                answers[key] = GeoAnswer(ip=key, source="api")
            elif key not in wanted.setdefault(query, []):
                wanted[query].append(key)

        pending = list(wanted)
        for start in range(0, len(pending), self._batch_size):
            if not self._limiter.try_acquire():
                log.debug(GEO_API_RATE_LIMITED, not_attempted=len(pending) - start)
                break
            batch = pending[start : start + self._batch_size]
            failed = False
            try:
                resolved = await self._query(batch)
            except _RateLimitedError:
                log.info(GEO_API_RATE_LIMITED, not_attempted=len(pending) - start)
                break
            except _RequestFailedError as exc:
                log.warning(GEO_API_REQUEST_FAILED, host=self._host, error=str(exc))
                resolved, failed = {}, True
            for query in batch:
                item = resolved.get(query)
                for key in wanted[query]:
                    answers[key] = _answer(key, item)
            if failed:
                break  # keep the quota for a later tick rather than hit a failing server
        return [answers.get(k) or GeoAnswer(ip=k, source="none") for k in keys]

    async def _query(self, batch: list[str]) -> dict[str, dict[str, Any]]:
        """POST one batch; return the service's item for each query it answered."""
        try:
            async with self._get_session().post(self._url, json=batch) as resp:
                self._obey_server_limit(resp)
                if resp.status == 429:
                    raise _RateLimitedError
                if resp.status != 200:
                    raise _RequestFailedError(f"HTTP {resp.status}")
                body = await _read_capped(resp)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _RequestFailedError(f"{type(exc).__name__}: {exc}") from None
        try:
            data = json.loads(body)
        except ValueError:
            raise _RequestFailedError("the answer is not JSON") from None
        if not isinstance(data, list):
            raise _RequestFailedError("the answer is not a JSON list")

        items: dict[str, dict[str, Any]] = {}
        for query, item in zip(batch, data, strict=False):
            if not isinstance(item, dict):
                continue
            echoed = item.get("query")
            # The service echoes each query; without the field, answers are in order.
            if isinstance(echoed, str) and echoed != query:
                if echoed in batch:
                    items.setdefault(echoed, item)
                continue
            items.setdefault(query, item)
        return items

    def _obey_server_limit(self, resp: aiohttp.ClientResponse) -> None:
        """Honour ``X-Rl``/``X-Ttl`` and 429: the server's window may differ from ours."""
        remaining = _int_header(resp, "X-Rl")
        ttl = _int_header(resp, "X-Ttl")
        if resp.status == 429 or remaining == 0:
            wait = ttl if ttl is not None and 0 <= ttl <= 3600 else WINDOW_SECONDS
            self._limiter.pause_until(self._clock() + wait)

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily inside the running loop (aiohttp 3.8 warns otherwise).
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                headers={"User-Agent": f"bangui-daemon/{__version__}"},
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP session; a later resolve() opens a new one."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> HttpGeoFallback:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def _classify(ip: str) -> tuple[str, str | None]:
    """(cache key, text to send) or (key, None) for what must not be sent: malformed
    or non-global addresses, which the service could only answer with "fail"."""
    try:
        key = normalise_ip(ip)
    except InvalidArgument:
        return ip, None
    addr = ipaddress.ip_address(key)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # the service knows IPv4, not its mapped form
    return key, (str(addr) if addr.is_global else None)


def _answer(ip: str, item: dict[str, Any] | None) -> GeoAnswer:
    """The service's item as an answer; a missing or "fail" item is a negative."""
    if item is None or item.get("status") != "success":
        return GeoAnswer(ip=ip, source="api")
    code = _text(item.get("countryCode")).upper()
    as_match = _AS_FIELD.fullmatch(_text(item.get("as")))
    return GeoAnswer(
        ip=ip,
        country_code=code if _COUNTRY_CODE.fullmatch(code) else "",
        country_name=_text(item.get("country")),
        asn=f"AS{int(as_match[1])}" if as_match else "",
        # Prefer the AS name (what an MMDB ASN database calls the organisation).
        org=(as_match[2].strip() if as_match else "") or _text(item.get("org")),
        source="api",
    )


def _text(value: object) -> str:
    return value.strip()[:_MAX_TEXT] if isinstance(value, str) else ""


def _int_header(resp: aiohttp.ClientResponse, name: str) -> int | None:
    try:
        return int(resp.headers.get(name, ""))
    except ValueError:
        return None


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise _RequestFailedError("the answer is too large")
        chunks.append(chunk)
    return b"".join(chunks)
