"""One never-ban decision for every path that bans (issue 9, finding 1).

BanIp and imports ask the same `SafetyPolicy`, which reads at each decision what
holds then: the jail's ignoreip from fail2ban, the config, the host's addresses.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import replace
from typing import cast

import pytest

from bangui_daemon.blocklist import safety
from bangui_daemon.blocklist.host import HostAddresses
from bangui_daemon.blocklist.safety import SafetyPolicy
from bangui_daemon.config import BlocklistConfig
from bangui_daemon.errors import Refused
from bangui_daemon.events import EventHub
from bangui_daemon.fail2ban.client import Fail2banClient, JailCounts
from bangui_daemon.services.bans import BanService
from bangui_daemon.services.daemon_state import DaemonState


class FakeFail2ban:
    """Jail sshd with an ignoreip that tests change, as `addignoreip` would."""

    def __init__(self) -> None:
        self.ignore: dict[str, list[str]] = {"sshd": ["127.0.0.1/8", "45.98.0.0/24"]}
        self.banned: list[str] = []
        self.asked = 0

    async def ignoreip(self, jail: str) -> list[str]:
        self.asked += 1
        return list(self.ignore[jail])

    async def ban(self, jail: str, ips: list[str]) -> int:
        self.banned += ips
        return len(ips)

    async def version(self) -> str:
        return "1.0"

    async def jails(self) -> list[str]:
        return list(self.ignore)

    async def jail_counts(self, jail: str) -> JailCounts:
        return JailCounts(0, 0, 0, 0)


class FakeHost(HostAddresses):
    def __init__(self) -> None:
        super().__init__(set())
        self.now = ["127.0.0.1"]

    def current(self) -> list[str]:
        return list(self.now)


@pytest.fixture
def parts() -> tuple[FakeFail2ban, FakeHost, list[BlocklistConfig], SafetyPolicy]:
    f2b, host = FakeFail2ban(), FakeHost()
    config = [BlocklistConfig(allowlist=("45.99.0.0/24",))]
    policy = SafetyPolicy(lambda: config[0], cast(Fail2banClient, f2b), host)
    return f2b, host, config, policy


async def test_each_decision_sees_what_holds_now(
    parts: tuple[FakeFail2ban, FakeHost, list[BlocklistConfig], SafetyPolicy],
) -> None:
    f2b, host, config, policy = parts
    assert await policy.refusal("sshd", "45.98.0.7") == "ignoreip"
    assert await policy.refusal("sshd", "45.99.0.7") == "allowlist"
    assert await policy.refusal("sshd", "45.97.0.1") is None
    f2b.ignore["sshd"].append("45.97.0.1")  # fail2ban-client set sshd addignoreip
    assert await policy.refusal("sshd", "45.97.0.1") == "ignoreip"
    assert await policy.refusal("sshd", "45.96.0.1") is None
    host.now.append("45.96.0.1")  # a VPN came up
    assert await policy.refusal("sshd", "45.96.0.1") == "host_address"
    assert await policy.refusal("sshd", "45.95.0.0/24") is None
    config[0] = replace(config[0], min_prefix_v4=25)  # a SIGHUP reload
    assert await policy.refusal("sshd", "45.95.0.0/24") == "too_wide"
    assert await policy.refusal("sshd", "203.0.113.7") == "documentation"
    assert f2b.asked == 9  # one ignoreip question per decision


async def test_host_names_in_ignoreip_protect_what_they_resolve_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fail2ban keeps names in ignoreip as written and resolves them; so does the policy."""
    f2b, asked = FakeFail2ban(), []
    f2b.ignore["sshd"] = ["127.0.0.0/8", "office.example", "gone.example", "slow.example"]

    async def resolve(name: str) -> list[str]:
        asked.append(name)
        if name == "gone.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if name == "slow.example":
            await asyncio.sleep(0 if fast else 60)
        known = {"office.example": ["45.94.0.1", "2a01:4f8:94::1"], "slow.example": ["45.93.0.1"]}
        return known.get(name, [])

    policy = SafetyPolicy(BlocklistConfig, cast(Fail2banClient, f2b), FakeHost(), resolve)
    fast = True
    assert await policy.refusal("sshd", "45.94.0.1") == "ignoreip"
    assert await policy.refusal("sshd", "2a01:4f8:94::1") == "ignoreip"
    assert await policy.refusal("sshd", "45.93.0.1") == "ignoreip"
    assert await policy.refusal("sshd", "45.94.0.2") is None
    assert sorted(set(asked)) == ["gone.example", "office.example", "slow.example"]
    # A name whose lookup hangs costs RESOLVE_TIMEOUT and protects nothing; the others
    # still do.
    monkeypatch.setattr(safety, "RESOLVE_TIMEOUT", 0.05)
    fast = False
    assert await policy.refusal("sshd", "45.93.0.1") is None
    assert await policy.refusal("sshd", "45.94.0.1") == "ignoreip"


async def test_banip_refuses_the_jails_ignoreip_and_leaves_fail2ban_alone(
    parts: tuple[FakeFail2ban, FakeHost, list[BlocklistConfig], SafetyPolicy],
) -> None:
    f2b, _host, _config, policy = parts
    bans = BanService(
        cast(Fail2banClient, f2b), DaemonState(EventHub()), lambda: "x", policy.refusal
    )
    bans.reconcile(await bans.read_counts(), time.time())  # the jails, as the watch does
    with pytest.raises(Refused, match="ignoreip"):
        await bans.ban_ip("sshd", "45.98.0.7")
    with pytest.raises(Refused, match="documentation"):
        await bans.ban_ip("sshd", "198.51.100.7")
    assert f2b.banned == []
    assert await bans.ban_ip("sshd", "45.97.0.1") is True
    assert f2b.banned == ["45.97.0.1"]
