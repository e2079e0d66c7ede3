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

EVENT_COLUMNS = (
    "e.id, e.action, e.jail, e.ip, e.timeofban, e.bantime, e.bancount, e.data, e.origin, "
    "COALESCE(g.country_code, ''), COALESCE(g.asn, ''), COALESCE(g.org, '')"
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


def _where(f: HistoryFilter) -> tuple[str, list[Any], bool]:
    """Return (WHERE clause, params, needs the geo join)."""
    conds: list[str] = []
    params: list[Any] = []
    if f.since is not None:
        conds.append("e.timeofban >= ?")
        params.append(f.since)
    if f.until is not None:
        conds.append("e.timeofban < ?")
        params.append(f.until)
    if f.jail is not None:
        conds.append("e.jail = ?")
        params.append(f.jail)
    if f.ip is not None:
        conds.append("e.ip = ?")
        params.append(f.ip)
    if f.network is not None:
        prefix = _text_prefix(f.network)
        if prefix is not None:  # narrow with the ip-led natural key first
            conds.append("e.ip >= ? AND e.ip < ?")
            params.extend([prefix, prefix[:-1] + "/"])  # '/' sorts right after '.'
        conds.append("ip_in_network(e.ip, ?)")
        params.append(f.network)
    if f.origin is not None:
        conds.append("e.origin = ?")
        params.append(f.origin)
    if f.action is not None:
        # "+": an action matches about half the archive, so it must never drive the
        # plan; the time, ip or jail index serves the page instead
        conds.append("+e.action = ?")
        params.append(f.action)
    geo = f.country_code is not None
    if geo:
        conds.append("g.country_code = ?")
        params.append(f.country_code)
    return (" WHERE " + " AND ".join(conds)) if conds else "", params, geo


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

    async def record_live(self, events: Sequence[LiveEvent]) -> int:
        """Archive events seen live, in one transaction; return how many were new."""
        if not events:
            return 0
        async with self._archive.write() as conn:
            before = conn.total_changes
            # A live ban's time is truncated (`banip --with-time`), fail2ban's row has it
            # rounded: when the sync already copied the row one second later, that is it.
            await conn.executemany(
                "INSERT INTO ban_events (action, jail, ip, timeofban, bantime, origin, "
                "recorded_by) SELECT :action, :jail, :ip, :t, :bantime, :origin, 'ban_watch' "
                "WHERE :action != 'ban' OR NOT EXISTS (SELECT 1 FROM ban_events "
                "  WHERE action = 'ban' AND jail = :jail AND ip = :ip AND timeofban = :t + 1) "
                "ON CONFLICT (ip, timeofban, jail, action) DO NOTHING",
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
            added = conn.total_changes - before
        self.count += added
        return added

    async def page(self, f: HistoryFilter, offset: int, limit: int) -> tuple[list[EventRow], int]:
        """One page of events, newest first, and the total matching the filter."""
        where, params, geo = _where(f)
        join = " LEFT JOIN geo_cache AS g ON g.ip = e.ip"
        total_join = join if geo else ""
        total = int(
            await self._archive.scalar(
                f"SELECT count(*) FROM ban_events AS e{total_join}{where}", params
            )
            or 0
        )
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
            "ON g.ip = e.ip WHERE e.ip = ? ORDER BY e.timeofban DESC, e.id DESC LIMIT ?",
            (ip, limit),
        )
        return [EventRow(*r) for r in rows]

    async def ip_summary(self, ip: str) -> Row | None:
        """(total bans, first seen, last seen) of one address."""
        return await self._archive.fetchone(
            "SELECT count(*) FILTER (WHERE action = 'ban'), min(timeofban), max(timeofban) "
            "FROM ban_events WHERE ip = ?",
            (ip,),
        )

    async def ip_jails(self, ip: str) -> list[str]:
        rows = await self._archive.fetchall(
            "SELECT DISTINCT jail FROM ban_events WHERE ip = ? ORDER BY jail", (ip,)
        )
        return [str(r[0]) for r in rows]

    async def first_ban_time(self) -> int | None:
        value = await self._archive.scalar(
            "SELECT min(timeofban) FROM ban_events WHERE action = 'ban'"
        )
        return None if value is None else int(value)

    async def timeline(self, since: int, until: int, bucket: int) -> dict[int, int]:
        """Ban counts per bucket index ((timeofban - since) // bucket)."""
        rows = await self._archive.fetchall(
            "SELECT (timeofban - ?) / ?, count(*) FROM ban_events "
            "WHERE timeofban >= ? AND timeofban < ? AND action = 'ban' GROUP BY 1",
            (since, bucket, since, until),
        )
        return {int(r[0]): int(r[1]) for r in rows}

    async def top(self, dimension: str, since: int, limit: int) -> list[tuple[str, int]]:
        """Largest ban counts by jail, ip, country or asn since `since`."""
        column = {"jail": "e.jail", "ip": "e.ip", "country": "g.country_code", "asn": "g.asn"}[
            dimension
        ]
        join = " JOIN geo_cache AS g ON g.ip = e.ip" if dimension in ("country", "asn") else ""
        extra = f" AND {column} != ''" if join else ""
        rows = await self._archive.fetchall(
            f"SELECT {column}, count(*) AS n FROM ban_events AS e{join} "
            f"WHERE e.action = 'ban' AND e.timeofban >= ?{extra} "
            f"GROUP BY {column} ORDER BY n DESC, {column} LIMIT ?",
            (since, limit),
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

        return await self._archive.delete_in_batches(
            "DELETE FROM ban_events WHERE id IN "
            "(SELECT id FROM ban_events WHERE timeofban < ? ORDER BY timeofban LIMIT ?)",
            (cutoff,),
            batch,
            on_batch=deleted,
        )
