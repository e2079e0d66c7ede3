"""The history_sync task: copy fail2ban's new ban rows into the archive.

Every `tasks.history_sync` seconds, and early when the ban watch archived a new ban
(its rows carry the matches an unban would delete); services/history_sync.py says how.
"""

from __future__ import annotations

from bangui_daemon.models import TaskResult
from bangui_daemon.services.history_sync import HistorySync

NAME = "history_sync"


class HistorySyncTask:
    """One incremental copy of fail2ban's rows."""

    def __init__(self, sync: HistorySync) -> None:
        self._sync = sync

    async def run(self) -> TaskResult:
        return await self._sync.run()
