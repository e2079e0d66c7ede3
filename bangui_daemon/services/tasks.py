"""ListTasks and RunTask over whatever runs the tasks.

The scheduler lives with the tasks (their adapter onto the services); the D-Bus
edge reaches it only through this service and the `TaskRunner` shape, so the
arrows keep running one way.
"""

from __future__ import annotations

from typing import Protocol

from bangui_daemon.models import JobInfo, TaskResult


class TaskRunner(Protocol):
    """What the scheduler offers: its jobs' state and a run on demand."""

    def info(self) -> list[JobInfo]: ...

    async def run_now(self, name: str) -> tuple[str, TaskResult]: ...


class TaskService:
    def __init__(self, runner: TaskRunner) -> None:
        self._runner = runner

    def list_tasks(self) -> list[JobInfo]:
        """Every task with its interval and what its last run did."""
        return self._runner.info()

    async def run_task(self, name: str) -> tuple[str, TaskResult]:
        """Run `name` now: (status, result); NotFound or Busy as the runner says."""
        return await self._runner.run_now(name)
