"""A dbus-fast client for tests that send what no command line can carry (1 MiB strings).

One connection in its own event loop, called synchronously; replies come back as
`Reply` (error name and message, or the out arguments) instead of raising, so a test
can assert on the exact error the daemon chose.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from bangui_daemon.dbus.transport import write_utf8_right
from tests.integration.dbus_calls import DEST, PATH


@dataclass(frozen=True)
class Reply:
    error: str | None  # the D-Bus error name, None for a method return
    body: list[Any]

    @property
    def message(self) -> str:
        """An error's message ('' for a return or an error without one)."""
        return str(self.body[0]) if self.error and self.body else ""


class FastClient:
    """``call(interface, member, signature, *args)`` on one reused bus connection."""

    def __init__(self, address: str) -> None:
        self.loop = asyncio.new_event_loop()

        async def connect() -> MessageBus:  # dbus-fast 5.x binds the bus to the running loop
            return await MessageBus(bus_address=address).connect()

        self.bus = self.loop.run_until_complete(connect())
        write_utf8_right(self.bus)  # dbus-fast 1.84 could not send "é" otherwise

    def call(
        self,
        interface: str,
        member: str,
        signature: str = "",
        *args: Any,
        timeout: float = 30.0,
        path: str = PATH,
    ) -> Reply:
        message = Message(
            destination=DEST,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(args),
        )
        reply = self.loop.run_until_complete(asyncio.wait_for(self.bus.call(message), timeout))
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            return Reply(reply.error_name or "", list(reply.body))
        return Reply(None, list(reply.body))

    def ping(self) -> bool:
        """Peer.Ping on the daemon: True when it answered."""
        reply = self.call("org.freedesktop.DBus.Peer", "Ping", timeout=10.0)
        return reply.error is None

    def close(self) -> None:
        self.bus.disconnect()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()
