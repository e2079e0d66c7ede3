"""SignalPump on its own: routing by event type, pacing, and failures that must not stop it.

The bus is a fake whose pacing round trip the test can hold open, which is what a
bus daemon still reading a burst of signals looks like to the pump.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import pytest
from dbus_fast import Message
from dbus_fast.aio import MessageBus

from bangui_daemon.dbus.signals import PACE, SignalPump
from bangui_daemon.events import (
    BanAdded,
    BanRemoved,
    BansChanged,
    EventHub,
    PropertiesChanged,
    TaskFinished,
)

DEADLINE = 5.0


class FakeBus:
    """Answers the pump's round trips; `hold` keeps them open, `broken` fails them."""

    def __init__(self, handled: list[object]) -> None:
        self.handled = handled
        self.calls: list[Message] = []
        self.handled_at_call: list[int] = []
        self.hold: asyncio.Event | None = None
        self.waiting = asyncio.Event()
        self.broken = False

    async def call(self, msg: Message) -> Message | None:
        self.calls.append(msg)
        self.handled_at_call.append(len(self.handled))
        self.waiting.set()
        if self.hold is not None:
            await self.hold.wait()
        if self.broken:
            raise ConnectionResetError("the bus went away")
        return None


class Setup:
    def __init__(self) -> None:
        self.handled: list[object] = []
        self.bus = FakeBus(self.handled)
        self.pump = SignalPump(cast(MessageBus, self.bus))
        self.hub = EventHub()
        self.hub.subscribe(self.pump.publish)

    def bans(self, n: int, start: int = 0) -> None:
        for i in range(start, start + n):
            self.hub.publish(BanAdded("sshd", f"203.0.113.{i % 250}", i, 600))

    async def flushed(self) -> None:
        async with asyncio.timeout(DEADLINE):
            await self.pump.flush(within=DEADLINE)


@pytest.fixture
async def s() -> AsyncIterator[Setup]:
    setup = Setup()
    yield setup
    await setup.pump.stop()


async def test_each_event_type_goes_to_its_handler_in_order(s: Setup) -> None:
    s.pump.on(BanAdded, lambda e: s.handled.append(("added", e.ip)))
    s.pump.on(BanRemoved, lambda e: s.handled.append(("removed", e.ip)))
    s.pump.on(TaskFinished, lambda e: s.handled.append(("task", e.name)))
    s.pump.start()
    s.hub.publish(BanAdded("sshd", "203.0.113.1", 1, 600))
    for _ in range(PACE):
        s.hub.publish(BansChanged(1, 0))  # nobody emits it: not even queued
    s.hub.publish(TaskFinished("ban_watch", "ok"))
    s.hub.publish(BanRemoved("sshd", "203.0.113.1"))
    await s.flushed()
    assert s.handled == [
        ("added", "203.0.113.1"),
        ("task", "ban_watch"),
        ("removed", "203.0.113.1"),
    ]
    assert s.bus.calls == []  # below PACE: no round trip; unemitted events do not count


async def test_every_pace_signals_the_pump_waits_for_a_round_trip(s: Setup) -> None:
    s.pump.on(BanAdded, s.handled.append)
    s.bus.hold = asyncio.Event()
    s.pump.start()
    s.bans(2 * PACE + 5)
    async with asyncio.timeout(DEADLINE):
        await s.bus.waiting.wait()
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(s.handled) == PACE  # nothing more is sent while the bus has not answered
    (msg,) = s.bus.calls
    assert (msg.destination, msg.interface, msg.member) == (
        "org.freedesktop.DBus",
        "org.freedesktop.DBus",
        "GetId",
    )
    s.bus.hold.set()
    await s.flushed()
    assert len(s.handled) == 2 * PACE + 5
    assert s.bus.handled_at_call == [PACE, 2 * PACE]


async def test_a_failing_handler_does_not_stop_the_pump(s: Setup) -> None:
    def flaky(event: BanAdded) -> None:
        if event.timeofban % 2:
            raise RuntimeError("emit failed")
        s.handled.append(event.timeofban)

    s.pump.on(BanAdded, flaky)
    s.pump.start()
    s.bans(PACE + 2)
    await s.flushed()
    assert s.handled == list(range(0, PACE + 2, 2))
    assert len(s.bus.calls) == 1  # failed emits count towards the pace too


async def test_every_handler_of_a_type_runs_even_after_one_fails(s: Setup) -> None:
    def core(event: PropertiesChanged) -> None:
        if event.interface == "core":
            s.handled.append(dict(event.values))
            raise RuntimeError("emit failed")

    def geo(event: PropertiesChanged) -> None:
        if event.interface == "geo":
            s.handled.append(dict(event.values))

    s.pump.on(PropertiesChanged, core)
    s.pump.on(PropertiesChanged, geo)  # a second interface: added, not a replacement
    s.pump.start()
    s.hub.publish(PropertiesChanged({"State": "running"}))
    s.hub.publish(PropertiesChanged({"CacheEntries": 2}, "geo"))
    await s.flushed()
    assert s.handled == [{"State": "running"}, {"CacheEntries": 2}]


async def test_a_failed_round_trip_does_not_stop_the_pump(s: Setup) -> None:
    s.pump.on(BanAdded, s.handled.append)
    s.bus.broken = True
    s.pump.start()
    s.bans(2 * PACE + 1)
    await s.flushed()
    assert len(s.handled) == 2 * PACE + 1
    assert len(s.bus.calls) == 2


async def test_flush_gives_up_after_its_bound(s: Setup) -> None:
    s.pump.on(BanAdded, s.handled.append)
    s.bus.hold = asyncio.Event()  # the bus never answers
    s.pump.start()
    s.bans(PACE + 10)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(DEADLINE):
        await s.pump.flush(within=0.05)
    assert loop.time() - started < DEADLINE
    assert len(s.handled) == PACE  # the rest is still queued: flush did not wait for it


async def test_stop_ends_the_pump(s: Setup) -> None:
    s.pump.on(BanAdded, s.handled.append)
    s.pump.start()
    s.bans(1)
    await s.flushed()
    async with asyncio.timeout(DEADLINE):
        await s.pump.stop()
    s.bans(1, start=1)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(s.handled) == 1
    assert not any(t.get_name() == "signal-pump" for t in asyncio.all_tasks())


def test_a_failing_hub_subscriber_does_not_stop_the_others() -> None:
    # the pump is one of the hub's subscribers: another one failing must not starve it
    hub = EventHub()
    got: list[object] = []

    def broken(_event: object) -> None:
        raise RuntimeError("subscriber failed")

    hub.subscribe(broken)
    hub.subscribe(got.append)
    hub.publish(BansChanged(1, 0))  # must not raise into the publisher (a task, say)
    assert got == [BansChanged(1, 0)]
