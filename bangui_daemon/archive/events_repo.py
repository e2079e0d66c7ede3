"""ban_events: record live events, query history, purge old events.

Filters are passed in already validated (services/history.py); this module only
turns them into SQL with bound parameters, choosing shapes the indexes serve.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bangui_daemon.archive.db import Archive, Row

HOUR = 3600  # the bucket of ban_event_hours
MERGE_BATCH = 5000  # rows folded into the main ip index per transaction
# Bounds beyond this are counted exactly: an hour edge computed from them could leave
# SQLite's int64 (D-Bus passes any int64 as since/until).
TIME_LIMIT = 2**62
EVENT_COLUMNS = (
    "e.id, e.action, e.jail, e.ip, e.timeofban, e.bantime, e.bancount, e.data, e.origin, "
    # org only while the cache still gives the event's own ASN
    "e.country_code, e.asn, CASE WHEN g.found = 1 AND g.asn = e.asn THEN g.org ELSE '' END"
)


@dataclass(frozen=True)
class EventRow:
    id: int
    action: str
    jail: str
    ip: str
    timeofban: int
    bantime: int
    bancount: int
    data: bytes | str | None
    origin: str
    country_code: str
    asn: str
    org: str


@dataclass(frozen=True)
class LiveEvent:
    """A ban or unban seen by the ban watch or made through D-Bus."""

    action: str
    jail: str
    ip: str
    timeofban: int
    bantime: int
    origin: str


@dataclass(frozen=True)
class HistoryFilter:
    """Validated GetHistory filter; None means "not filtered"."""

    since: int | None = None
    until: int | None = None
    jail: str | None = None
    ip: str | None = None  # one canonical address
    network: str | None = None  # a canonical CIDR
    origin: str | None = None
    country_code: str | None = None
    action: str | None = None


def _ip_in_network(ip: str, network: str) -> int:
    try:
        return int(ipaddress.ip_address(ip) in ipaddress.ip_network(network))
    except ValueError:
        return 0


def _text_prefix(network: str) -> str | None:
    """An index-usable text prefix that every IPv4 address of `network` starts with."""
    net = ipaddress.ip_network(network)
    if net.version != 4 or net.prefixlen < 8:
        return None
    # at most three octets: a /32's four would need a dot after the last one
    octets = str(net.network_address).split(".")[: min(net.prefixlen // 8, 3)]
    return ".".join(octets) + "."


def _and(conds: Sequence[str]) -> str:
    return (" WHERE " + " AND ".join(conds)) if conds else ""


def _ip_term(cond: str, params: list[Any]) -> tuple[str, list[Any]]:
    """`cond` on ip, served by both partial ip indexes (see migration 0004)."""
    both = f"((e.ip_indexed = 1 AND {cond}) OR (e.ip_indexed = 0 AND {cond}))"
    return both, [*params, *params]


def _where(f: HistoryFilter) -> tuple[str, list[Any]]:
    """Return (WHERE clause, params) over ban_events AS e."""
    conds: list[str] = []
    params: list[Any] = []
    by_ip = f.ip is not None or f.network is not None
    # An address matches a handful of rows: when one is given it must drive the plan,
    # so "+" keeps the planner (which has no statistics) off the time and jail indexes;
    # a country's (country_code, timeofban) index also beats the jail one.
    time_plus = "+" if by_ip else ""
    jail_plus = "+" if by_ip or f.country_code is not None else ""
    if f.ip is not None:
        term, term_params = _ip_term("e.ip = ?", [f.ip])
        conds.append(term)
        params.extend(term_params)
    if f.network is not None:
        prefix = _text_prefix(f.network)
        if prefix is not None:  # narrow with the ip indexes first
            # '/' sorts right after '.'
            term, term_params = _ip_term("e.ip >= ? AND e.ip < ?", [prefix, prefix[:-1] + "/"])
            conds.append(term)
            params.extend(term_params)
        conds.append("ip_in_network(e.ip, ?)")
        params.append(f.network)
    if f.country_code is not None and by_ip:
        conds.append("+e.country_code = ?")
        params.append(f.country_code)
    elif f.country_code is not None:
        # "!= ''" lets the planner prove the partial country index applies
        conds.append("e.country_code != '' AND e.country_code = ?")
        params.append(f.country_code)
    if f.since is not None:
        conds.append(f"{time_plus}e.timeofban >= ?")
        params.append(f.since)
    if f.until is not None:
        conds.append(f"{time_plus}e.timeofban < ?")
        params.append(f.until)
    if f.jail is not None:
        conds.append(f"{jail_plus}e.jail = ?")
        params.append(f.jail)
    if f.origin is not None:
        conds.append("e.origin = ?")
        params.append(f.origin)
    if f.action is not None:
        conds.append("e.action = ?")
        params.append(f.action)
    return _and(conds), params


def _total_from_hours(f: HistoryFilter) -> tuple[str, list[Any]] | None:
    """SQL for `total` from ban_event_hours, or None where an exact count is cheap anyway.

    Whole hours inside [since, until) come from the hourly counts; the partial hours
    at either end are counted exactly, so the figure is exact and costs at most two
    hours of rows however much of the archive the filter matches.
    """
    if f.ip is not None or f.network is not None:
        return None  # an address matches few rows
    if any(t is not None and abs(t) > TIME_LIMIT for t in (f.since, f.until)):
        return None
    table = "ban_event_hours" if f.country_code is None else "ban_event_country_hours"
    named = (
        ("country_code", f.country_code),
        ("jail", f.jail),
        ("action", f.action),
        ("origin", f.origin),
    )
    attrs = [(c, v) for c, v in named if v is not None]
    first_hour = None if f.since is None else -(-f.since // HOUR)  # first whole hour
    end_hour = None if f.until is None else f.until // HOUR  # hours before it are whole
    if first_hour is not None and end_hour is not None and first_hour >= end_hour:
        return None  # under two hours of rows: count them
    hour_conds = [f"{c} = ?" for c, _ in attrs]
    hour_params: list[Any] = [v for _, v in attrs]
    if first_hour is not None:
        hour_conds.append("hour >= ?")
        hour_params.append(first_hour)
    if end_hour is not None:
        hour_conds.append("hour < ?")
        hour_params.append(end_hour)
    parts = [f"(SELECT coalesce(sum(events), 0) FROM {table}{_and(hour_conds)})"]
    params = hour_params
    edges: list[tuple[int, int]] = []
    if f.since is not None and first_hour is not None and f.since < first_hour * HOUR:
        edges.append((f.since, first_hour * HOUR))
    if f.until is not None and end_hour is not None and end_hour * HOUR < f.until:
        edges.append((end_hour * HOUR, f.until))
    for start, end in edges:
        conds = ["e.timeofban >= ?", "e.timeofban < ?", *(f"e.{c} = ?" for c, _ in attrs)]
        parts.append(f"(SELECT count(*) FROM ban_events AS e{_and(conds)})")
        params = [*params, start, end, *(v for _, v in attrs)]
    return "SELECT " + " + ".join(parts), params


_IP_IS = _ip_term("e.ip = ?", [])[0]  # one address; bind it twice


class EventsRepository:
    """Queries and writes of ban_events; keeps the event count in memory."""

    def __init__(self, archive: Archive) -> None:
        self._archive = archive
        self.count = 0

    async def load(self) -> None:
        """Count once at start; writers keep the figure current afterwards."""
        await self._archive.reader_function("ip_in_network", 2, _ip_in_network)
        self.count = int(await self._archive.scalar("SELECT count(*) FROM ban_events") or 0)

    def added(self, n: int) -> None:
        self.count += n

    async def lifetime_totals(self) -> list[tuple[str, str, str, int]]:
        """(jail, action, origin, events) ever archived; purges do not lower them."""
        rows = await self._archive.fetchall(
            "SELECT jail, action, origin, events FROM ban_event_totals ORDER BY 1, 2, 3"
        )
        return [(str(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]

    async def record_live(self, events: Sequence[LiveEvent]) -> int:
        """Archive events seen live, in one transaction; return how many were new."""
        if not events:
            return 0
        async with self._archive.write() as conn:
            # A live ban's time is truncated (`banip --with-time`), fail2ban's row has it
            # rounded: when the sync already copied the row one second later, that is it.
            # rowcount, not total_changes: the hourly-count triggers' writes are not events
            cursor = await conn.executemany(
                "INSERT INTO ban_events (action, jail, ip, timeofban, bantime, origin, "
                "recorded_by, country_code, asn) "
                "SELECT :action, :jail, :ip, :t, :bantime, :origin, 'ban_watch', "
                "coalesce(g.country_code, ''), coalesce(g.asn, '') "
                "FROM (SELECT 1) LEFT JOIN geo_cache AS g ON g.ip = :ip AND g.found = 1 "
                "WHERE :action != 'ban' OR NOT EXISTS (SELECT 1 FROM ban_events "
                "  WHERE action = 'ban' AND jail = :jail AND ip = :ip AND timeofban = :t + 1) "
                "ON CONFLICT (timeofban, jail, ip, action) DO NOTHING",
                [
                    {
                        "action": e.action,
                        "jail": e.jail,
                        "ip": e.ip,
                        "t": e.timeofban,
                        "bantime": e.bantime,
                        "origin": e.origin,
                    }
                    for e in events
                ],
            )
            added = max(cursor.rowcount, 0)
            await cursor.close()
        self.count += added
        return added

    async def page(self, f: HistoryFilter, offset: int, limit: int) -> tuple[list[EventRow], int]:
        """One page of events, newest first, and the total matching the filter."""
        where, params = _where(f)
        join = " LEFT JOIN geo_cache AS g ON g.ip = e.ip"  # org only
        count_sql, count_params = _total_from_hours(f) or (
            f"SELECT count(*) FROM ban_events AS e{where}",
            params,
        )
        total = int(await self._archive.scalar(count_sql, count_params) or 0)
        rows = await self._archive.fetchall(
            f"SELECT {EVENT_COLUMNS} FROM ban_events AS e{join}{where} "
            "ORDER BY e.timeofban DESC, e.id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [EventRow(*r) for r in rows], total

    async def for_ip(self, ip: str, limit: int) -> list[EventRow]:
        """Every event of one address, newest first (bounded)."""
        rows = await self._archive.fetchall(
            f"SELECT {EVENT_COLUMNS} FROM ban_events AS e LEFT JOIN geo_cache AS g "
            f"ON g.ip = e.ip WHERE {_IP_IS} ORDER BY e.timeofban DESC, e.id DESC LIMIT ?",
            (ip, ip, limit),
        )
        return [EventRow(*r) for r in rows]

    async def ip_summary(self, ip: str) -> Row | None:
        """(total bans, first seen, last seen) of one address."""
        return await self._archive.fetchone(
            "SELECT count(*) FILTER (WHERE e.action = 'ban'), min(e.timeofban), "
            f"max(e.timeofban) FROM ban_events AS e WHERE {_IP_IS}",
            (ip, ip),
        )

    async def ip_jails(self, ip: str) -> list[str]:
        rows = await self._archive.fetchall(
            f"SELECT DISTINCT e.jail FROM ban_events AS e WHERE {_IP_IS} ORDER BY 1", (ip, ip)
        )
        return [str(r[0]) for r in rows]

    async def first_ban_time(self) -> int | None:
        value = await self._archive.scalar(
            "SELECT min(timeofban) FROM ban_events WHERE action = 'ban'"
        )
        return None if value is None else int(value)

    async def timeline(self, since: int, until: int, bucket: int) -> dict[int, int]:
        """Ban counts per bucket index ((timeofban - since) // bucket).

        Buckets of whole hours starting on an hour (GetTimeline with since 0 aligns to
        the bucket) are summed from ban_event_hours, however many events they hold.
        """
        if since % HOUR == 0 and bucket % HOUR == 0 and until % HOUR == 0:
            rows = await self._archive.fetchall(
                "SELECT (hour * 3600 - ?) / ?, sum(events) FROM ban_event_hours "
                "WHERE hour >= ? AND hour < ? AND action = 'ban' GROUP BY 1 "
                "HAVING sum(events) > 0",
                (since, bucket, since // HOUR, until // HOUR),
            )
            return {int(r[0]): int(r[1]) for r in rows}
        rows = await self._archive.fetchall(
            "SELECT (timeofban - ?) / ?, count(*) FROM ban_events "
            "WHERE timeofban >= ? AND timeofban < ? AND action = 'ban' GROUP BY 1",
            (since, bucket, since, until),
        )
        return {int(r[0]): int(r[1]) for r in rows}

    async def top(self, dimension: str, since: int, limit: int) -> list[tuple[str, int]]:
        """Largest ban counts by jail, ip, country or asn since `since`."""
        if dimension in ("jail", "country"):
            return await self._top_from_hours(dimension, since, limit)
        column = {"ip": "e.ip", "asn": "e.asn"}[dimension]
        rows = await self._archive.fetchall(
            f"SELECT {column}, count(*) AS n FROM ban_events AS e "
            f"WHERE e.action = 'ban' AND e.timeofban >= ? AND {column} != '' "
            f"GROUP BY {column} ORDER BY n DESC, {column} LIMIT ?",
            (since, limit),
        )
        return [(str(r[0]), int(r[1])) for r in rows]

    async def _top_from_hours(
        self, dimension: str, since: int, limit: int
    ) -> list[tuple[str, int]]:
        # whole hours from the hourly counts, the partial hour after `since` counted
        column, table = {
            "jail": ("jail", "ban_event_hours"),
            "country": ("country_code", "ban_event_country_hours"),
        }[dimension]
        since = min(since, TIME_LIMIT)  # nothing is that late; keeps the edge in int64
        first_hour = -(-since // HOUR)
        rows = await self._archive.fetchall(
            f"SELECT {column}, sum(n) AS total FROM ("
            f"  SELECT {column}, events AS n FROM {table} WHERE action = 'ban' AND hour >= ?"
            f"  UNION ALL SELECT {column}, 1 FROM ban_events "
            f"  WHERE action = 'ban' AND timeofban >= ? AND timeofban < ? AND {column} != ''"
            f") GROUP BY {column} HAVING total > 0 ORDER BY total DESC, {column} LIMIT ?",
            (first_hour, since, first_hour * HOUR, limit),
        )
        return [(str(r[0]), int(r[1])) for r in rows]

    async def distinct_ips_since(self, since: int, limit: int) -> list[str]:
        """Recent addresses (for geo resolving), newest first."""
        rows = await self._archive.fetchall(
            "SELECT ip FROM ban_events WHERE timeofban >= ? GROUP BY ip "
            "ORDER BY max(timeofban) DESC LIMIT ?",
            (since, limit),
        )
        return [str(r[0]) for r in rows]

    async def purge_before(self, cutoff: int, batch: int) -> int:
        """Delete events older than `cutoff` in short transactions; return the count."""

        def deleted(n: int) -> None:
            self.count -= n

        removed = await self._archive.change_in_batches(
            "DELETE FROM ban_events WHERE id IN "
            "(SELECT id FROM ban_events WHERE timeofban < ? ORDER BY timeofban LIMIT ?)",
            (cutoff,),
            batch,
            on_batch=deleted,
        )
        async with self._archive.write() as conn:  # hours emptied by the purge or by new
            await conn.execute("DELETE FROM ban_event_hours WHERE events = 0")  # answers
            await conn.execute("DELETE FROM ban_event_country_hours WHERE events = 0")
        return removed

    async def recent_ips(self) -> int:
        """Events still in the small "recent" ip index (see migration 0004)."""
        return int(
            await self._archive.scalar("SELECT count(*) FROM ban_events WHERE ip_indexed = 0") or 0
        )

    async def merge_recent_ips(self, batch: int = MERGE_BATCH) -> int:
        """Fold the recent ip index into the main one, in ip order, a batch per
        transaction; return the rows moved.

        Batches keep the writer free for the ban watch, and ip order lets each leaf of
        the main index take its rows together.
        """
        return await self._archive.change_in_batches(
            "UPDATE ban_events SET ip_indexed = 1 WHERE id IN (SELECT id FROM ban_events "
            "WHERE ip_indexed = 0 ORDER BY ip LIMIT ?)",
            (),
            batch,
        )
