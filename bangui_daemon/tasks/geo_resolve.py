"""The geo_resolve task: resolve banned and recent addresses, then write the cache.

Runs every minute by default. It is the only place the (optional, rate-limited) HTTP
fallback is used, so a D-Bus call never waits for a third party; and it is the usual
writer of the answers and touches that lookups collected in memory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from bangui_daemon.models import TaskResult
from bangui_daemon.services.geo import GeoService

log = structlog.get_logger(__name__)

NAME = "geo_resolve"


class GeoResolve:
    def __init__(self, service: GeoService, addresses: Callable[[], Awaitable[list[str]]]) -> None:
        self._service = service
        self._addresses = addresses

    async def run(self) -> TaskResult:
        """Reload changed MMDB files, resolve what is not freshly cached, flush."""
        reloaded = self._service.maybe_reload()
        stats = await self._service.resolve_pending(await self._addresses())
        written = await self._service.flush()
        result: dict[str, object] = {
            **stats,
            "written": written["written"],
            "touched": written["touched"],
            "entries": self._service.entries,
            "database_reloaded": reloaded,
        }
        changed = stats["resolved"] or stats["fallback"] or stats["fallback_failed"]
        (log.info if changed or reloaded else log.debug)("geo_resolve_complete", **result)
        return result
