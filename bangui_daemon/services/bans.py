"""What fail2ban has banned right now, and banning/unbanning through it.

The ban watch refreshes one snapshot cheaply (counts first, lists only for jails whose
counts moved); every read method answers from it, so D-Bus readers never wait on
fail2ban's single-threaded socket.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field

import structlog

from bangui_daemon.errors import (
    Fail2banCommandError,
    Fail2banUnavailable,
    InvalidArgument,
    Refused,
)
from bangui_daemon.fail2ban.client import Fail2banClient, JailCounts
from bangui_daemon.models import ORIGIN_BLOCKLIST, ORIGIN_SELFBLOCK, ActiveBan, JailInfo
from bangui_daemon.services.state import DaemonState

log = structlog.get_logger(__name__)

BanKey = tuple[str, str]  # (jail, ip)
RefusalCheck = Callable[[str, str], Awaitable[str | None]]  # (jail, address) -> reason
MAX_PAGE = 1000


@dataclass
class BanDiff:
    """What one refresh saw change."""

    added: list[ActiveBan] = field(default_factory=list)
    removed: list[ActiveBan] = field(default_factory=list)
    baseline: bool = False  # the first snapshot: nothing is "new"

    @property
    def changed(self) -> int:
        return len(self.added) + len(self.removed)


def parse_address(ip: str) -> str:
    """Return the canonical text of one IP address, or raise InvalidArgument."""
    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise InvalidArgument(f"{ip[:64]!r} is not an IP address") from None


class BanService:
    """Snapshot of fail2ban's jails and bans plus the ban/unban use-cases."""

    def __init__(
        self,
        client: Fail2banClient,
        state: DaemonState,
        blocklist_jail: Callable[[], str],
        refusal: RefusalCheck,
        before_unban: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        self._client = client
        self._state = state
        self._blocklist_jail = blocklist_jail
        self._refusal = refusal
        self._before_unban = before_unban
        self._counts: dict[str, JailCounts] = {}  # as last seen (ListJails)
        self._listed_counts: dict[str, JailCounts] = {}  # when each list was last read
        self._bans: dict[str, dict[str, ActiveBan]] = {}
        self._have_baseline = False

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
        """Return one page of active bans, newest first, and the total."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidArgument(f"limit must be from 1 to {MAX_PAGE}, got {limit}")
        if jail:
            self._require_jail(jail)
            bans: Iterable[ActiveBan] = self._bans.get(jail, {}).values()
        else:
            bans = (b for per_jail in self._bans.values() for b in per_jail.values())
        ordered = sorted(bans, key=lambda b: (-b.timeofban, b.jail, b.ip))
        return ordered[offset : offset + limit], len(ordered)

    def is_banned(self, jail: str, ip: str) -> bool:
        return ip in self._bans.get(jail, {})

    def _require_jail(self, jail: str) -> None:
        if jail not in self._counts:
            if not self._state.fail2ban_connected and not self._counts:
                raise Fail2banUnavailable("fail2ban is not reachable, jails are unknown")
            raise InvalidArgument(f"unknown jail name {jail[:64]!r}")

    # ---- refresh (ban watch) ----------------------------------------------

    async def refresh(self, defer: Collection[str] = ()) -> BanDiff:
        """Poll fail2ban and return what changed since the last refresh.

        Jails named in `defer` (the one an import is filling) get their counts only:
        re-reading a list of 100,000 bans every tick would hold fail2ban's single
        socket against the import itself. Their list is read once they settle.
        """
        try:
            version = await self._client.version()
            names = await self._client.jails()
            counts = {name: await self._client.jail_counts(name) for name in names}
            fetch = [
                n
                for n in names
                if n not in self._bans
                or (counts[n] != self._listed_counts.get(n) and n not in defer)
            ]
            lists = {n: await self._client.banned_with_time(n) for n in fetch}
        except Fail2banUnavailable:
            self._state.set_fail2ban(False)
            raise
        self._state.set_fail2ban(True, version)
        diff = BanDiff(baseline=not self._have_baseline)
        for name in fetch:
            old = self._bans.get(name, {})
            new = {e.ip: ActiveBan(name, e.ip, e.timeofban, e.bantime) for e in lists[name]}
            if not diff.baseline:
                diff.added.extend(b for ip, b in new.items() if ip not in old)
                diff.removed.extend(b for ip, b in old.items() if ip not in new)
            self._bans[name] = new
            self._listed_counts[name] = counts[name]
        for gone in set(self._bans) - set(names):  # jail removed by a fail2ban reload
            if not diff.baseline:
                diff.removed.extend(self._bans[gone].values())
            del self._bans[gone]
            self._listed_counts.pop(gone, None)
        self._counts = counts
        self._have_baseline = True
        return diff

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
            # fail2ban deletes an unbanned address's rows: archive them first.
            try:
                await self._before_unban(address)
            except Exception:
                log.exception("archive_before_unban_failed", ip=address)
        removed = [name for name in candidates if await self._client.unban(name, [address]) > 0]
        log.info("unban_requested", jail=jail or "*", ip=address, removed_from=removed)
        return removed
