"""Fail2banClient against a fake fail2ban server speaking the real wire format."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import socket
import sqlite3
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Iterator

import pytest

from bangui_daemon.errors import (
    Fail2banCommandError,
    Fail2banProtocolError,
    Fail2banUnavailable,
    InvalidArgument,
)
from bangui_daemon.fail2ban.client import BanEntry, Fail2banClient, JailCounts
from bangui_daemon.fail2ban.protocol import CLOSE_FRAME, END
from tests.harness.util import await_until

FAST = 0.5  # "fails fast": well below any timeout used here


def remote_exception(module: str, name: str, message: str) -> bytes:
    """`(1, module.name(message))` pickled as fail2ban would, without fail2ban."""
    text = message.encode()
    return (
        b"\x80\x02K\x01c"
        + f"{module}\n{name}\n".encode()
        + b"X"
        + struct.pack("<I", len(text))
        + text
        + b"\x85R\x86."
    )


class _Evil:
    """Pickles as `os.system("touch PATH")`: what a hostile socket owner would send."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, (f"touch {self.path}",))


def _locked() -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("database is locked")
    exc.sqlite_errorcode, exc.sqlite_errorname = 5, "SQLITE_BUSY"  # as sqlite3 sets them
    return exc


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _local_epoch(text: str) -> int:
    return int(time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S")))


def _reply(value: object) -> bytes:
    return pickle.dumps((0, value), protocol=5)


class FakeFail2ban:
    """An asyncio unix server answering like fail2ban, one request at a time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pwned = path + ".pwned"
        self.connections = 0
        self.requests: list[list[str]] = []
        self.client_closes = 0
        self.got_hang = asyncio.Event()
        self.release = asyncio.Event()
        self.bans: dict[str, dict[str, int]] = {"sshd": {}, "blocklist-import": {}}
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._handle, path=self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            while True:
                raw = await reader.readuntil(END)
                if raw == CLOSE_FRAME:
                    self.client_closes += 1
                    return
                cmd = pickle.loads(raw[: -len(END)])  # the test's own client wrote it
                self.requests.append(cmd)
                answer = await self._answer(cmd)
                if answer is None:
                    return
                writer.write(answer + END)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            self._tasks.discard(task)

    async def _answer(self, cmd: list[str]) -> bytes | None:
        match cmd:
            case ["ping"]:
                return _reply("pong")
            case ["version"]:
                return _reply("1.0.2")
            case ["echo", *rest]:
                return _reply(rest)
            case ["big"]:
                return _reply("x" * 200_000)
            case ["split"]:
                return _reply("a<F2B_END_COMMAND>b")
            case ["evil"]:
                return pickle.dumps((0, _Evil(self.pwned)), protocol=5)
            case ["locked"]:  # what fail2ban 1.0 sends when its DB stays locked 5 s
                return pickle.dumps((1, _locked()), protocol=4)
            case ["bare"]:
                return pickle.dumps("ERROR: pickle data was truncated", protocol=5)
            case ["shutdown"]:
                return pickle.dumps(["SHUTDOWN"], protocol=5)
            case ["drop"]:
                return None
            case ["hang"]:
                self.got_hang.set()
                await self.release.wait()
                return _reply("late")
            case ["status"]:
                return _reply([("Number of jail", 2), ("Jail list", ", ".join(self.bans))])
            case ["status", jail, "short"] if jail in self.bans:
                counts = [("Currently banned", len(self.bans[jail])), ("Total banned", 9)]
                filt = [("Currently failed", 1), ("Total failed", 4)]
                return _reply([("Filter", filt), ("Actions", counts)])
            case ["set", jail, "banip", *ips] if jail in self.bans:
                new = [ip for ip in dict.fromkeys(ips) if ip not in self.bans[jail]]
                self.bans[jail].update(dict.fromkeys(new, 1_795_455_433))
                return _reply(len(new))
            case ["set", jail, "unbanip", *ips] if jail in self.bans:
                gone = [ip for ip in ips if self.bans[jail].pop(ip, None) is not None]
                return _reply(len(gone))
            case ["get", jail, "banip"] if jail in self.bans:
                return _reply(list(self.bans[jail]))
            case ["get", jail, "banip", "--with-time"] if jail in self.bans:
                lines = [
                    f"{ip} \t2026-11-23 17:37:13 + -1 = 9999-12-31 23:59:59"
                    for ip in self.bans[jail]
                ]
                return _reply(lines)
            case ["get", jail, "banned", *ips] if jail in self.bans:
                flags = [int(ip in self.bans[jail]) for ip in ips]
                return _reply(flags[0] if len(flags) == 1 else flags)
            case ["get", jail, "ignoreip"] if jail in self.bans:
                return _reply(["127.0.0.1/8", "::1"])
            case ["get", "dbpurgeage"]:
                return _reply(86400)
            case ["get", "dbfile"]:
                return _reply(None)
            case [_, jail, *_] if jail not in self.bans:
                return remote_exception("fail2ban.exceptions", "UnknownJailException", jail)
        return pickle.dumps((1, Exception("Invalid command")), protocol=5)


@pytest.fixture
def sock_dir() -> Iterator[str]:
    # A short directory: AF_UNIX paths are limited to 107 bytes.
    with tempfile.TemporaryDirectory(prefix="f2b-") as path:
        yield path


@pytest.fixture
async def fake(sock_dir: str) -> AsyncIterator[FakeFail2ban]:
    server = FakeFail2ban(os.path.join(sock_dir, "fail2ban.sock"))
    await server.start()
    try:
        yield server
    finally:
        server.release.set()
        await server.stop()


@pytest.fixture
async def client(fake: FakeFail2ban) -> AsyncIterator[Fail2banClient]:
    c = Fail2banClient(fake.path, timeout=5.0)
    try:
        yield c
    finally:
        await c.close()


async def _elapsed(coro: Awaitable[object]) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(Fail2banUnavailable):
        await coro
    return loop.time() - start


# ------------------------------------------------------------------ basics


async def test_calls_share_one_connection(client: Fail2banClient, fake: FakeFail2ban) -> None:
    await client.version()
    assert await client.version() == "1.0.2"
    for i in range(20):
        assert await client.call("echo", str(i)) == [str(i)]
    assert fake.connections == 1


async def test_reply_larger_than_64k(client: Fail2banClient) -> None:
    assert await client.call("big") == "x" * 200_000


async def test_reply_over_limit_is_refused(fake: FakeFail2ban) -> None:
    small = Fail2banClient(fake.path, reply_limit=64 * 1024)
    try:
        with pytest.raises(Fail2banProtocolError):
            await small.call("big")
        await small.version()  # dropped and reconnected
        assert fake.connections == 2
    finally:
        await small.close()


async def test_end_marker_inside_reply(client: Fail2banClient) -> None:
    assert await client.call("split") == "a<F2B_END_COMMAND>b"


async def test_forbidden_global_is_refused(client: Fail2banClient, fake: FakeFail2ban) -> None:
    with pytest.raises(Fail2banProtocolError, match="forbidden global"):
        await client.call("evil")
    assert not _exists(fake.pwned)
    await client.version()
    assert fake.connections == 2


async def test_error_of_fail2ban_s_sqlite_is_named_with_its_text(
    client: Fail2banClient, fake: FakeFail2ban
) -> None:
    """Issue 17: sqlite3.OperationalError was refused as a forbidden global, which made
    fail2ban look unreachable; it is fail2ban's error, the connection stays."""
    with pytest.raises(Fail2banCommandError) as info:
        await client.call("locked")
    assert (info.value.remote_class, info.value.remote_message) == (
        "OperationalError",
        "database is locked",
    )
    assert "OperationalError: database is locked" in str(info.value)
    await client.version()
    assert fake.connections == 1


async def test_command_error_keeps_connection(client: Fail2banClient, fake: FakeFail2ban) -> None:
    with pytest.raises(Fail2banCommandError) as info:
        await client.jail_counts("nosuchjail")
    assert info.value.remote_class == "UnknownJailException"
    assert info.value.remote_message == "nosuchjail"
    with pytest.raises(Fail2banCommandError) as info2:
        await client.call("frobnicate")
    assert (info2.value.remote_class, info2.value.remote_message) == (
        "Exception",
        "Invalid command",
    )
    await client.version()
    assert fake.connections == 1


async def test_bare_error_string(client: Fail2banClient) -> None:
    with pytest.raises(Fail2banCommandError) as info:
        await client.call("bare")
    assert info.value.remote_class == "ERROR"
    assert "truncated" in info.value.remote_message


async def test_shutdown_reply_is_unavailable(client: Fail2banClient) -> None:
    with pytest.raises(Fail2banUnavailable, match="shutting down"):
        await client.call("shutdown")


async def test_server_closing_mid_call(client: Fail2banClient, fake: FakeFail2ban) -> None:
    with pytest.raises(Fail2banUnavailable):
        await client.call("drop")
    await client.version()
    assert fake.connections == 2


async def test_bad_arguments_are_refused_before_sending(
    client: Fail2banClient, fake: FakeFail2ban
) -> None:
    with pytest.raises(InvalidArgument):
        await client.call("set", "sshd", "banip", "1.2.3.4<F2B_END_COMMAND>")
    with pytest.raises(InvalidArgument):
        await client.call("ping", 5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        await client.unban("sshd", ["--report-absent", "1.2.3.4"])
    with pytest.raises(InvalidArgument):
        await client.ban("sshd", "1.2.3.4")
    assert fake.requests == []


# ---------------------------------------------------------------- timeouts


async def test_timeout_drops_connection_and_ignores_late_reply(
    client: Fail2banClient, fake: FakeFail2ban
) -> None:
    elapsed = await _elapsed(client.call("hang", timeout=0.2))
    assert 0.15 < elapsed < 2.0
    fake.release.set()  # the late "late" goes to the abandoned connection
    assert await client.call("echo", "after") == ["after"]
    assert fake.connections == 2


async def test_cancelled_call_drops_connection(client: Fail2banClient, fake: FakeFail2ban) -> None:
    task = asyncio.create_task(client.call("hang"))
    await fake.got_hang.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    fake.release.set()
    assert await client.call("echo", "next") == ["next"]
    assert fake.connections == 2


async def test_timeout_while_queued_keeps_busy_call(
    client: Fail2banClient, fake: FakeFail2ban
) -> None:
    slow = asyncio.create_task(client.call("hang"))
    await fake.got_hang.wait()
    await _elapsed(client.call("ping", timeout=0.1))
    fake.release.set()
    assert await slow == "late"
    await client.version()
    assert fake.connections == 1


async def test_fifty_concurrent_calls_while_busy(
    client: Fail2banClient, fake: FakeFail2ban
) -> None:
    slow = asyncio.create_task(client.call("hang"))
    await fake.got_hang.wait()
    calls = [asyncio.create_task(client.call("echo", str(i))) for i in range(50)]
    fake.release.set()
    results = await asyncio.gather(*calls)
    assert results == [[str(i)] for i in range(50)]
    assert await slow == "late"
    assert fake.connections == 1


# ------------------------------------------------------- dead socket, backoff


async def test_missing_socket_fails_fast(sock_dir: str) -> None:
    c = Fail2banClient(os.path.join(sock_dir, "nothing.sock"), timeout=5.0)
    assert await _elapsed(c.version()) < FAST


async def test_refused_socket_fails_fast(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "dead.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(path)  # a socket file nobody listens on, as after fail2ban was killed
    c = Fail2banClient(path, timeout=5.0)
    assert await _elapsed(c.version()) < FAST


async def test_backoff_fails_fast_then_recovers(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "late.sock")
    c = Fail2banClient(path, timeout=5.0)
    await _elapsed(c.version())
    server = FakeFail2ban(path)
    await server.start()
    try:
        # Inside the backoff window the socket is not even tried.
        assert await _elapsed(c.version()) < FAST
        assert server.connections == 0

        async def pinged() -> bool:
            try:
                await c.version()
            except Fail2banUnavailable:
                return False
            return True

        await await_until(pinged, 5.0, "a ping after the backoff window")
        assert server.connections == 1
        assert c._backoff == 0.0
    finally:
        await c.close()
        await server.stop()


async def test_backoff_doubles_up_to_cap(sock_dir: str) -> None:
    c = Fail2banClient(os.path.join(sock_dir, "none.sock"))
    seen = []
    for _ in range(6):
        c._retry_at = 0.0  # skip the wait; the window length is what is checked
        with pytest.raises(Fail2banUnavailable):
            await c.version()
        seen.append(c._backoff)
    assert seen == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


async def test_reconnects_after_server_restart(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "restart.sock")
    first = FakeFail2ban(path)
    await first.start()
    c = Fail2banClient(path, timeout=5.0)
    try:
        await c.version()
        await first.stop()
        second = FakeFail2ban(path)
        await second.start()
        try:
            await c.version()
            assert second.connections == 1
        finally:
            await second.stop()
    finally:
        await c.close()


async def test_close_says_goodbye(client: Fail2banClient, fake: FakeFail2ban) -> None:
    await client.version()
    await client.close()

    async def said_goodbye() -> bool:
        return fake.client_closes > 0

    await await_until(said_goodbye, 5.0, "the close command")
    await client.version()
    assert fake.connections == 2


# --------------------------------------------------------------- typed API


async def test_typed_api(client: Fail2banClient) -> None:
    assert await client.jails() == ["sshd", "blocklist-import"]
    assert await client.ban("blocklist-import", ["1.2.3.4", "5.6.7.8", "1.2.3.4"]) == 2
    assert await client.ban("blocklist-import", ["1.2.3.4"]) == 0
    assert await client.ban("blocklist-import", []) == 0
    assert await client.jail_counts("blocklist-import") == JailCounts(1, 4, 2, 9)
    assert await client.banned("blocklist-import") == ["1.2.3.4", "5.6.7.8"]
    assert await client.banned_with_time("blocklist-import") == [
        BanEntry("1.2.3.4", _local_epoch("2026-11-23 17:37:13"), -1),
        BanEntry("5.6.7.8", _local_epoch("2026-11-23 17:37:13"), -1),
    ]
    assert await client.is_banned("blocklist-import", ["1.2.3.4"]) == [True]
    assert await client.is_banned("blocklist-import", ["9.9.9.9"]) == [False]
    assert await client.is_banned("blocklist-import", ["1.2.3.4", "9.9.9.9"]) == [True, False]
    assert await client.is_banned("blocklist-import", []) == []
    assert await client.unban("blocklist-import", ["1.2.3.4", "9.9.9.9"]) == 1
    assert await client.ignoreip("sshd") == ["127.0.0.1/8", "::1"]
    assert await client.dbpurgeage() == 86400
    assert await client.dbfile() is None
