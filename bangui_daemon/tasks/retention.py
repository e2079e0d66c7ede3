"""Retention tasks: delete what is older than a number of days; 0 days keeps all.

history_purge drops archived events past `archive.retention_days`. geo_cache_cleanup
forgets addresses nobody asked about within `geo.retention_days`: without it the
cache grows by every address ever banned or looked up; an address that comes back is
simply resolved again, with current data.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from bangui_daemon.models import TaskResult
from bangui_daemon.services.geo import GeoService
from bangui_daemon.services.history import HistoryService

log = structlog.get_logger(__name__)

HISTORY_PURGE: Final = "history_purge"
GEO_CACHE_CLEANUP: Final = "geo_cache_cleanup"
DAY: Final = 86400


class RetentionTask:
    """Runs `delete(cutoff)` with the cutoff the retention gives, and says so."""

    def __init__(
        self,
        name: str,
        retention_days: Callable[[], int],
        delete: Callable[[int], Awaitable[int]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._name = name
        self._retention_days = retention_days
        self._delete = delete
        self._clock = clock

    def _extra(self) -> TaskResult:
        return {}

    async def run(self) -> TaskResult:
        days = self._retention_days()
        if days <= 0:
            return {"deleted": 0, "retention_days": 0, **self._extra()}
        cutoff = int(self._clock()) - days * DAY
        deleted = await self._delete(cutoff)
        (log.info if deleted else log.debug)(
            f"{self._name}_complete", deleted=deleted, cutoff=cutoff
        )
        return {"deleted": deleted, "cutoff": cutoff, "retention_days": days, **self._extra()}


class HistoryPurge(RetentionTask):
    def __init__(
        self,
        history: HistoryService,
        retention_days: Callable[[], int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(HISTORY_PURGE, retention_days, history.purge_before, clock)


class GeoCacheCleanup(RetentionTask):
    """Pending touches are written before the delete, so a recent use is never lost."""

    def __init__(
        self,
        service: GeoService,
        retention_days: Callable[[], int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(GEO_CACHE_CLEANUP, retention_days, service.delete_stale, clock)
        self._service = service

    def _extra(self) -> TaskResult:
        return {"entries": self._service.entries}
