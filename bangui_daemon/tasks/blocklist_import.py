"""The blocklist_import task: import the sources that are due (default once a day).

Its first run after the daemon starts imports every enabled source, so an import a
crash interrupted is taken up again at once. Later runs import the sources whose own
interval (or the task's, for a source without one) has passed; the task then runs as
often as the shortest interval needs, and conditional GET keeps an unchanged poll to
a request and a 304.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

from bangui_daemon.models import TaskResult
from bangui_daemon.services.blocklists import BlocklistService

NAME = "blocklist_import"


class BlocklistImport:
    def __init__(
        self,
        service: BlocklistService,
        default_interval: Callable[[], float],
        reschedule: Callable[[float], None],
    ) -> None:
        self._service = service
        self._default = default_interval
        self._reschedule = reschedule
        self._started = False

    async def run(self) -> TaskResult:
        """Import what is due; a failing source does not stop the others."""
        if self._started:
            results = await self._service.import_due(self._default())
        else:
            results = await self._service.import_all()
            self._started = True
        await self.adjust()
        by_status = Counter(outcome.status for _id, outcome in results)
        return {
            "sources": len(results),
            "completed": by_status["completed"],
            "unchanged": by_status["unchanged"],
            "failed": by_status["failed"],
            "added": sum(o.added for _id, o in results),
            "removed": sum(o.removed for _id, o in results),
            "reapplied": sum(o.reapplied for _id, o in results),
        }

    async def adjust(self) -> None:
        """Run as often as the shortest source interval needs (sources or config changed)."""
        shortest = await self._service.shortest_interval()
        self._reschedule(min(self._default(), shortest or math.inf))
