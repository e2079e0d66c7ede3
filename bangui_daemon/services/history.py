"""History use-cases: validate what callers ask, query the archive, shape answers.

Also the ban watch's listener that archives bans and unbans as they are seen, so an
event survives even when fail2ban deletes its rows before the next sync (a manual
unban deletes them at once).
"""

from __future__ import annotations

import ipaddress
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bangui_daemon.archive.events_repo import EventRow, EventsRepository, HistoryFilter, LiveEvent
from bangui_daemon.errors import InvalidArgument, quote
from bangui_daemon.fail2ban.ban_data import decode_data
from bangui_daemon.models import ORIGIN_BLOCKLIST, ORIGIN_SELFBLOCK
from bangui_daemon.services.bans import BanDiff, parse_address

MAX_BUCKETS = 10_000
IP_EVENTS_LIMIT = 1000
PURGE_BATCH = 5000  # events per purge transaction
DIMENSIONS = ("jail", "country", "asn", "ip")
# key -> D-Bus signature the caller must use
FILTER_KEYS = {
    "since": "x",
    "until": "x",
    "jail": "s",
    "ip": "s",
    "origin": "s",
    "country_code": "s",
    "action": "s",
}
_COUNTRY = re.compile(r"^[A-Z]{2}$")

TypedValue = tuple[str, object]  # (D-Bus signature, value)


@dataclass(frozen=True)
class HistoryEvent:
    action: str
    jail: str
    ip: str
    timeofban: int
    bancount: int
    bantime: int
    origin: str
    country_code: str
    asn: str
    org: str
    failures: int
    matches: list[str]


@dataclass(frozen=True)
class IpHistory:
    ip: str
    total_bans: int
    first_seen: int
    last_seen: int
    jails: list[str]
    country_code: str
    asn: str
    org: str
    events: list[HistoryEvent]


def _event(row: EventRow) -> HistoryEvent:
    failures, matches = decode_data(row.data)
    return HistoryEvent(
        action=row.action,
        jail=row.jail,
        ip=row.ip,
        timeofban=row.timeofban,
        bancount=row.bancount,
        bantime=row.bantime,
        origin=row.origin,
        country_code=row.country_code,
        asn=row.asn,
        org=row.org,
        failures=failures,
        matches=matches,
    )


def parse_filter(raw: Mapping[str, TypedValue]) -> HistoryFilter:
    """Validate GetHistory's filter; any unknown key or wrong type is InvalidArgument."""
    values: dict[str, object] = {}
    for key, (signature, value) in raw.items():
        expected = FILTER_KEYS.get(key)
        if expected is None:
            raise InvalidArgument(
                f"unknown filter key {quote(key)}; known: {', '.join(FILTER_KEYS)}"
            )
        if signature != expected:
            raise InvalidArgument(f"filter {key} must have type {expected}, got {signature}")
        values[key] = value
    ip = network = None
    if "ip" in values:
        text = str(values["ip"])
        try:
            if "/" in text:
                network = str(ipaddress.ip_network(text, strict=False))
            else:
                ip = str(ipaddress.ip_address(text))
        except ValueError:
            raise InvalidArgument(f"filter ip {quote(text)} is not an address or network") from None
    origin = values.get("origin")
    if origin is not None and origin not in (ORIGIN_BLOCKLIST, ORIGIN_SELFBLOCK):
        raise InvalidArgument("filter origin must be 'blocklist' or 'selfblock'")
    action = values.get("action")
    if action is not None and action not in ("ban", "unban"):
        raise InvalidArgument("filter action must be 'ban' or 'unban'")
    country = values.get("country_code")
    if country is not None:
        country = str(country).upper()
        if not _COUNTRY.match(country):
            raise InvalidArgument("filter country_code must be a two-letter ISO code")
    jail = values.get("jail")
    if jail is not None and not str(jail):
        raise InvalidArgument("filter jail must not be empty")
    since, until = values.get("since"), values.get("until")
    return HistoryFilter(
        since=None if since is None else int(str(since)),
        until=None if until is None else int(str(until)),
        jail=None if jail is None else str(jail),
        ip=ip,
        network=network,
        origin=None if origin is None else str(origin),
        country_code=None if country is None else str(country),
        action=None if action is None else str(action),
    )


class HistoryService:
    """Reads of the archive for the History interface and the archive's live writer.

    Integer arguments (pages, times, buckets, limits) arrive range-checked by the D-Bus
    edge (`bangui_daemon.dbus.validate`); what depends on more than one argument or on
    the clock is checked here.
    """

    def __init__(
        self,
        events: EventsRepository,
        origin: Callable[[str], str],
        request_sync: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._events = events
        self._origin = origin
        self._request_sync = request_sync
        self._clock = clock

    async def record_diff(self, diff: BanDiff) -> None:
        """Ban-watch listener: archive what was seen; fetch the details soon after."""
        if diff.baseline or not diff.changed:
            return
        now = int(self._clock())
        events = [
            LiveEvent("ban", b.jail, b.ip, b.timeofban, b.bantime, self._origin(b.jail))
            for b in diff.added
        ] + [
            LiveEvent("unban", b.jail, b.ip, now, b.bantime, self._origin(b.jail))
            for b in diff.removed
        ]
        await self._events.record_live(events)
        if diff.added:
            self._request_sync()  # copy fail2ban's rows (matches) before an unban drops them

    async def purge_before(self, cutoff: int) -> int:
        """Delete events older than `cutoff` in short batches; the number deleted.

        Short transactions keep the ban watch and the sync from waiting long; a purge
        interrupted half-way is simply continued by the next one.
        """
        return await self._events.purge_before(cutoff, PURGE_BATCH)

    async def history(
        self, raw_filter: Mapping[str, TypedValue], page: int, page_size: int
    ) -> tuple[list[HistoryEvent], int]:
        """GetHistory: one page (from 1), newest first, and the total."""
        rows, total = await self._events.page(
            parse_filter(raw_filter), (page - 1) * page_size, page_size
        )
        return [_event(r) for r in rows], total

    async def ip_history(self, ip: str) -> IpHistory:
        """GetIpHistory: everything the archive knows of one address."""
        address = parse_address(ip)
        summary = await self._events.ip_summary(address)
        rows = await self._events.for_ip(address, IP_EVENTS_LIMIT)
        events = [_event(r) for r in rows]
        total, first, last = summary if summary is not None else (0, None, None)
        geo = rows[0] if rows else None
        return IpHistory(
            ip=address,
            total_bans=int(total or 0),
            first_seen=int(first or 0),
            last_seen=int(last or 0),
            jails=await self._events.ip_jails(address),
            country_code=geo.country_code if geo else "",
            asn=geo.asn if geo else "",
            org=geo.org if geo else "",
            events=events,
        )

    async def timeline(self, since: int, bucket_seconds: int) -> list[tuple[int, int]]:
        """GetTimeline: (bucket start, bans) from `since` to now, empty buckets as 0.

        `since` 0 means "from the first archived ban" (or the last 24 h when empty).
        """
        now = int(self._clock())
        if since == 0:
            first = await self._events.first_ban_time()
            since = first if first is not None else now - 86400
            since -= since % bucket_seconds
        if since > now:
            return []
        buckets = math.ceil((now - since + 1) / bucket_seconds)
        if buckets > MAX_BUCKETS:
            raise InvalidArgument(
                f"{buckets} buckets asked for; at most {MAX_BUCKETS}: use larger buckets"
            )
        counts = await self._events.timeline(
            since, since + buckets * bucket_seconds, bucket_seconds
        )
        return [(since + i * bucket_seconds, counts.get(i, 0)) for i in range(buckets)]

    async def top(self, dimension: str, since: int, limit: int) -> list[tuple[str, int]]:
        """GetTop: the largest ban counts by one dimension."""
        if dimension not in DIMENSIONS:
            raise InvalidArgument(f"dimension must be one of {', '.join(DIMENSIONS)}")
        return await self._events.top(dimension, since, limit)
