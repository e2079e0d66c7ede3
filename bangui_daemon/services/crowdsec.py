"""A two-way bridge to a CrowdSec Local API, the engine that already runs fleets.

Pull (a bouncer): the active ban decisions of scope Ip or Range become the blocklist
source named `crowdsec`, imported through the same machinery as URL sources: the
never-ban policy, reference counting with the other sources, diffs. A decision
deleted or expired in CrowdSec is unbanned at the next pull (unless another source
lists it). Decisions are kept by id, so a repeated or twice-deleted decision changes
nothing; a failed pull starts over with a full `startup=true` stream.

Push (a machine): each new ban in the pushed jails (default: every jail but the
blocklist jail, so pulled bans never go back) becomes an alert with one ban decision,
scenario `bangui/JAIL`, duration = the ban time; when fail2ban lifts the ban, that
decision is deleted. Origin `crowdsec`, as for a local agent's decisions, so
`cscli decisions list` shows them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from bangui_daemon.config import CrowdsecConfig
from bangui_daemon.crowdsec.lapi import LapiClient, LapiError, Token
from bangui_daemon.errors import ConfigError
from bangui_daemon.models import ActiveBan
from bangui_daemon.services.bans import BanDiff
from bangui_daemon.services.blocklists import BlocklistService

log = structlog.get_logger(__name__)

SOURCE = "crowdsec"
SCOPES = {"ip", "range"}
PUSH_BATCH = 100
RESYNC_EVERY = 30
"""Pulls between two full (startup) streams. The LAPI's delta stream is keyed by time,
and decisions a bulk `cscli decisions import` creates can fall before the bouncer's
last pull and never show as new: a full stream now and then heals that."""
PERMANENT_DURATION = "876000h"  # fail2ban's -1: a century is CrowdSec's "for ever"


def _secret(path: str, key: str) -> str:
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"crowdsec.{key}: cannot read {path}: {exc.strerror or exc}") from None
    if not value:
        raise ConfigError(f"crowdsec.{key}: {path} is empty")
    return value


@dataclass(frozen=True)
class _Change:
    added: bool
    ban: ActiveBan


class CrowdsecBridge:
    """Pull decisions into the `crowdsec` source; push our bans as alerts."""

    def __init__(
        self,
        lapi: LapiClient,
        config: Callable[[], CrowdsecConfig],
        blocklists: BlocklistService,
        blocklist_jail: Callable[[], str],
    ) -> None:
        self._lapi = lapi
        self._config = config
        self._blocklists = blocklists
        self._blocklist_jail = blocklist_jail
        self._decisions: dict[int, str] = {}  # decision id -> value
        self._synced = False  # a startup stream has been applied since the last failure
        self._pulls = 0
        self._queue: list[_Change] = []
        self._token: Token | None = None

    # ---- pull -----------------------------------------------------------------

    async def start(self) -> None:
        """Make the `crowdsec` source a feed of this bridge (created on first use)."""
        await self._blocklists.register_feed(SOURCE, self._config().lapi_url, self.content)

    def content(self) -> Sequence[bytes] | None:
        """The decisions in force as a blocklist, one value a line; None before a pull."""
        if not self._synced:
            return None
        return ["".join(f"{v}\n" for v in sorted(set(self._decisions.values()))).encode()]

    async def pull(self) -> dict[str, object]:
        """Fetch the decision stream, apply it, and import the source if it changed."""
        key = _secret(self._config().bouncer_key_file, "bouncer_key_file")
        startup = not self._synced or self._pulls % RESYNC_EVERY == 0
        self._pulls += 1
        try:
            new, deleted = await self._lapi.decision_stream(key, startup=startup)
        except LapiError:
            self._synced = False
            raise
        before = set(self._decisions.values())
        if startup:
            self._decisions.clear()
        ignored = 0
        for decision in new:
            if decision.type.lower() != "ban" or decision.scope.lower() not in SCOPES:
                ignored += 1
                continue
            self._decisions[decision.id] = decision.value
        for decision in deleted:
            self._decisions.pop(decision.id, None)
        self._synced = True
        result: dict[str, object] = {
            "startup": startup,
            "new": len(new),
            "deleted": len(deleted),
            "ignored": ignored,
            "decisions": len(self._decisions),
        }
        if startup or set(self._decisions.values()) != before:
            outcome = await self._blocklists.import_feed(SOURCE)
            result.update(
                status=outcome.status,
                added=outcome.added,
                removed=outcome.removed,
                refused=outcome.refused,
                invalid=outcome.invalid,
            )
            if outcome.error:
                result["error"] = outcome.error
        return result

    # ---- push -----------------------------------------------------------------

    def _pushed(self, jail: str) -> bool:
        jails = self._config().push_jails
        if jails:
            return jail in jails and jail != self._blocklist_jail()
        return jail != self._blocklist_jail()

    async def on_diff(self, diff: BanDiff) -> None:
        """Ban-watch listener: queue our jails' new and lifted bans (storms included)."""
        if diff.baseline or not self._config().push:
            return
        self._queue.extend(_Change(True, b) for b in diff.added if self._pushed(b.jail))
        self._queue.extend(_Change(False, b) for b in diff.removed if self._pushed(b.jail))

    async def _login(self) -> Token:
        if self._token is None or self._token.expires <= time.monotonic():
            cfg = self._config()
            password = _secret(cfg.machine_password_file, "machine_password_file")
            self._token = await self._lapi.login(cfg.machine_id, password)
        return self._token

    async def push(self) -> dict[str, object]:
        """Send queued bans as alerts and delete the decisions of lifted ones."""
        if not self._queue:
            return {"alerts": 0, "deleted": 0}
        changes, self._queue = self._queue, []
        try:
            token = await self._login()
            bans = [c.ban for c in changes if c.added]
            for start in range(0, len(bans), PUSH_BATCH):
                alerts = [
                    _alert(b, self._config().machine_id) for b in bans[start : start + PUSH_BATCH]
                ]
                await self._lapi.push_alerts(token, alerts)
            deleted = 0
            for change in changes:
                if change.added:
                    continue
                ban = change.ban
                for decision_id in await self._lapi.active_decision_ids(
                    token, ban.ip, _scenario(ban.jail)
                ):
                    await self._lapi.delete_decision(token, decision_id)
                    deleted += 1
        except LapiError:
            self._token = None
            self._queue[:0] = changes  # nothing is lost: the next run sends them again
            raise
        return {"alerts": len(bans), "deleted": deleted}

    async def close(self) -> None:
        await self._lapi.close()


def _scenario(jail: str) -> str:
    return f"bangui/{jail}"


def _alert(ban: ActiveBan, machine_id: str) -> dict[str, object]:
    at = datetime.fromtimestamp(ban.timeofban, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    scope = "Ip"
    duration = PERMANENT_DURATION if ban.bantime < 0 else f"{ban.bantime}s"
    decision = {
        "origin": "crowdsec",
        "type": "ban",
        "scope": scope,
        "value": ban.ip,
        "duration": duration,
        "scenario": _scenario(ban.jail),
    }
    return {
        "scenario": _scenario(ban.jail),
        "scenario_hash": "",
        "scenario_version": "",
        "message": f"fail2ban jail {ban.jail} banned {ban.ip} (bangui on {machine_id})",
        "events_count": 1,
        "start_at": at,
        "stop_at": at,
        "capacity": 0,
        "leakspeed": "0",
        "simulated": False,
        "events": [],
        "source": {"scope": scope, "value": ban.ip, "ip": ban.ip},
        "decisions": [decision],
    }
