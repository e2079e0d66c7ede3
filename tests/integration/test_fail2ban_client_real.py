"""Fail2banClient and decode_data against a real, private fail2ban-server.

Each test gets the harness's sandbox (tests/harness/fail2ban.py): Debian's
`fail2ban-server` in a temp dir, jails `sshd` (fed from a log file) and manual
`blocklist-import`, a dummy action that only appends lines to a file, its own socket
and sqlite DB. No firewall is touched.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bangui_daemon.errors import Fail2banCommandError, Fail2banUnavailable
from bangui_daemon.fail2ban.ban_data import decode_data
from bangui_daemon.fail2ban.client import Fail2banClient
from tests.harness.fail2ban import JAIL_BLOCKLIST, F2bSandbox
from tests.harness.util import await_until

pytestmark = pytest.mark.integration

BLOCKLIST = JAIL_BLOCKLIST


@pytest.fixture
async def client(f2b: F2bSandbox) -> AsyncIterator[Fail2banClient]:
    """The product's client on the sandbox's socket (closed before the sandbox stops)."""
    client = Fail2banClient(str(f2b.socket_path), timeout=10.0)
    yield client
    await client.close()


# ---------------------------------------------------------------------- tests


async def test_version_jails_settings(f2b: F2bSandbox, client: Fail2banClient) -> None:
    assert (await client.version()).startswith(("0.11", "1."))
    assert set(await client.jails()) == set(f2b.jails)
    assert await client.dbfile() == str(f2b.db_path)
    assert await client.dbpurgeage() == 86400
    assert await client.ignoreip("sshd") == []
    counts = await client.jail_counts(BLOCKLIST)
    assert (counts.currently_banned, counts.currently_failed) == (0, 0)


async def test_ban_unban_cycle(client: Fail2banClient) -> None:
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


async def test_permanent_ban_with_time(client: Fail2banClient) -> None:
    await client.call("set", BLOCKLIST, "bantime", "-1")
    assert await client.ban(BLOCKLIST, ["45.7.7.7"]) == 1
    [entry] = await client.banned_with_time(BLOCKLIST)
    assert (entry.ip, entry.bantime) == ("45.7.7.7", -1)
    assert abs(entry.timeofban - time.time()) < 60


async def test_unknown_jail_and_command(client: Fail2banClient) -> None:
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
    await client.version()  # the connection survived


async def test_fifty_concurrent_calls_while_busy(f2b: F2bSandbox, client: Fail2banClient) -> None:
    busy = asyncio.create_task(client.call("sleep", "1"))
    # Separate clients each need a connection while fail2ban's listen(1) backlog is
    # full (EAGAIN); calls on the shared client queue on its lock.
    others = [Fail2banClient(str(f2b.socket_path), timeout=20.0) for _ in range(25)]
    try:
        pings = [asyncio.create_task(c.version()) for c in others]
        echoes = [asyncio.create_task(client.call("echo", str(i))) for i in range(25)]
        echoed = await asyncio.gather(*echoes)
        await asyncio.gather(*pings)
    finally:
        for c in others:
            await c.close()
    assert echoed == [[str(i)] for i in range(25)]
    assert await busy is None


async def test_killed_server_is_unavailable_quickly(
    f2b: F2bSandbox, client: Fail2banClient
) -> None:
    await client.version()
    await asyncio.to_thread(f2b.kill)
    loop = asyncio.get_running_loop()
    for _ in range(3):
        start = loop.time()
        with pytest.raises(Fail2banUnavailable):
            await client.version()
        assert loop.time() - start < 1.0
    assert f2b.socket_path.exists()  # a stale socket file: connect is refused


def ban_rows(db: Path) -> list[tuple[str, str, int, object]]:
    """fail2ban's `bans` rows (jail, ip, bantime, data) in one short read-only statement.

    fail2ban drops a ban row for good when a reader holds a lock longer than its busy
    timeout, so the connection lives for this one fetch only.
    """
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.5)
    try:
        return conn.execute("SELECT jail, ip, bantime, data FROM bans ORDER BY rowid").fetchall()
    except sqlite3.OperationalError:  # no `bans` table yet, or fail2ban is writing
        return []
    finally:
        conn.close()


async def test_decode_data_on_real_fail2ban_rows(f2b: F2bSandbox, client: Fail2banClient) -> None:
    f2b.write_failed_logins("45.33.12.7", 3)
    lines = f2b.auth_log.read_text().splitlines()

    async def sshd_banned() -> bool:
        return "45.33.12.7" in await client.banned("sshd")

    await await_until(sshd_banned, 15, "the sshd ban from log lines")
    ips = [f"45.8.{i // 250}.{i % 250 + 1}" for i in range(100)]
    assert await client.ban(BLOCKLIST, ips, timeout=60) == 100

    rows: list[tuple[str, str, int, object]] = []

    async def all_rows() -> bool:
        nonlocal rows
        rows = await asyncio.to_thread(ban_rows, f2b.db_path)
        return len(rows) == 101

    await await_until(all_rows, 15, "101 rows in fail2ban's DB")
    sshd = [r for r in rows if r[0] == "sshd"]
    assert len(sshd) == 1
    _, ip, bantime, data = sshd[0]
    assert (ip, bantime) == ("45.33.12.7", 3600)
    assert decode_data(data) == (3, lines)
    blocklist = [r for r in rows if r[0] == BLOCKLIST]
    assert sorted(r[1] for r in blocklist) == sorted(ips)
    assert {r[2] for r in blocklist} == {604800}
    assert [decode_data(r[3]) for r in blocklist] == [(0, [])] * len(ips)

    # A manual unban erases the history row: why the daemon keeps its own archive.
    assert await client.unban("sshd", ["45.33.12.7"]) == 1

    async def row_gone() -> bool:
        return len(await asyncio.to_thread(ban_rows, f2b.db_path)) == 100

    await await_until(row_gone, 15, "the unbanned row to disappear")
