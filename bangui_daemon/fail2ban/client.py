"""asyncio client for fail2ban's control socket.

fail2ban's server is single-threaded with `listen(1)`: one long command blocks every
other client, and a second pending connect gets EAGAIN. So the client keeps one
persistent connection, sends one request at a time, connects with its own
EAGAIN-retrying non-blocking connect, and bounds every call with a timeout. A call
that times out or fails mid-flight drops the connection, since a late reply would be
read as the answer to the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from bangui_daemon.errors import (
    Fail2banCommandError,
    Fail2banProtocolError,
    Fail2banUnavailable,
    InvalidArgument,
)
from bangui_daemon.fail2ban import protocol

_BACKOFF_FIRST = 0.2
_BACKOFF_MAX = 2.0
_CONNECT_RETRY_FIRST = 0.005
_CONNECT_RETRY_MAX = 0.1
_CLOSE_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class JailCounts:
    """Counters of one jail as `status JAIL short` reports them."""

    currently_failed: int
    total_failed: int
    currently_banned: int
    total_banned: int


@dataclass(frozen=True, slots=True)
class JailSettings:
    """A jail's ban policy: seconds banned (-1 = for ever), seconds counted, failures."""

    bantime: int
    findtime: int
    maxretry: int


@dataclass(frozen=True, slots=True)
class BanEntry:
    """One active ban; `bantime` is in seconds, -1 means permanent."""

    ip: str
    timeofban: int
    bantime: int


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _check_ids(ips: Sequence[str]) -> list[str]:
    """Keep option words out of id positions (`unban --all` would unban everything)."""
    if isinstance(ips, str):
        raise InvalidArgument("pass a sequence of addresses, not one string")
    out = list(ips)
    for ip in out:
        if not isinstance(ip, str) or not ip or ip.startswith("-") or ip != ip.strip():
            raise InvalidArgument("an address must be a non-empty string without options")
    return out


class Fail2banClient:
    """One serialised, reconnecting connection to fail2ban's socket."""

    def __init__(
        self,
        socket_path: str,
        timeout: float = 10.0,
        *,
        reply_limit: int = protocol.DEFAULT_REPLY_LIMIT,
    ) -> None:
        if timeout <= 0:
            raise InvalidArgument("timeout must be positive")
        self._path = socket_path
        self._timeout = timeout
        self._reply_limit = reply_limit
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._backoff = 0.0
        self._retry_at = 0.0

    @property
    def socket_path(self) -> str:
        """Path of fail2ban's socket this client talks to."""
        return self._path

    # ---------------------------------------------------------------- connection

    @property
    def connected(self) -> bool:
        """Whether the connection is up, without asking fail2ban anything (a server
        that went away has closed it: the read side is at EOF)."""
        return self._connected()

    def _drop(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()

    def _connected(self) -> bool:
        if self._reader is None or self._writer is None:
            return False
        if self._reader.at_eof() or self._writer.is_closing():
            # fail2ban restarted or closed on us while idle: reconnect quietly.
            self._drop()
            return False
        return True

    def _note_connect_failure(self, loop: asyncio.AbstractEventLoop) -> None:
        self._backoff = (
            _BACKOFF_FIRST if self._backoff == 0 else min(self._backoff * 2, _BACKOFF_MAX)
        )
        self._retry_at = loop.time() + self._backoff

    async def _connect(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            raise Fail2banUnavailable("fail2ban's socket was unreachable moments ago")
        try:
            sock = await self._connect_socket(loop, deadline)
            try:
                # The stream's buffer stays small (it pauses the socket past twice
                # this); replies are assembled, and their size checked, by _read_reply.
                reader, writer = await asyncio.open_unix_connection(
                    sock=sock, limit=protocol.READ_CHUNK
                )
            except BaseException:
                sock.close()
                raise
        except Fail2banUnavailable:
            self._note_connect_failure(loop)
            raise
        except OSError as exc:
            self._note_connect_failure(loop)
            raise Fail2banUnavailable(f"cannot connect to fail2ban: {_reason(exc)}") from exc
        self._reader, self._writer = reader, writer
        self._backoff = 0.0
        self._retry_at = 0.0

    async def _connect_socket(
        self, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> socket.socket:
        delay = _CONNECT_RETRY_FIRST
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(self._path)
            except BlockingIOError:
                # Backlog of fail2ban's listen(1) is full: it is busy, not gone.
                sock.close()
                if loop.time() + delay >= deadline:
                    raise Fail2banUnavailable(
                        "fail2ban is busy and accepts no connection"
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, _CONNECT_RETRY_MAX)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                raise Fail2banUnavailable("fail2ban is not running (socket is down)") from exc
            except PermissionError as exc:
                sock.close()
                raise Fail2banUnavailable("no permission to use fail2ban's socket") from exc
            except BaseException:
                sock.close()
                raise
            else:
                return sock

    async def _exchange(self, payload: bytes, deadline: float) -> tuple[int, object]:
        if not self._connected():
            await self._connect(deadline)
        reader, writer = self._reader, self._writer
        assert reader is not None
        assert writer is not None
        try:
            writer.write(payload)
            await writer.drain()
            return await self._read_reply(reader)
        except Fail2banUnavailable:
            # Also a refused reply (Fail2banProtocolError); a ConnectionError itself,
            # so it must not reach the OSError branch.
            self._drop()
            raise
        except OSError as exc:
            self._drop()
            raise Fail2banUnavailable(f"fail2ban connection failed: {_reason(exc)}") from exc
        except BaseException:
            # Timeout, cancellation or a bad reply: the stream position is unknown.
            self._drop()
            raise

    async def _read_reply(self, reader: asyncio.StreamReader) -> tuple[int, object]:
        """Read one reply in bounded chunks; the buffer goes as soon as the call ends."""
        assembler = protocol.ReplyAssembler(self._reply_limit)
        try:
            while True:
                chunk = await reader.read(protocol.READ_CHUNK)
                if not chunk:
                    raise Fail2banUnavailable("fail2ban closed the connection")
                reply = assembler.feed(chunk)
                if reply is not None:
                    return reply
        finally:
            assembler.release()

    async def close(self) -> None:
        """Say goodbye to fail2ban and close the connection (a later call reconnects)."""
        writer = self._writer
        if writer is None:
            return
        if not self._lock.locked() and not writer.is_closing():
            with contextlib.suppress(OSError, TimeoutError):
                writer.write(protocol.CLOSE_FRAME)
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await writer.drain()
        self._drop()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await writer.wait_closed()

    # ------------------------------------------------------------------ raw call

    # The timeout is part of the contract (ASYNC109): an expired call must also drop
    # the connection, and the default is per client.
    async def call(self, *args: str, timeout: float | None = None) -> object:  # noqa: ASYNC109
        """Send one command and return fail2ban's value; the timeout covers queueing."""
        payload = protocol.encode_command(args)
        limit = self._timeout if timeout is None else timeout
        if limit <= 0:
            raise InvalidArgument("timeout must be positive")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        try:
            async with asyncio.timeout(limit):
                async with self._lock:
                    code, value = await self._exchange(payload, deadline)
        except TimeoutError:
            raise Fail2banUnavailable(f"fail2ban did not answer within {limit:g} s") from None
        if code == 0:
            return value
        assert isinstance(value, BaseException)
        remote_class, message = protocol.describe_remote_error(value)
        raise Fail2banCommandError(remote_class, message)

    # ---------------------------------------------------------------- typed API

    async def version(self) -> str:
        """fail2ban's version string, e.g. '1.0.2'."""
        value = await self.call("version")
        if not isinstance(value, str):
            raise Fail2banProtocolError("fail2ban version reply is not a string")
        return value

    async def jails(self) -> list[str]:
        """Names of the running jails."""
        return protocol.parse_jail_list(await self.call("status"))

    async def jail_counts(self, jail: str) -> JailCounts:
        """Counters of a jail without fetching its ban list."""
        counts = protocol.parse_jail_counts(await self.call("status", jail, "short"))
        return JailCounts(*counts)

    async def banned(self, jail: str) -> list[str]:
        """Addresses banned in a jail, soonest-to-expire first."""
        return protocol.parse_str_list(await self.call("get", jail, "banip"), "banip")

    async def banned_with_time(self, jail: str) -> list[BanEntry]:
        """Active bans of a jail with their start and duration."""
        lines = await self.call("get", jail, "banip", "--with-time")
        if not isinstance(lines, list | tuple):
            raise Fail2banProtocolError("fail2ban banip --with-time reply is not a list")
        return [BanEntry(*protocol.parse_ban_with_time(line)) for line in lines]

    async def ban(self, jail: str, ips: Sequence[str], *, timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Ban addresses in one command; returns how many were not banned before."""
        ids = _check_ids(ips)
        if not ids:
            return 0
        value = await self.call("set", jail, "banip", *ids, timeout=timeout)
        return protocol.parse_int(value, "banip")

    async def unban(self, jail: str, ips: Sequence[str], *, timeout: float | None = None) -> int:  # noqa: ASYNC109
        """Unban addresses in one jail; returns how many were banned (absent ones count 0)."""
        ids = _check_ids(ips)
        if not ids:
            return 0
        value = await self.call("set", jail, "unbanip", *ids, timeout=timeout)
        return protocol.parse_int(value, "unbanip")

    async def is_banned(self, jail: str, ips: Sequence[str]) -> list[bool]:
        """Membership of each address in a jail's ban list, in order."""
        ids = _check_ids(ips)
        if not ids:
            # `get JAIL banned` without ids returns the whole list instead.
            return []
        value = await self.call("get", jail, "banned", *ids)
        # fail2ban answers a bare 0/1 for a single id and a list otherwise.
        flags = [value] if len(ids) == 1 else value
        if not isinstance(flags, list | tuple) or len(flags) != len(ids):
            raise Fail2banProtocolError("fail2ban banned reply does not match the request")
        return [bool(protocol.parse_int(flag, "banned")) for flag in flags]

    async def ignoreip(self, jail: str) -> list[str]:
        """A jail's ignoreip entries (addresses, networks or host names)."""
        return protocol.parse_str_list(await self.call("get", jail, "ignoreip"), "ignoreip")

    async def dbpurgeage(self) -> int | None:
        """Seconds fail2ban keeps rows in its DB; None when it runs without a DB."""
        value = await self.call("get", "dbpurgeage")
        return None if value is None else protocol.parse_int(value, "dbpurgeage")

    async def dbfile(self) -> str | None:
        """Path of fail2ban's sqlite DB; None when it runs without one."""
        value = await self.call("get", "dbfile")
        if value is not None and not isinstance(value, str):
            raise Fail2banProtocolError("fail2ban dbfile reply is not a string")
        return value

    async def jail_settings(self, jail: str) -> JailSettings:
        """bantime, findtime and maxretry of a jail (three short commands)."""
        values = [
            protocol.parse_int(await self.call("get", jail, key), key)
            for key in ("bantime", "findtime", "maxretry")
        ]
        return JailSettings(*values)
