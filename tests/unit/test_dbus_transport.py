"""dbus-fast's writer must survive EAGAIN: a message queued while a big one is half-sent."""

from __future__ import annotations

import asyncio
import io
import socket
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast._private.unmarshaller import Unmarshaller
from dbus_fast.aio import message_bus

from bangui_daemon.dbus.transport import (
    WouldBlockIsZero,
    has_non_ascii,
    marshals_utf8,
    tolerate_full_send_buffer,
    utf8_marshaller,
)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, bus_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    bus_side.setblocking(False)
    try:
        yield ours, bus_side
    finally:
        ours.close()
        bus_side.close()


def _writer(sock: socket.socket, failures: list[BaseException]) -> Any:
    """dbus-fast's real _MessageWriter over ``sock``, with a stand-in connected bus."""
    bus = SimpleNamespace(
        _negotiate_unix_fd=False,
        _sock=sock,
        _loop=asyncio.get_running_loop(),
        _fd=sock.fileno(),
        unique_name=":1.42",
        _user_disconnect=False,
        _finalize=failures.append,
        _writer=None,
    )
    bus._writer = message_bus._MessageWriter(bus)  # type: ignore[arg-type]
    return bus


def _message(size: int) -> Message:
    return Message(
        destination="org.example.Peer",
        path="/org/example",
        interface="org.example.Peer",
        member="Data",
        signature="s",
        body=["x" * size],
    )


async def _drain(reader: socket.socket, want: int) -> int:
    """Read what the writer sends (the loop runs its writability callback meanwhile)."""
    got = 0
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        while got < want:
            chunk = await loop.sock_recv(reader, 1 << 20)
            assert chunk, "the writer closed the socket"
            got += len(chunk)
    return got


async def _second_message_while_first_is_half_sent(bus: Any, reader: socket.socket) -> int:
    big, small = _message(2_000_000), _message(100)
    want = len(big._marshall(False)) + len(small._marshall(False))
    bus._writer.schedule_write(big)  # fills the socket buffer, rest waits for writability
    assert bus._writer.buf is not None
    bus._writer.schedule_write(small)  # eager write to a full socket: EAGAIN
    try:
        return await _drain(reader, want) - want
    finally:
        bus._loop.remove_writer(bus._fd)


async def test_unpatched_writer_drops_the_connection_on_eagain(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The dbus-fast behaviour the patch exists for (if this fails, it may be fixed)."""
    failures: list[BaseException] = []
    bus = _writer(pair[0], failures)
    big, small = _message(2_000_000), _message(100)
    bus._writer.schedule_write(big)
    bus._writer.schedule_write(small)
    bus._loop.remove_writer(bus._fd)
    assert failures
    assert isinstance(failures[0], BlockingIOError)


async def test_patched_writer_waits_for_writability_and_sends_everything(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    failures: list[BaseException] = []
    bus = _writer(pair[0], failures)
    assert tolerate_full_send_buffer(bus)
    assert isinstance(bus._writer.sock, WouldBlockIsZero)
    assert tolerate_full_send_buffer(bus)  # idempotent
    extra = await _second_message_while_first_is_half_sent(bus, pair[1])
    assert failures == []
    assert extra == 0
    assert bus._writer.buf is None
    assert not bus._writer.messages


def test_would_block_is_zero_passes_everything_else_through(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    wrapped = WouldBlockIsZero(ours)
    assert wrapped.fileno() == ours.fileno()
    assert wrapped.send(b"abc") == 3
    assert theirs.recv(10) == b"abc"
    while wrapped.send(b"y" * 65536):  # fill the buffer: then 0, never an exception
        pass
    assert wrapped.send(b"z") == 0


# ------------------------------------------------------------- UTF-8 lengths
def unmarshall(data: bytes) -> Message:
    message = Unmarshaller(cast(Any, io.BytesIO(data))).unmarshall()
    assert message is not None
    return message


@pytest.mark.skipif(marshals_utf8(), reason="only dbus-fast 1.84 (bookworm) needs it")
def test_the_utf8_marshaller_writes_lengths_in_bytes_and_round_trips() -> None:
    body = ["é", {"org": Variant("s", "Telefónica ✓"), "n": Variant("x", -5)}, ["a", "ü\U0001f600"]]
    msg = Message(
        destination=":1.5", path="/o", interface="a.b", member="M", signature="sa{sv}as", body=body
    )
    msg.serial = 7
    data = utf8_marshaller()(msg, False)
    assert b"\x02\x00\x00\x00\xc3\xa9\x00" in data  # "é" is two bytes long
    back = unmarshall(data)
    assert (back.member, back.serial, back.destination) == ("M", 7, ":1.5")
    assert back.body == body
    error = Message.new_error(msg, "org.freedesktop.DBus.Error.UnknownProperty", "no Vérsion")
    error.serial = 8
    back = unmarshall(utf8_marshaller()(error, False))
    assert back.message_type == MessageType.ERROR
    assert (back.body, back.reply_serial) == (["no Vérsion"], 7)


@pytest.mark.parametrize(
    ("body", "found"),
    [
        (["abc", 1, [b"\xff"]], False),
        ([{"k": Variant("as", ["x", "é"])}], True),
        ([{"é": 1}], True),
        ([[("a", Variant("v", Variant("s", "\u2028")))]], True),
    ],
)
def test_has_non_ascii_looks_at_every_depth(body: list[Any], found: bool) -> None:
    assert has_non_ascii(body) is found
