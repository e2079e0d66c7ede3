"""The history_purge task: drop archived events older than the retention.

Batches keep each transaction short so the ban watch and the sync never wait long;
a purge interrupted half-way is simply continued by the next run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from bangui_daemon.archive.events_repo import EventsRepository
from bangui_daemon.tasks.scheduler import TaskResult

log = structlog.get_logger(__name__)

NAME = "history_purge"
BATCH = 5000
DAY = 86400


class HistoryPurge:
    def __init__(
        self,
        events: EventsRepository,
        retention_days: Callable[[], int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._events = events
        self._retention_days = retention_days
        self._clock = clock

    async def run(self) -> TaskResult:
        """Delete what is older than the retention; 0 days keeps everything."""
        days = self._retention_days()
        if days <= 0:
            return {"deleted": 0, "retention_days": 0}
        cutoff = int(self._clock()) - days * DAY
        deleted = await self._events.purge_before(cutoff, BATCH)
        (log.info if deleted else log.debug)(
            "history_purge_complete", deleted=deleted, cutoff=cutoff
        )
        return {"deleted": deleted, "cutoff": cutoff, "retention_days": days}
