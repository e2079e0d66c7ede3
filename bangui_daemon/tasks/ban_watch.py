"""The ban_watch task: the ban watch's safety net, every `tasks.ban_watch` seconds.

New bans do not wait for it: services/ban_watch.py follows fail2ban's DB as it is
written. This tick reads fail2ban's counters when a ban may have been lifted or
hidden (and every few ticks regardless), and names the bans that were lifted; see
that module for why and at what cost. RunTask("ban_watch") runs one tick at once.
"""

from __future__ import annotations

from bangui_daemon.models import TaskResult
from bangui_daemon.services.ban_watch import BanWatch

NAME = "ban_watch"


class BanWatchTask:
    """One safety-net tick of the ban watch."""

    def __init__(self, watch: BanWatch) -> None:
        self._watch = watch

    async def run(self) -> TaskResult:
        return await self._watch.poll()
