"""GetStatus: one answer assembled from the snapshot, the archive and the geo cache."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bangui_daemon.services.bans import BanService
from bangui_daemon.services.daemon_state import DaemonState

Counter = Callable[[], Awaitable[int]]


async def _zero() -> int:
    return 0


@dataclass(frozen=True)
class Status:
    version: str
    state: str
    fail2ban_connected: bool
    fail2ban_version: str
    jails: list[str]
    active_bans: int
    archived_events: int
    last_history_sync: int
    geo_cache_entries: int
    started_at: int
    uptime: int


class StatusService:
    """Cheap status: every figure is kept current elsewhere, nothing is recounted here."""

    def __init__(
        self,
        state: DaemonState,
        bans: BanService,
        archived_events: Counter = _zero,
        last_history_sync: Counter = _zero,
        geo_cache_entries: Counter = _zero,
    ) -> None:
        self._state = state
        self._bans = bans
        self.archived_events = archived_events
        self.last_history_sync = last_history_sync
        self.geo_cache_entries = geo_cache_entries

    async def status(self) -> Status:
        """Return the figures GetStatus and the systemd STATUS= line show."""
        return Status(
            version=self._state.version,
            state=self._state.state,
            fail2ban_connected=self._state.fail2ban_connected,
            fail2ban_version=self._state.fail2ban_version,
            jails=self._bans.jail_names,
            active_bans=self._bans.active_bans(),
            archived_events=await self.archived_events(),
            last_history_sync=await self.last_history_sync(),
            geo_cache_entries=await self.geo_cache_entries(),
            started_at=self._state.started_at,
            uptime=int(time.time()) - self._state.started_at,
        )

    async def summary(self) -> str:
        """One line a person can read in `systemctl status`."""
        s = await self.status()
        if not s.fail2ban_connected:
            head = "fail2ban unreachable"
        elif self._state.reason:
            head = f"degraded ({self._state.reason})"
        elif s.last_history_sync:
            head = f"last sync {_ago(int(time.time()) - s.last_history_sync)}"
        else:
            head = "running"
        return f"{head}, {len(s.jails)} jails, {s.active_bans} bans"


def _ago(seconds: int) -> str:
    if seconds < 90:
        return f"{max(seconds, 0)} s ago"
    if seconds < 5400:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"
