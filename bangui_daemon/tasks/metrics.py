"""The metrics task: refresh what a scrape must not wait for, write the textfile.

Registered only when `[metrics]` has a listener or a textfile. Each run asks fail2ban
for every jail's bantime, findtime and maxretry (three short commands a jail),
recounts active bans per country, and rewrites node_exporter's textfile atomically.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from bangui_daemon.models import TaskResult
from bangui_daemon.services.metrics import MetricsService

log = structlog.get_logger(__name__)

NAME = "metrics"


class MetricsRefresh:
    def __init__(self, service: MetricsService, textfile: Callable[[], str]) -> None:
        self._service = service
        self._textfile = textfile

    async def run(self) -> TaskResult:
        result: dict[str, object] = dict(await self._service.refresh())
        path = self._textfile()
        if path:
            result["textfile_bytes"] = await self._service.write_textfile(path)
        log.debug("metrics_refreshed", **result)
        return result
