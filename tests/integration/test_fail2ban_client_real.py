"""Fail2banClient and decode_data against a real, private fail2ban-server.

Each test starts Debian's `fail2ban-server` in a temp dir with its own config: two
jails (`sshd` fed from a log file, manual `blocklist-import`), a dummy action that
only appends lines to a file, its own socket and sqlite DB. No firewall is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bangui_daemon.errors import Fail2banCommandError, Fail2banUnavailable
from bangui_daemon.fail2ban.ban_data import decode_data
from bangui_daemon.fail2ban.client import Fail2banClient

pytestmark = pytest.mark.integration

JAILS = {"sshd", "blocklist-import"}
BLOCKLIST = "blocklist-import"
START_TIMEOUT = 30.0

FAIL2BAN_CONF = """\
[DEFAULT]
loglevel     = INFO
logtarget    = {var}/fail2ban.log
syslogsocket = auto
socket       = {var}/fail2ban.sock
pidfile      = {var}/fail2ban.pid
dbfile       = {var}/fail2ban.sqlite3
dbpurgeage   = 1d
dbmaxmatches = 10

[Definition]
allowipv6 = auto

[Thread]
"""

# fail2ban cuts the date out of a line before matching, hence no date in the regex.
SSHD_FILTER = r"""[Definition]
failregex = ^\s*\S+ sshd\[\d+\]: Failed password for (?:invalid user )?\S+ from <HOST> port \d+
ignoreregex =
"""

RECORD_ACTION = """\
[Definition]
actionstart =
actionstop =
actioncheck =
actionban = echo "+<ip>" >> <target>
actionunban = echo "-<ip>" >> <target>

[Init]
target = /dev/null
"""

JAIL_CONF = """\
[DEFAULT]
banaction  = record
action     = record[target="{var}/record-%(__name__)s.txt"]
ignoreself = false
ignoreip   =
bantime    = 1h
findtime   = 10m
maxretry   = 3
backend    = polling
usedns     = no

[sshd]
enabled  = true
filter   = test-sshd
logpath  = {log}/auth.log

[blocklist-import]
enabled  = true
filter   =
logpath  = {log}/empty.log
bantime  = 1w
"""


@dataclass
class Server:
    root: Path
    socket: str
    db: str
    auth_log: Path
    proc: subprocess.Popen[bytes]

    def output(self) -> str:
        parts = []
        for name in ("server.out", "fail2ban.log"):
            path = self.root / "var" / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)


def write_config(root: Path) -> tuple[Path, Path]:
    """Write a self-contained fail2ban config tree under root; return (conf, var)."""
    conf, var, log = root / "conf", root / "var", root / "log"
    for d in (conf / "filter.d", conf / "action.d", var, log):
        d.mkdir(parents=True)
    (conf / "fail2ban.conf").write_text(FAIL2BAN_CONF.format(var=var))
    (conf / "jail.conf").write_text(JAIL_CONF.format(var=var, log=log))
    (conf / "filter.d" / "test-sshd.conf").write_text(SSHD_FILTER)
    (conf / "action.d" / "record.conf").write_text(RECORD_ACTION)
    (log / "auth.log").write_text("")
    (log / "empty.log").write_text("")
    return conf, var


def start_server(root: Path) -> Server:
    conf, var = write_config(root)
    sock = str(var / "fail2ban.sock")
    # -f: stay in the foreground (a child we can wait for); -x: remove a stale socket.
    argv = ["fail2ban-server", "-c", str(conf), "-s", sock, "-p", str(var / "fail2ban.pid")]
    argv += ["-f", "-x"]
    with (var / "server.out").open("wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Server(root, sock, str(var / "fail2ban.sqlite3"), root / "log" / "auth.log", proc)


def exists(path: str) -> bool:
    return os.path.exists(path)


async def wait_ready(server: Server, client: Fail2banClient) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while True:
        if server.proc.poll() is not None:
            pytest.fail(f"fail2ban-server exited early:\n{server.output()}")
        with contextlib.suppress(Fail2banUnavailable):
            if set(await client.jails()) >= JAILS:
                return
        if loop.time() > deadline:
            pytest.fail(f"fail2ban-server not ready in {START_TIMEOUT} s:\n{server.output()}")
        client._retry_at = 0.0  # poll faster than the client's own backoff
        await asyncio.sleep(0.05)


async def stop_server(server: Server, client: Fail2banClient) -> None:
    if server.proc.poll() is None:
        with contextlib.suppress(Fail2banUnavailable, Fail2banCommandError):
            await client.call("stop", timeout=10)
    await client.close()
    try:
        await asyncio.to_thread(server.proc.wait, 30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        await asyncio.to_thread(server.proc.wait, 30)


@pytest.fixture
async def f2b() -> AsyncIterator[tuple[Server, Fail2banClient]]:
    # A short path: AF_UNIX socket paths are limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="bangui-f2b-"))
    server = start_server(root)
    client = Fail2banClient(server.socket, timeout=10.0)
    try:
        await wait_ready(server, client)
        yield server, client
    finally:
        try:
            await stop_server(server, client)
        finally:
            shutil.rmtree(root, ignore_errors=True)


async def poll(what: str, check: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    """Await `check()` until it is truthy or the deadline passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------- tests


async def test_ping_version_jails_settings(f2b: tuple[Server, Fail2banClient]) -> None:
    server, client = f2b
    await client.ping()
    assert (await client.version()).startswith(("0.11", "1."))
    assert set(await client.jails()) == JAILS
    assert await client.dbfile() == server.db
    assert await client.dbpurgeage() == 86400
    assert await client.ignoreip("sshd") == []
    counts = await client.jail_counts(BLOCKLIST)
    assert (counts.currently_banned, counts.currently_failed) == (0, 0)


async def test_ban_unban_cycle(f2b: tuple[Server, Fail2banClient]) -> None:
    _, client = f2b
    ips = ["45.9.9.1", "45.9.9.2", "2001:db8:45::1"]
    before = int(time.time())
    assert await client.ban(BLOCKLIST, ips) == 3
    after = int(time.time())
    assert await client.ban(BLOCKLIST, ips) == 0
    assert sorted(await client.banned(BLOCKLIST)) == sorted(ips)
    entries = await client.banned_with_time(BLOCKLIST)
    assert sorted(e.ip for e in entries) == sorted(ips)
    for entry in entries:
        assert entry.bantime == 604800
        assert before - 1 <= entry.timeofban <= after + 1
    assert await client.is_banned(BLOCKLIST, ["45.9.9.1"]) == [True]
    assert await client.is_banned(BLOCKLIST, ["45.9.9.1", "45.1.1.1"]) == [True, False]
    counts = await client.jail_counts(BLOCKLIST)
    assert (counts.currently_banned, counts.total_banned) == (3, 3)

    assert await client.unban(BLOCKLIST, ["45.9.9.1", "45.1.1.1"]) == 1
    assert await client.unban(BLOCKLIST, ["45.9.9.2"]) == 1
    assert await client.banned(BLOCKLIST) == ["2001:db8:45::1"]
    assert await client.is_banned(BLOCKLIST, ["45.9.9.1"]) == [False]


async def test_permanent_ban_with_time(f2b: tuple[Server, Fail2banClient]) -> None:
    _, client = f2b
    await client.call("set", BLOCKLIST, "bantime", "-1")
    assert await client.ban(BLOCKLIST, ["45.7.7.7"]) == 1
    [entry] = await client.banned_with_time(BLOCKLIST)
    assert (entry.ip, entry.bantime) == ("45.7.7.7", -1)
    assert abs(entry.timeofban - time.time()) < 60


async def test_unknown_jail_and_command(f2b: tuple[Server, Fail2banClient]) -> None:
    _, client = f2b
    with pytest.raises(Fail2banCommandError) as info:
        await client.jail_counts("nosuchjail")
    assert (info.value.remote_class, info.value.remote_message) == (
        "UnknownJailException",
        "nosuchjail",
    )
    with pytest.raises(Fail2banCommandError):
        await client.ban("nosuchjail", ["45.1.2.3"])
    with pytest.raises(Fail2banCommandError) as info2:
        await client.call("frobnicate")
    assert info2.value.remote_class == "Exception"
    await client.ping()  # the connection survived


async def test_fifty_concurrent_calls_while_busy(f2b: tuple[Server, Fail2banClient]) -> None:
    server, client = f2b
    busy = asyncio.create_task(client.call("sleep", "1"))
    # Separate clients each need a connection while fail2ban's listen(1) backlog is
    # full (EAGAIN); calls on the shared client queue on its lock.
    others = [Fail2banClient(server.socket, timeout=20.0) for _ in range(25)]
    try:
        pings = [asyncio.create_task(c.ping()) for c in others]
        echoes = [asyncio.create_task(client.call("echo", str(i))) for i in range(25)]
        echoed = await asyncio.gather(*echoes)
        await asyncio.gather(*pings)
    finally:
        for c in others:
            await c.close()
    assert echoed == [[str(i)] for i in range(25)]
    assert await busy is None


async def test_killed_server_is_unavailable_quickly(f2b: tuple[Server, Fail2banClient]) -> None:
    server, client = f2b
    await client.ping()
    server.proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(server.proc.wait, 10)
    loop = asyncio.get_running_loop()
    for _ in range(3):
        start = loop.time()
        with pytest.raises(Fail2banUnavailable):
            await client.ping()
        assert loop.time() - start < 1.0
    assert exists(server.socket)  # a stale socket file: connect is refused


def ban_rows(db: str) -> list[tuple[str, str, int, object]]:
    """fail2ban's `bans` rows (jail, ip, bantime, data) in one short read-only statement.

    fail2ban drops a ban row for good when a reader holds a lock longer than its busy
    timeout, so the connection lives for this one fetch only.
    """
    if not exists(db):
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.5)
    try:
        return conn.execute("SELECT jail, ip, bantime, data FROM bans ORDER BY rowid").fetchall()
    except sqlite3.OperationalError:  # no `bans` table yet, or fail2ban is writing
        return []
    finally:
        conn.close()


async def test_decode_data_on_real_fail2ban_rows(f2b: tuple[Server, Fail2banClient]) -> None:
    server, client = f2b
    now = time.strftime("%b %d %H:%M:%S")
    lines = [
        f"{now} testhost sshd[{1000 + i}]: Failed password for invalid user admin{i}"
        f" from 45.33.12.7 port {50000 + i} ssh2\n"
        for i in range(3)
    ]
    with server.auth_log.open("a") as log:
        log.writelines(lines)

    async def sshd_banned() -> bool:
        return (await client.is_banned("sshd", ["45.33.12.7"])) == [True]

    await poll("the sshd ban from log lines", sshd_banned)
    ips = [f"45.8.{i // 250}.{i % 250 + 1}" for i in range(100)]
    assert await client.ban(BLOCKLIST, ips, timeout=60) == 100

    rows: list[tuple[str, str, int, object]] = []

    async def all_rows() -> bool:
        nonlocal rows
        rows = await asyncio.to_thread(ban_rows, server.db)
        return len(rows) == 101

    await poll("101 rows in fail2ban's DB", all_rows)
    sshd = [r for r in rows if r[0] == "sshd"]
    assert len(sshd) == 1
    _, ip, bantime, data = sshd[0]
    assert (ip, bantime) == ("45.33.12.7", 3600)
    assert decode_data(data) == (3, [line.rstrip("\n") for line in lines])
    blocklist = [r for r in rows if r[0] == BLOCKLIST]
    assert sorted(r[1] for r in blocklist) == sorted(ips)
    assert {r[2] for r in blocklist} == {604800}
    assert [decode_data(r[3]) for r in blocklist] == [(0, [])] * len(ips)

    # A manual unban erases the history row: why the daemon keeps its own archive.
    assert await client.unban("sshd", ["45.33.12.7"]) == 1

    async def row_gone() -> bool:
        return len(await asyncio.to_thread(ban_rows, server.db)) == 100

    await poll("the unbanned row to disappear", row_gone)
