"""A D-Bus client that notes when each BanAdded arrives and asks the daemon at once.

dbus-fast in the test process, not dbus-monitor: the arrival time is taken when the
message is dispatched, and the calls made "the moment the signal arrives" go out on
the same connection without starting a process. Also used by bench/bench_banwatch.py.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

DEST = "org.bangui.Daemon1"
PATH = "/org/bangui/Daemon1"
CORE = "org.bangui.Daemon1"
HISTORY = "org.bangui.Daemon1.History"


def unwrap(value: Any) -> Any:
    """dbus-fast Variants (nested) to plain values."""
    if hasattr(value, "signature") and hasattr(value, "value"):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


@dataclass
class Arrival:
    """One BanAdded: when it arrived (time.time()) and what the daemon said right then."""

    jail: str
    ip: str
    timeofban: int
    at: float
    answers: dict[str, Any] = field(default_factory=dict)


class BanSignals:
    """Collects BanAdded (with arrival times) and BansChanged; optionally asks
    ListBans / GetHistory / GetIpHistory for the new ban as soon as it arrives."""

    def __init__(self, address: str, *, ask: Sequence[str] = ()) -> None:
        self.address = address
        self.ask = tuple(ask)
        self.added: list[Arrival] = []
        self.changed: list[tuple[int, int]] = []
        self._bus: MessageBus | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._event = asyncio.Event()

    async def __aenter__(self) -> BanSignals:
        self._bus = await MessageBus(bus_address=self.address).connect()
        rule = f"type='signal',sender='{DEST}',path='{PATH}'"
        await self._call(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "AddMatch",
            "s",
            [rule],
        )
        self._bus.add_message_handler(self._on_message)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._bus is not None:
            self._bus.disconnect()

    async def wait_for(self, ip: str, within: float) -> Arrival:
        """The BanAdded of `ip` (and the answers asked for), within `within` seconds."""
        async with asyncio.timeout(within):
            while True:
                for arrival in self.added:
                    if arrival.ip == ip and len(arrival.answers) == len(self.ask):
                        return arrival
                self._event.clear()
                await self._event.wait()

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type != MessageType.SIGNAL or msg.interface != CORE:
            return False
        if msg.member == "BanAdded":
            jail, ip, timeofban, _bantime = msg.body
            arrival = Arrival(jail, ip, timeofban, time.time())
            self.added.append(arrival)
            if self.ask:
                task = asyncio.create_task(self._answers(arrival))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
        elif msg.member == "BansChanged":
            self.changed.append((int(msg.body[0]), int(msg.body[1])))
        self._event.set()
        return False

    async def _answers(self, arrival: Arrival) -> None:
        for what in self.ask:
            if what == "ListBans":  # (page, total)
                body = await self._call(
                    DEST, PATH, CORE, "ListBans", "suu", [arrival.jail, 0, 1000]
                )
                arrival.answers[what] = unwrap(body)
            elif what == "GetIpHistory":
                body = await self._call(DEST, PATH, HISTORY, "GetIpHistory", "s", [arrival.ip])
                arrival.answers[what] = unwrap(body[0])
            else:
                raise ValueError(what)
        self._event.set()

    async def _call(
        self, dest: str, path: str, iface: str, member: str, signature: str, body: list[Any]
    ) -> list[Any]:
        assert self._bus is not None
        reply = await self._bus.call(
            Message(
                destination=dest,
                path=path,
                interface=iface,
                member=member,
                signature=signature,
                body=body,
            )
        )
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            raise RuntimeError(f"{member}: {reply.error_name}: {reply.body}")
        return list(reply.body)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]
