"""Turns in-process events into D-Bus signals, paced so the bus socket never overflows.

dbus-fast drops its connection when a burst of several hundred signals fills the
socket's send buffer (EAGAIN is treated as fatal). Signals therefore go through one
queue, and after every `PACE` of them the pump waits for a round trip to the bus
daemon, which cannot answer before it has read everything sent earlier.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from dbus_fast import Message
from dbus_fast.aio import MessageBus

from bangui_daemon.events import Event

log = structlog.get_logger(__name__)

PACE = 64
Handler = Callable[[Any], object]


class SignalPump:
    """Queue of events -> signal emitters, drained in paced batches."""

    def __init__(self, bus: MessageBus) -> None:
        self._bus = bus
        self._handlers: dict[type, list[Handler]] = {}
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def on(self, event_type: type, handler: Handler) -> None:
        """Emit signals for `event_type` with `handler(event)`, after any handler
        registered for it before (PropertiesChanged has one per interface)."""
        self._handlers.setdefault(event_type, []).append(handler)

    def publish(self, event: Event) -> None:
        """EventHub subscriber: queue the event if some interface emits it."""
        if type(event) in self._handlers:
            self._queue.put_nowait(event)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="signal-pump")

    async def flush(self, within: float = 2.0) -> None:
        """Wait (bounded) until queued signals are written, e.g. before stopping."""
        try:
            await asyncio.wait_for(self._queue.join(), within)
        except TimeoutError:
            log.warning("signals_not_flushed", pending=self._queue.qsize())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        sent = 0
        while True:
            event = await self._queue.get()
            for handler in self._handlers[type(event)]:
                try:
                    handler(event)
                except Exception:
                    log.exception("signal_emit_failed", event_type=type(event).__name__)
            sent += 1
            if sent % PACE == 0:
                await self._drain()
            self._queue.task_done()

    async def _drain(self) -> None:
        try:
            await self._bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="GetId",
                )
            )
        except Exception:
            log.exception("signal_pacing_round_trip_failed")
