"""The never-ban rules for addresses banned through D-Bus (BanIp).

Imports and BanIp share one policy (blocklist/policy.py); this module builds it from
the current config and this host's addresses (collected once at start),
rebuilding only when the config changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bangui_daemon.blocklist.policy import BanPolicy
from bangui_daemon.config import Config

Check = Callable[[str], str | None]


class SafetyPolicy:
    """Caches a BanPolicy per config object (a reload makes a new one)."""

    def __init__(self, config: Callable[[], Config], host: Sequence[str]) -> None:
        self._config = config
        self._built_for: Config | None = None
        self._policy: BanPolicy | None = None
        self.host_addresses = list(host)

    def policy(self) -> BanPolicy:
        """Return the policy for the current config."""
        cfg = self._config()
        if self._policy is None or self._built_for is not cfg:
            self._policy = BanPolicy(
                min_prefix_v4=cfg.blocklist.min_prefix_v4,
                min_prefix_v6=cfg.blocklist.min_prefix_v6,
                allowlist=cfg.blocklist.allowlist,
                host_addresses=self.host_addresses,
            )
            self._built_for = cfg
        return self._policy

    def checker(self) -> Check:
        """Return a function giving the refusal reason for an entry, or None."""
        check: Check = self.policy().check
        return check
