"""Keep dbus-fast's connection alive: full send buffers, and non-ASCII text on 1.84.

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

dbus-fast 1.84 also writes a string's length in characters instead of bytes, so a
message carrying any non-ASCII text ("é" in an error the caller provoked, an MMDB
organisation, a source name) is malformed and the bus drops the daemon: any local
user could do that with ``Properties.Get(iface, "é")``. :func:`write_utf8_right`
makes the writer marshal such messages with dbus-fast's own pure-Python marshaller,
its string writer corrected; messages that are all ASCII keep the compiled one.
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Callable
from copy import copy
from pathlib import Path
from struct import Struct
from types import ModuleType
from typing import Any

import dbus_fast
import structlog
from dbus_fast import Message, Variant
from dbus_fast.aio import MessageBus

__all__ = ["WouldBlockIsZero", "marshals_utf8", "tolerate_full_send_buffer", "write_utf8_right"]

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


# ------------------------------------------------------------- UTF-8 lengths
_PACK_UINT32 = Struct("<I").pack


def marshals_utf8() -> bool:
    """Whether this dbus-fast writes a non-ASCII string's length in bytes, as it must."""
    probe = Message(destination="a.b", path="/a", interface="a.b", member="M", signature="s")
    probe.body = ["\u00e9"]
    return bytes(probe._marshall(False)).endswith(b"\x02\x00\x00\x00\xc3\xa9\x00")


def has_non_ascii(value: Any) -> bool:
    """Whether a message body holds a string that is not pure ASCII (at any depth)."""
    if isinstance(value, str):
        return not value.isascii()
    if isinstance(value, Variant):
        return has_non_ascii(value.value)
    if isinstance(value, list | tuple):
        return any(has_non_ascii(v) for v in value)
    if isinstance(value, dict):
        return any(has_non_ascii(k) or has_non_ascii(v) for k, v in value.items())
    return False


def _load_source(name: str, relative: str) -> ModuleType:
    """Import dbus-fast's pure-Python source of a module that is also compiled."""
    path = Path(dbus_fast.__file__).parent / relative
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def utf8_marshaller() -> Callable[[Message, bool], bytes]:
    """``marshall(message, negotiate_unix_fd)`` with string lengths in bytes."""
    pure = _load_source("dbus_fast._private._bangui_marshaller", "_private/marshaller.py")

    class Utf8Marshaller(pure.Marshaller):  # type: ignore[name-defined,misc]
        __slots__ = ()

        def _write_string(self, value: str) -> int:
            data = value.encode()
            written = int(self._align(4)) + 4
            buf = self._buf
            buf += _PACK_UINT32(len(data))
            buf += data
            buf.append(0)
            return written + len(data) + 1

    message_module = _load_source("dbus_fast._bangui_message", "message.py")
    message_module.__dict__["Marshaller"] = Utf8Marshaller  # what its Message._marshall calls
    pure_message = message_module.Message

    def marshall(msg: Message, negotiate_unix_fd: bool) -> bytes:
        copy_ = pure_message(
            destination=msg.destination,
            path=msg.path,
            interface=msg.interface,
            member=msg.member,
            message_type=msg.message_type,
            flags=msg.flags,
            error_name=msg.error_name,
            reply_serial=msg.reply_serial,
            sender=msg.sender,
            unix_fds=msg.unix_fds,
            signature=msg.signature,
            body=msg.body,
            serial=msg.serial,
            validate=False,
        )
        return bytes(copy_._marshall(negotiate_unix_fd))

    return marshall


def write_utf8_right(bus: MessageBus) -> bool:
    """On a dbus-fast that miscounts UTF-8 (1.84), correct what the connected ``bus``
    sends; True when applied (False where nothing needs it, or the writer is unknown)."""
    if marshals_utf8():
        return False
    writer = getattr(bus, "_writer", None)
    if writer is None or not hasattr(writer, "messages") or not hasattr(writer, "buffer_message"):
        log.warning("dbus_writer_not_patched", reason="unknown dbus-fast writer layout")
        return False
    marshall = utf8_marshaller()

    def buffer_message(msg: Message, future: Any = None) -> None:
        fd = writer.negotiate_unix_fd
        data = marshall(msg, fd) if has_non_ascii(msg.body) else msg._marshall(fd)
        writer.messages.append((data, copy(msg.unix_fds), future))

    writer.buffer_message = buffer_message
    return True
