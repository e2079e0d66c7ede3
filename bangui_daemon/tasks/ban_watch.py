"""The ban_watch task: notice bans appearing and disappearing, and say so.

Per-address signals are for people watching a handful of bans; a storm (more than
`PER_ADDRESS_LIMIT` changes in one tick) or a blocklist import is summarised in one
BansChanged, so the bus and its subscribers are never flooded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bangui_daemon.events import BanAdded, BanRemoved, BansChanged, EventHub
from bangui_daemon.services.bans import BanDiff, BanService
from bangui_daemon.tasks.scheduler import TaskResult

PER_ADDRESS_LIMIT = 100
NAME = "ban_watch"

DiffListener = Callable[[BanDiff], Awaitable[None]]


class BanWatch:
    """Refreshes the ban snapshot and publishes the difference."""

    def __init__(
        self,
        bans: BanService,
        hub: EventHub,
        listeners: list[DiffListener] | None = None,
        quiet_jail: Callable[[], str | None] = lambda: None,
        busy_jail: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._bans = bans
        self._hub = hub
        self._listeners = listeners or []
        self._quiet_jail = quiet_jail
        self._busy_jail = busy_jail

    def add_listener(self, listener: DiffListener) -> None:
        """Let another part (the archive) see every diff before signals go out."""
        self._listeners.append(listener)

    async def run(self) -> TaskResult:
        """One tick: refresh, record, publish."""
        busy = self._busy_jail()
        diff = await self._bans.refresh(defer=() if busy is None else (busy,))
        for listener in self._listeners:
            await listener(diff)
        result: dict[str, object] = {
            "added": len(diff.added),
            "removed": len(diff.removed),
            "active_bans": self._bans.active_bans(),
        }
        if diff.baseline or not diff.changed:
            return result
        quiet = self._quiet_jail()
        if diff.changed <= PER_ADDRESS_LIMIT:
            for ban in diff.added:
                if ban.jail != quiet:
                    self._hub.publish(BanAdded(ban.jail, ban.ip, ban.timeofban, ban.bantime))
            for ban in diff.removed:
                if ban.jail != quiet:
                    self._hub.publish(BanRemoved(ban.jail, ban.ip))
        self._hub.publish(BansChanged(len(diff.added), len(diff.removed)))
        return result
