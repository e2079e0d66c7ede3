"""What fail2ban has banned right now, and banning/unbanning through it.

The ban watch (services/ban_watch.py) keeps one snapshot current: new bans come from
fail2ban's DB rows, lifted ones are named by their end time or by UnbanIp, and
fail2ban's counters check both; a jail's whole list is read only when the counters
cannot be explained otherwise. Every read method answers from the snapshot, so D-Bus
readers never wait on fail2ban's single-threaded socket.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace

import structlog

from bangui_daemon.errors import (
    Fail2banCommandError,
    Fail2banUnavailable,
    InvalidArgument,
    Refused,
    quote,
)
from bangui_daemon.fail2ban.client import BanEntry, Fail2banClient, JailCounts
from bangui_daemon.fail2ban.db_tail import BanRow
from bangui_daemon.models import ORIGIN_BLOCKLIST, ORIGIN_SELFBLOCK, ActiveBan, JailInfo
from bangui_daemon.services.daemon_state import DaemonState

log = structlog.get_logger(__name__)

RefusalCheck = Callable[[str, str], Awaitable[str | None]]  # (jail, address) -> reason
ASK_CHUNK = 1000  # addresses per `get JAIL banned ...`
SLACK = 1  # s: fail2ban's row rounds the time of ban, the list truncates it
GRACE = 5  # s after its end a ban is surely lifted (fail2ban checks once a second)


@dataclass
class BanDiff:
    """What one refresh saw change."""

    added: list[ActiveBan] = field(default_factory=list)
    removed: list[ActiveBan] = field(default_factory=list)
    baseline: bool = False  # the first snapshot: nothing is "new"

    @property
    def changed(self) -> int:
        return len(self.added) + len(self.removed)


@dataclass
class Reconciliation:
    """What fail2ban's counters said: bans lifted, and what to do about the rest."""

    diff: BanDiff
    lists: set[str] = field(default_factory=set)  # jails to list whole (new, restarted)
    unexplained: set[str] = field(default_factory=set)  # look again, then list
    ask: dict[str, list[str]] = field(default_factory=dict)  # due bans to ask about


def parse_address(ip: str) -> str:
    """Return the canonical text of one IP address, or raise InvalidArgument."""
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise InvalidArgument(f"{quote(ip)} is not an IP address") from None


class BanService:
    """Snapshot of fail2ban's jails and bans plus the ban/unban use-cases."""

    def __init__(
        self,
        client: Fail2banClient,
        state: DaemonState,
        blocklist_jail: Callable[[], str],
        refusal: RefusalCheck,
        before_unban: Callable[[str, list[str]], Awaitable[object]] | None = None,
        after_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._client = client
        self._state = state
        self._blocklist_jail = blocklist_jail
        self._refusal = refusal
        self._before_unban = before_unban
        self._after_change = after_change  # asks the ban watch for an early look
        self._counts: dict[str, JailCounts] = {}  # as last seen (ListJails)
        self._bans: dict[str, dict[str, ActiveBan]] = {}
        self._have_baseline = False
        self._version: str | None = None
        # per jail: fail2ban's counters and the DB rows seen when both last agreed
        self._agreed: dict[str, tuple[JailCounts, int]] = {}
        self._rows_seen: dict[str, int] = {}  # DB rows applied, per jail (a counter)
        self._expiry: list[tuple[int, str, str]] = []  # heap of (end, jail, ip)
        self._due: dict[str, dict[str, ActiveBan]] = {}  # may be lifted: ran out, unbanned
        self._unbanned: dict[str, set[str]] = {}  # lifted through UnbanIp, not yet seen gone
        self._fresh: set[tuple[str, str]] | None = None  # banned while a list is read

    # ---- reads (snapshot) -------------------------------------------------

    @property
    def jail_names(self) -> list[str]:
        return sorted(self._counts)

    def jails(self) -> list[JailInfo]:
        return [
            JailInfo(
                name=name,
                currently_banned=c.currently_banned,
                total_banned=c.total_banned,
                currently_failed=c.currently_failed,
                total_failed=c.total_failed,
            )
            for name, c in sorted(self._counts.items())
        ]

    def banned_ips(self) -> list[str]:
        """Every address banned in any jail (for geo resolving)."""
        return sorted({ip for per_jail in self._bans.values() for ip in per_jail})

    def active_bans(self) -> int:
        return sum(len(b) for b in self._bans.values())

    def origin(self, jail: str) -> str:
        return ORIGIN_BLOCKLIST if jail == self._blocklist_jail() else ORIGIN_SELFBLOCK

    def list_bans(self, jail: str, offset: int, limit: int) -> tuple[list[ActiveBan], int]:
        """ListBans: one page of active bans, newest first, and the total (offset and
        limit range-checked at the D-Bus edge, as for every paged method)."""
        if jail:
            self._require_jail(jail)
            bans: Iterable[ActiveBan] = self._bans.get(jail, {}).values()
        else:
            bans = (b for per_jail in self._bans.values() for b in per_jail.values())
        ordered = sorted(bans, key=lambda b: (-b.timeofban, b.jail, b.ip))
        return ordered[offset : offset + limit], len(ordered)

    def _require_jail(self, jail: str) -> None:
        if jail not in self._counts:
            if not self._state.fail2ban_connected and not self._counts:
                raise Fail2banUnavailable("fail2ban is not reachable, jails are unknown")
            raise InvalidArgument(f"unknown jail name {quote(jail)}")

    # ---- the ban watch's side (see services/ban_watch.py) --------------------

    async def read_counts(self) -> dict[str, JailCounts]:
        """fail2ban's jails and their counters: the safety net's only routine question,
        a few hundred bytes whatever the number of bans."""
        try:
            if not self._state.fail2ban_connected or self._version is None:
                self._version = await self._client.version()
            names = await self._client.jails()
            counts = {name: await self._client.jail_counts(name) for name in names}
        except Fail2banUnavailable:
            self._version = None
            self._state.set_fail2ban(False)
            raise
        self._state.set_fail2ban(True, self._version)
        return counts

    def apply_rows(self, rows: Iterable[BanRow], now: float) -> BanDiff:
        """Take bans read from fail2ban's DB into the snapshot; return the new ones.

        A row of a ban the snapshot holds (read twice, or listed first: the list
        truncates the time the row rounds) changes nothing; a newer ban of an address
        whose ban ran out is its lifting plus a new ban.
        """
        diff = BanDiff()
        for row in rows:
            per_jail = self._bans.get(row.jail)
            if per_jail is None:
                continue  # a jail not listed yet: the next poll lists it whole
            self._rows_seen[row.jail] = self._rows_seen.get(row.jail, 0) + 1
            if row.bantime >= 0 and row.timeofban + row.bantime <= now:
                continue  # already over (an old row read again)
            old = per_jail.get(row.ip)
            if old is not None and row.timeofban <= old.timeofban + 1:
                continue
            ban = ActiveBan(row.jail, row.ip, row.timeofban, row.bantime)
            self._put(ban)
            if self._fresh is not None:
                self._fresh.add((row.jail, row.ip))
            if old is not None:
                diff.removed.append(old)
            diff.added.append(ban)
            counts = self._counts.get(row.jail)
            if counts is not None:  # ListJails moves with ListBans, not a poll later
                self._counts[row.jail] = replace(
                    counts,
                    currently_banned=counts.currently_banned + (old is None),
                    total_banned=counts.total_banned + 1,
                )
        return diff

    def reconcile(
        self,
        counts: Mapping[str, JailCounts],
        now: float,
        asked: Mapping[str, Mapping[str, bool]] | None = None,
        *,
        only: Collection[str] | None = None,
    ) -> Reconciliation:
        """Explain fail2ban's counters with what the snapshot knows, lifting the bans
        that can be named; say which jails need a question or a full list.

        Per jail: bans fail2ban counted but the DB did not show (`unseen`), and bans
        it holds fewer than the snapshot (`missing`), which must be the bans whose time
        ran out or that UnbanIp lifted (`due`). `asked` holds fail2ban's answers about
        due bans (`get JAIL banned ...`): those not banned are lifted. `only` limits
        the look to some jails (a second look).
        """
        out = Reconciliation(BanDiff(baseline=not self._have_baseline))
        for name, c in counts.items():
            if only is not None and name not in only:
                continue
            snapshot = self._bans.get(name)
            agreed = self._agreed.get(name)
            if snapshot is None or agreed is None or c.total_banned < agreed[0].total_banned:
                out.lists.add(name)  # new jail, or fail2ban restarted it
                continue
            answers = (asked or {}).get(name)
            for ip, banned in (answers or {}).items():
                ban = snapshot.get(ip)
                if not banned and ban is not None and ban == self._due.get(name, {}).get(ip):
                    self._drop(ban)
                    out.diff.removed.append(ban)
            due = self._due_bans(name, now)
            unseen = (c.total_banned - agreed[0].total_banned) - (
                self._rows_seen.get(name, 0) - agreed[1]
            )
            missing = len(snapshot) - c.currently_banned
            if unseen > 0 or missing < 0 or missing > len(due):
                out.unexplained.add(name)  # rows in flight, or changes the DB did not show
                continue
            if missing:
                # lifted for sure: unbanned through us, or run out long enough ago that
                # fail2ban's once-a-second check has lifted it; the rest is asked about
                hinted = self._unbanned.get(name, set())
                sure = [b for ip, b in due.items() if ip in hinted or b.expires <= now - GRACE]
                if len(sure) < len(due) and answers is None:
                    out.ask[name] = sorted(ip for ip in due if ip not in hinted)
                    continue
                if missing != len(sure):
                    out.unexplained.add(name)
                    continue
                for ban in sure:
                    self._drop(ban)
                    out.diff.removed.append(ban)
            self._agreed[name] = (c, self._rows_seen.get(name, 0))
        if only is None:
            for gone in set(self._bans) - set(counts):  # jail removed by a fail2ban reload
                out.diff.removed.extend(self._bans[gone].values())
                self._forget(gone)
        self._counts = dict(counts)
        return out

    async def ask_banned(self, jail: str, ips: list[str]) -> list[bool]:
        """Whether fail2ban still bans each of `ips` (bans due to be lifted)."""
        flags: list[bool] = []
        for start in range(0, len(ips), ASK_CHUNK):
            flags += await self._client.is_banned(jail, ips[start : start + ASK_CHUNK])
        return flags

    async def read_list(self, jail: str) -> list[BanEntry]:
        """A jail's whole ban list: only when its counters cannot be explained."""
        return await self._client.banned_with_time(jail)

    def settled(self, now: float) -> bool:
        """Whether the counters were explained for every jail, no ban is due to be
        lifted, and the connection to fail2ban is up: then only a write of fail2ban's
        DB that brought no ban row (an unban deletes rows) calls for the counters."""
        return (
            self._have_baseline
            and self._client.connected
            and self._agreed.keys() == self._bans.keys()
            and not any(self._due.values())
            and (not self._expiry or self._expiry[0][0] > now + SLACK)
        )

    def begin_list(self, jail: str) -> int:
        """A full list of `jail` is about to be read: note the bans the DB shows
        meanwhile; return the count of its rows seen so far (for `apply_list`)."""
        self._fresh = set()
        self._bans.setdefault(jail, {})
        return self._rows_seen.setdefault(jail, 0)

    def apply_list(
        self, jail: str, entries: Iterable[BanEntry], counts: JailCounts, rows_seen: int
    ) -> BanDiff:
        """Replace one jail's bans with the list fail2ban gave; `counts` and `rows_seen`
        are from before the list was asked for, so bans made meanwhile are explained."""
        fresh, self._fresh = self._fresh or set(), None
        old = self._bans.get(jail, {})
        baseline = not self._have_baseline
        diff = BanDiff(baseline=baseline)
        listed: dict[str, ActiveBan] = {}
        for e in entries:
            ban = old.get(e.ip)
            if ban is None or abs(ban.timeofban - e.timeofban) > 1:
                ban = ActiveBan(jail, e.ip, e.timeofban, e.bantime)
            listed[e.ip] = ban
        for ip, ban in old.items():
            if ip not in listed and (jail, ip) in fresh:
                listed[ip] = ban  # banned after the list was taken
        self._bans[jail] = {}
        self._due.pop(jail, None)
        self._unbanned.pop(jail, None)
        for ban in listed.values():
            self._put(ban)
        if not baseline:
            diff.added.extend(b for ip, b in listed.items() if old.get(ip) is not b)
            diff.removed.extend(b for ip, b in old.items() if listed.get(ip) is not b)
        self._agreed[jail] = (counts, rows_seen)
        return diff

    def end_list(self) -> None:
        """The list read failed: stop noting."""
        self._fresh = None

    def mark_baseline(self) -> None:
        """Every jail was listed once: from now on a change is news."""
        self._have_baseline = True

    def _put(self, ban: ActiveBan) -> None:
        self._bans.setdefault(ban.jail, {})[ban.ip] = ban
        self._due.setdefault(ban.jail, {}).pop(ban.ip, None)
        self._unbanned.get(ban.jail, set()).discard(ban.ip)
        if ban.bantime >= 0:
            heapq.heappush(self._expiry, (ban.timeofban + ban.bantime, ban.jail, ban.ip))

    def _drop(self, ban: ActiveBan) -> None:
        per_jail = self._bans.get(ban.jail, {})
        if per_jail.get(ban.ip) is ban:
            del per_jail[ban.ip]
        self._due.get(ban.jail, {}).pop(ban.ip, None)
        self._unbanned.get(ban.jail, set()).discard(ban.ip)

    def _forget(self, jail: str) -> None:
        self._bans.pop(jail, None)
        self._due.pop(jail, None)
        self._unbanned.pop(jail, None)
        self._agreed.pop(jail, None)
        self._rows_seen.pop(jail, None)

    def _due_bans(self, jail: str, now: float) -> dict[str, ActiveBan]:
        """Bans of `jail` that fail2ban may have lifted: run out, or unbanned by us."""
        heap = self._expiry
        while heap and heap[0][0] <= now + SLACK:
            _end, name, ip = heapq.heappop(heap)
            ban = self._bans.get(name, {}).get(ip)
            if ban is not None and ban.expires != -1 and ban.expires <= now + SLACK:
                self._due.setdefault(name, {})[ip] = ban
        due = self._due.setdefault(jail, {})
        snapshot = self._bans.get(jail, {})
        for ip in [ip for ip, ban in due.items() if snapshot.get(ip) is not ban]:
            del due[ip]
        return due

    # ---- writes -------------------------------------------------------------

    async def ban_ip(self, jail: str, ip: str) -> bool:
        """Ban one address in `jail`; True when fail2ban did not have it yet."""
        address = parse_address(ip)
        self._require_jail(jail)
        try:
            # Asked at each ban: the jail's ignoreip and the host's addresses as of now.
            reason = await self._refusal(jail, address)
            if reason is not None:
                raise Refused(f"refusing to ban {address}: {reason}")
            newly = await self._client.ban(jail, [address])
        except Fail2banCommandError as exc:
            raise InvalidArgument(f"fail2ban refused the ban: {exc.remote_message}") from exc
        log.info("ban_requested", jail=jail, ip=address, newly_banned=bool(newly))
        self._after_change()
        return newly > 0

    async def unban_ip(self, jail: str, ip: str) -> list[str]:
        """Lift the ban of `ip` in `jail` ("" = every jail); return the jails it left."""
        address = parse_address(ip)
        if jail:
            self._require_jail(jail)
            candidates = [jail]
        else:
            candidates = list(self._counts) or await self._client.jails()
        if self._before_unban is not None:
            # fail2ban deletes an unbanned address's rows: archive them first, once
            # fail2ban has written those of the bans it holds now (see capture_ip).
            try:
                live = [name for name in candidates if address in self._bans.get(name, {})]
                await self._before_unban(address, live)
            except Exception:
                log.exception("archive_before_unban_failed", ip=address)
        removed = [name for name in candidates if await self._client.unban(name, [address]) > 0]
        for name in removed:  # the ban watch names these lifts without a full list
            ban = self._bans.get(name, {}).get(address)
            if ban is not None:
                self._due.setdefault(name, {})[address] = ban
                self._unbanned.setdefault(name, set()).add(address)
        log.info("unban_requested", jail=jail or "*", ip=address, removed_from=removed)
        self._after_change()
        return removed
