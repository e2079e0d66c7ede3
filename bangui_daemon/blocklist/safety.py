"""The never-ban rules as they stand at the moment of a decision, for every path
that bans (BanIp over D-Bus, blocklist imports, and whatever bans next).

Each decision builds its `BanPolicy` from what holds right then: the config's
allow-list and minimum prefixes (a SIGHUP reload is seen at once), the target jail's
``ignoreip`` asked from fail2ban (``addignoreip`` at run time is seen at once; host
names in it are resolved, as fail2ban does), and this host's addresses re-read from
the kernel (an address gained through DHCP or a VPN is protected from the next
decision on). Building one costs about a millisecond plus one fail2ban round trip
(and a lookup per name in ignoreip): once per BanIp, once per import.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from bangui_daemon.blocklist.host import HostAddresses
from bangui_daemon.blocklist.policy import BanPolicy, RefusalReason
from bangui_daemon.config import BlocklistConfig
from bangui_daemon.fail2ban.client import Fail2banClient

log = structlog.get_logger(__name__)

RESOLVE_TIMEOUT: Final = 2.0  # seconds for each of ignoreip's host names (in parallel)
_HOST_NAME: Final = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9][A-Za-z0-9.-]{0,252}")

Resolve = Callable[[str], Awaitable[list[str]]]


async def resolve_name(name: str) -> list[str]:
    """The addresses `name` resolves to (the system resolver, off the loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class SafetyPolicy:
    """The one home of the never-ban decision."""

    def __init__(
        self,
        config: Callable[[], BlocklistConfig],
        client: Fail2banClient,
        host: HostAddresses,
        resolve: Resolve = resolve_name,
    ) -> None:
        self._config = config
        self._client = client
        self._host = host
        self._resolve = resolve

    async def policy(self, jail: str) -> BanPolicy:
        """The policy for bans into `jail`, as of now (fail2ban errors propagate)."""
        cfg = self._config()
        ignoreip = await self._client.ignoreip(jail)
        names = [item.strip() for item in ignoreip if _HOST_NAME.fullmatch(item.strip())]
        if names:
            ignoreip += await self._addresses_of(jail, names)
        return BanPolicy(
            min_prefix_v4=cfg.min_prefix_v4,
            min_prefix_v6=cfg.min_prefix_v6,
            allowlist=cfg.allowlist,
            host_addresses=self._host.current(),
            ignoreip=ignoreip,
        )

    async def refusal(self, jail: str, entry: str) -> RefusalReason | None:
        """Why banning `entry` into `jail` must not happen now, or None."""
        return (await self.policy(jail)).check(entry)

    async def _addresses_of(self, jail: str, names: list[str]) -> list[str]:
        """What ignoreip's host names resolve to now, in parallel; a name that does not
        resolve within RESOLVE_TIMEOUT protects nothing, as in fail2ban (logged)."""

        async def one(name: str) -> list[str]:
            try:
                return await asyncio.wait_for(self._resolve(name), RESOLVE_TIMEOUT)
            except (OSError, UnicodeError, ValueError, TimeoutError) as exc:
                error = str(exc) or type(exc).__name__
                log.warning("ignoreip_name_unresolved", jail=jail, name=name, error=error)
                return []

        found = await asyncio.gather(*(one(name) for name in names))
        return [address for addresses in found for address in addresses]
