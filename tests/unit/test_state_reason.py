"""State says why it is degraded, with the failing task's own error (issue 9, finding 5)."""

from __future__ import annotations

import pytest
import structlog.testing

from bangui_daemon.events import Event, EventHub, PropertiesChanged, TaskFinished
from bangui_daemon.services.daemon_state import RUNNING, DaemonState
from bangui_daemon.tasks.scheduler import Scheduler


async def test_a_failed_task_degrades_state_with_its_error_as_reason() -> None:
    hub = EventHub()
    published: list[Event] = []
    hub.subscribe(published.append)
    state = DaemonState(hub)
    state.set_phase(RUNNING)
    state.set_fail2ban(True, "1.0.2")
    scheduler = Scheduler(hub, state.task_result)

    disk_full = True

    async def full() -> dict[str, object]:
        if disk_full:
            raise OSError("database or disk is full")
        return {}

    async def fine() -> dict[str, object]:
        return {}

    scheduler.add("history_sync", 60, full, timeout=5)
    scheduler.add("geo_resolve", 60, fine, timeout=5)
    with structlog.testing.capture_logs() as logs:
        status, result = await scheduler.run_now("history_sync")
        await scheduler.run_now("geo_resolve")
    assert (status, result) == ("failed", {"error": "database or disk is full"})
    (failed,) = [r for r in logs if r["event"] == "task_failed"]
    assert failed["error"] == "database or disk is full"
    assert (state.state, state.reason) == ("degraded", "history_sync: database or disk is full")
    (changed,) = [r for r in logs if r["event"] == "daemon_state_changed"]
    assert changed["reason"] == "history_sync: database or disk is full"
    assert PropertiesChanged({"State": "degraded"}) in published
    (finished,) = [e for e in published if isinstance(e, TaskFinished) and e.status == "failed"]
    assert finished.details["error"] == "database or disk is full"

    state.set_fail2ban(False)
    assert state.reason == "fail2ban unreachable; history_sync: database or disk is full"
    state.set_fail2ban(True, "1.0.2")
    disk_full = False
    await scheduler.run_now("history_sync")
    assert (state.state, state.reason) == ("running", "")


@pytest.mark.parametrize("error", ["", "x" * 1000])
def test_reason_is_one_short_readable_line(error: str) -> None:
    state = DaemonState(EventHub())
    state.set_phase(RUNNING)
    state.set_fail2ban(True, "1.0.2")
    state.task_result("history_purge", "timeout", error)
    assert state.reason.startswith("history_purge: ")
    assert len(state.reason) <= len("history_purge: ") + 200
