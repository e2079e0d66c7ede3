"""The crowdsec_pull and crowdsec_push tasks: the scheduler's hands on the bridge.

Registered only when `[crowdsec]` names a Local API: pull every `pull_interval`
seconds with a bouncer key, push every second with machine credentials.
"""

from __future__ import annotations

from bangui_daemon.models import TaskResult
from bangui_daemon.services.crowdsec import CrowdsecBridge

PULL = "crowdsec_pull"
PUSH = "crowdsec_push"
PUSH_INTERVAL = 1.0


class CrowdsecPull:
    def __init__(self, bridge: CrowdsecBridge) -> None:
        self._bridge = bridge

    async def run(self) -> TaskResult:
        return await self._bridge.pull()


class CrowdsecPush:
    def __init__(self, bridge: CrowdsecBridge) -> None:
        self._bridge = bridge

    async def run(self) -> TaskResult:
        return await self._bridge.push()
