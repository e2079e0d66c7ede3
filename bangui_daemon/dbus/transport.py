"""Keep dbus-fast's connection alive when the bus socket's send buffer is full.

dbus-fast (1.84 in Debian bookworm, and 5.x) writes with ``sock.send`` on a
non-blocking socket and treats *every* exception as fatal, ``BlockingIOError``
(EAGAIN) included: the connection is finalised and the daemon drops off the bus.
EAGAIN happens whenever a message is queued while a large one is still being written:
``schedule_write`` then writes at once ("send now if the queue is empty" looks only at
the queue, not at the partly written buffer) to a socket that is not writable. A
10,000-address LookupIps reply (~1 MB) and a ban-watch TaskFinished signal in the
same moment were enough (upstream: python-dbus-next issue #153).

:func:`tolerate_full_send_buffer` wraps the writer's socket so that EAGAIN reads as
"0 bytes written": the writer keeps the message, waits until the socket is writable
and goes on, which is what it already does after any partial write.
"""

from __future__ import annotations

import socket
from typing import Any

import structlog
from dbus_fast.aio import MessageBus

__all__ = ["WouldBlockIsZero", "tolerate_full_send_buffer"]

log = structlog.get_logger(__name__)


class WouldBlockIsZero:
    """A socket whose ``send`` returns 0 instead of raising when it would block."""

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: Any, flags: int = 0) -> int:
        try:
            return self._sock.send(data, flags)
        except (BlockingIOError, InterruptedError):
            return 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def tolerate_full_send_buffer(bus: MessageBus) -> bool:
    """Make the connected ``bus`` wait for writability on EAGAIN; True when applied."""
    writer = getattr(bus, "_writer", None)
    sock = getattr(writer, "sock", None)
    if isinstance(sock, WouldBlockIsZero):
        return True
    if not isinstance(sock, socket.socket):
        # A dbus-fast whose writer looks different: nothing to wrap, say so once.
        log.warning("dbus_writer_not_patched", reason="unknown dbus-fast writer layout")
        return False
    writer.sock = WouldBlockIsZero(sock)  # type: ignore[union-attr]
    return True
