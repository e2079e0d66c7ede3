"""The geo_cache_cleanup task: forget addresses nobody asked about for a long time.

Without it the cache grows by every address ever banned or looked up. An entry whose
``last_seen`` (refreshed by every use) is older than the retention (90 days by
default) is deleted; if the address comes back it is simply resolved again, with
current data. Pending touches are written first so a recent use is never lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import structlog

from bangui_daemon.services.geo import GeoService
from bangui_daemon.tasks.scheduler import TaskResult

log = structlog.get_logger(__name__)

NAME = "geo_cache_cleanup"
DAY: Final = 86400


class GeoCacheCleanup:
    def __init__(
        self,
        service: GeoService,
        retention_days: Callable[[], int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._service = service
        self._retention_days = retention_days
        self._clock = clock

    async def run(self) -> TaskResult:
        """Delete entries not seen within the retention; 0 days keeps everything."""
        days = self._retention_days()
        if days <= 0:
            return {"deleted": 0, "retention_days": 0, "entries": self._service.entries}
        cutoff = int(self._clock()) - days * DAY
        deleted = await self._service.delete_stale(cutoff)
        (log.info if deleted else log.debug)(
            "geo_cache_cleanup_complete", deleted=deleted, cutoff=cutoff
        )
        return {
            "deleted": deleted,
            "cutoff": cutoff,
            "retention_days": days,
            "entries": self._service.entries,
        }
