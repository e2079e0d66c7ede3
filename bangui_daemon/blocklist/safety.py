"""The never-ban rules as they stand at the moment of a decision, for every path
that bans (BanIp over D-Bus, blocklist imports, and whatever bans next).

Each decision builds its `BanPolicy` from what holds right then: the config's
allow-list and minimum prefixes (a SIGHUP reload is seen at once), the target jail's
``ignoreip`` asked from fail2ban (``addignoreip`` at run time is seen at once), and
this host's addresses re-read from the kernel (an address gained through DHCP or a
VPN is protected from the next decision on). Building one costs about a millisecond
plus one fail2ban round trip: once per BanIp, once per import.
"""

from __future__ import annotations

from collections.abc import Callable

from bangui_daemon.blocklist.host import HostAddresses
from bangui_daemon.blocklist.policy import BanPolicy, RefusalReason
from bangui_daemon.config import BlocklistConfig
from bangui_daemon.fail2ban.client import Fail2banClient


class SafetyPolicy:
    """The one home of the never-ban decision."""

    def __init__(
        self,
        config: Callable[[], BlocklistConfig],
        client: Fail2banClient,
        host: HostAddresses,
    ) -> None:
        self._config = config
        self._client = client
        self._host = host

    async def policy(self, jail: str) -> BanPolicy:
        """The policy for bans into `jail`, as of now (fail2ban errors propagate)."""
        cfg = self._config()
        ignoreip = await self._client.ignoreip(jail)
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
