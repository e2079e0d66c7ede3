"""The blocklist_import task: import every enabled source (default once a day)."""

from __future__ import annotations

from collections import Counter

from bangui_daemon.services.blocklists import BlocklistService
from bangui_daemon.tasks.scheduler import TaskResult

NAME = "blocklist_import"


class BlocklistImport:
    def __init__(self, service: BlocklistService) -> None:
        self._service = service

    async def run(self) -> TaskResult:
        """Import all enabled sources; a failing source does not stop the others."""
        results = await self._service.import_all()
        by_status = Counter(outcome.status for _id, outcome in results)
        return {
            "sources": len(results),
            "completed": by_status["completed"],
            "unchanged": by_status["unchanged"],
            "failed": by_status["failed"],
            "added": sum(o.added for _id, o in results),
            "removed": sum(o.removed for _id, o in results),
        }
