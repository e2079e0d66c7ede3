"""The daemon's health as people and panels see it: the core interface's properties.

One place computes `State` from fail2ban's reachability and the tasks' last results,
so every change is published exactly once as PropertiesChanged.
"""

from __future__ import annotations

import time

import structlog

from bangui_daemon import __version__
from bangui_daemon.events import EventHub, PropertiesChanged

log = structlog.get_logger(__name__)

STARTING, RUNNING, DEGRADED, STOPPING = "starting", "running", "degraded", "stopping"


class DaemonState:
    """Holds the core properties and publishes what changes."""

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub
        self.version = __version__
        self.started_at = int(time.time())
        self._phase = STARTING
        self.fail2ban_connected = False
        self.fail2ban_version = ""
        self._failing_tasks: dict[str, str] = {}  # name -> its last error
        self.state = STARTING
        self.reason = ""

    def _reason(self) -> str:
        """Why the state is degraded, in words."""
        causes = [] if self.fail2ban_connected else ["fail2ban unreachable"]
        causes += [f"{name}: {error[:200]}" for name, error in sorted(self._failing_tasks.items())]
        return "; ".join(causes)

    def set_phase(self, phase: str) -> None:
        """Move between starting, running and stopping."""
        self._phase = phase
        self._recompute({})

    def set_fail2ban(self, connected: bool, version: str = "") -> None:
        """Record whether fail2ban answered; publish only real changes."""
        changed: dict[str, object] = {}
        if connected != self.fail2ban_connected:
            self.fail2ban_connected = connected
            changed["Fail2banConnected"] = connected
            log.info("fail2ban_connected" if connected else "fail2ban_disconnected")
        version = version if connected else ""
        if version != self.fail2ban_version:
            self.fail2ban_version = version
            changed["Fail2banVersion"] = version
        self._recompute(changed)

    def task_result(self, name: str, status: str, error: str = "") -> None:
        """Track tasks that fail, so State says "degraded" (and why) while any does."""
        if status == "ok":
            self._failing_tasks.pop(name, None)
        else:
            self._failing_tasks[name] = error or status
        self._recompute({})

    def _recompute(self, changed: dict[str, object]) -> None:
        if self._phase in (STARTING, STOPPING):
            state = self._phase
        elif not self.fail2ban_connected or self._failing_tasks:
            state = DEGRADED
        else:
            state = RUNNING
        reason = self._reason() if state == DEGRADED else ""
        if state != self.state or reason != self.reason:
            if state != self.state:
                changed["State"] = state
            self.state, self.reason = state, reason
            log.info("daemon_state_changed", state=state, reason=reason)
        if changed:
            self._hub.publish(PropertiesChanged(changed))
