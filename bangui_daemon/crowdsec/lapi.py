"""A client of CrowdSec's Local API, as a bouncer (pull) and as a machine (push).

Bouncer: `GET /v1/decisions/stream` with `X-Api-Key`; `startup=true` returns every
active decision, later calls what was added and deleted since. Machine: a JWT from
`POST /v1/watchers/login`, alerts with one decision each through `POST /v1/alerts`,
and `DELETE /v1/decisions/{id}` when our ban is lifted. Replies are read with a size
cap; errors become `LapiError` with one readable sentence.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import aiohttp

from bangui_daemon import __version__
from bangui_daemon.errors import BanguiError

MAX_REPLY = 256 * 1024 * 1024
"""A startup stream of a million decisions is about 200 MB of JSON."""
USER_AGENT = f"bangui-daemon/{__version__}"  # LAPI refuses a login whose agent has no version


class LapiError(BanguiError, RuntimeError):
    """The Local API could not be reached, refused us, or answered something unreadable."""


@dataclass(frozen=True)
class Decision:
    id: int
    type: str
    scope: str
    value: str
    origin: str


@dataclass(frozen=True)
class Token:
    value: str
    expires: float


def _decisions(items: object) -> list[Decision]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise LapiError("the Local API's decision stream is not a list")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise LapiError("the Local API's decision stream holds a non-object")
        try:
            out.append(
                Decision(
                    int(item["id"]),
                    str(item.get("type", "")),
                    str(item.get("scope", "")),
                    str(item.get("value", "")),
                    str(item.get("origin", "")),
                )
            )
        except (KeyError, TypeError, ValueError):
            raise LapiError("a decision of the Local API has no usable id") from None
    return out


class LapiClient:
    """One aiohttp session towards one Local API."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self._base = url if url.endswith("/") else url + "/"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, headers={"User-Agent": USER_AGENT}
            )
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str],
        params: dict[str, str] | None = None,
        body: object = None,
    ) -> Any:
        url = urljoin(self._base, path)
        data = None if body is None else json.dumps(body)
        if data is not None:
            headers = {**headers, "Content-Type": "application/json"}
        try:
            async with self._client().request(
                method, url, headers=headers, params=params, data=data, allow_redirects=False
            ) as response:
                parts: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > MAX_REPLY:
                        raise LapiError(f"the Local API's reply to {path} is too large")
                    parts.append(chunk)
                raw = b"".join(parts)
                if response.status in (401, 403):
                    raise LapiError(f"the Local API refused our credentials ({response.status})")
                if response.status >= 300:
                    raise LapiError(f"the Local API answered {path} with HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise LapiError(f"cannot reach the Local API at {self._base}: {reason}") from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise LapiError(f"the Local API's reply to {path} is not JSON") from None

    # ---- bouncer ----------------------------------------------------------

    async def decision_stream(
        self, api_key: str, *, startup: bool
    ) -> tuple[list[Decision], list[Decision]]:
        """(new, deleted) decisions since the last call (all active ones at startup)."""
        reply = await self._request(
            "GET",
            "v1/decisions/stream",
            headers={"X-Api-Key": api_key},
            params={"startup": "true" if startup else "false"},
        )
        if not isinstance(reply, dict):
            raise LapiError("the Local API's decision stream is not an object")
        return _decisions(reply.get("new")), _decisions(reply.get("deleted"))

    # ---- machine ------------------------------------------------------------

    async def login(self, machine_id: str, password: str) -> Token:
        reply = await self._request(
            "POST",
            "v1/watchers/login",
            headers={},
            body={"machine_id": machine_id, "password": password, "scenarios": []},
        )
        if not isinstance(reply, dict) or not isinstance(reply.get("token"), str):
            raise LapiError("the Local API's login reply has no token")
        # The JWT lasts an hour on a default LAPI: renew well before, whatever it says.
        return Token(reply["token"], time.monotonic() + 30 * 60)

    async def push_alerts(self, token: Token, alerts: Sequence[dict[str, object]]) -> list[str]:
        reply = await self._request("POST", "v1/alerts", headers=_bearer(token), body=list(alerts))
        if not isinstance(reply, list):
            raise LapiError("the Local API's alert reply is not a list")
        return [str(x) for x in reply]

    async def active_decision_ids(self, token: Token, ip: str, scenario: str) -> list[int]:
        """Ids of the active decisions of our alerts about `ip` under `scenario`."""
        reply = await self._request(
            "GET",
            "v1/alerts",
            headers=_bearer(token),
            params={"ip": ip, "scenario": scenario, "has_active_decision": "true"},
        )
        if reply is None:
            return []
        if not isinstance(reply, list):
            raise LapiError("the Local API's alert list is not a list")
        ids: list[int] = []
        for alert in reply:
            if isinstance(alert, dict):
                ids.extend(d.id for d in _decisions(alert.get("decisions")) if d.value == ip)
        return ids

    async def delete_decision(self, token: Token, decision_id: int) -> None:
        await self._request("DELETE", f"v1/decisions/{decision_id}", headers=_bearer(token))


def _bearer(token: Token) -> dict[str, str]:
    return {"Authorization": f"Bearer {token.value}"}
