"""Reading the new rows of fail2ban's DB (a real sqlite file with fail2ban's schema),
and being woken by inotify when it is written."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bangui_daemon.fail2ban.db_changes import FileChanges
from bangui_daemon.fail2ban.db_tail import BanRowTail, Fail2banDbUnavailable
from tests.unit.f2b_schema import SCHEMA_V4


def make_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(SCHEMA_V4)
    return conn


def ban(conn: sqlite3.Connection, ip: str, t: int = 1_700_000_000, jail: str = "sshd") -> None:
    conn.execute(
        "INSERT INTO bans(jail, ip, timeofban, bantime, bancount, data) VALUES (?,?,?,?,1,'{}')",
        (jail, ip, t, 600),
    )


def unban(conn: sqlite3.Connection, ip: str) -> None:
    conn.execute("DELETE FROM bans WHERE ip = ?", (ip,))  # what fail2ban's delBan does


@pytest.fixture
async def tail(tmp_path: Path) -> AsyncIterator[BanRowTail]:
    t = BanRowTail(str(tmp_path / "fail2ban.sqlite3"), page=3)
    yield t
    await t.close()


async def ips(t: BanRowTail) -> list[str]:
    out = []
    while True:
        read = await t.read()
        out += [r.ip for r in read.rows]
        if not read.more:
            return out


async def test_only_rows_written_after_the_start_are_read(tail: BanRowTail) -> None:
    conn = make_db(Path(tail.path))
    ban(conn, "192.0.2.1")
    await tail.start()
    assert await ips(tail) == []
    for i in range(2, 9):  # more than a page
        ban(conn, f"192.0.2.{i}")
    assert await ips(tail) == [f"192.0.2.{i}" for i in range(2, 9)]
    assert await ips(tail) == []


async def test_a_reused_rowid_after_an_unban_is_still_read(tail: BanRowTail) -> None:
    conn = make_db(Path(tail.path))
    ban(conn, "192.0.2.1")
    await tail.start()
    ban(conn, "192.0.2.2")
    assert await ips(tail) == ["192.0.2.2"]
    unban(conn, "192.0.2.2")  # the newest row goes; sqlite hands its rowid out again
    ban(conn, "192.0.2.3")
    assert conn.execute("SELECT rowid FROM bans WHERE ip = '192.0.2.3'").fetchone() == (2,)
    read = await tail.read()
    assert ([r.ip for r in read.rows], read.lost) == (["192.0.2.3"], False)


async def test_a_replaced_database_says_rows_may_be_lost(tail: BanRowTail) -> None:
    path = Path(tail.path)
    conn = make_db(path)
    ban(conn, "192.0.2.1")
    await tail.start()
    conn.close()
    os.remove(path)
    conn = make_db(path)
    ban(conn, "198.51.100.1")
    ban(conn, "198.51.100.2")
    read = await tail.read()
    assert (read.rows, read.lost) == ([], True)  # the mark moved to the new file's end
    ban(conn, "198.51.100.3")
    assert await ips(tail) == ["198.51.100.3"]


async def test_no_read_transaction_is_left_open(tail: BanRowTail) -> None:
    conn = make_db(Path(tail.path))
    await tail.start()
    ban(conn, "192.0.2.1")
    await tail.read()
    conn.execute("PRAGMA busy_timeout = 0")
    conn.execute("BEGIN EXCLUSIVE")  # fails at once if a reader still held the file
    conn.execute("COMMIT")


async def test_a_missing_database_or_table_is_named(tail: BanRowTail) -> None:
    with pytest.raises(Fail2banDbUnavailable):
        await tail.start()
    sqlite3.connect(tail.path).close()  # an empty file: no bans table
    with pytest.raises(Fail2banDbUnavailable, match="no usable bans table"):
        await tail.read()


async def test_inotify_wakes_on_the_database_only(tmp_path: Path) -> None:
    db = tmp_path / "fail2ban.sqlite3"
    changes = FileChanges(str(db))
    assert changes.start()
    try:
        assert await changes.wait(1) is True  # the look "once at start"
        changes.clear()
        (tmp_path / "fail2ban.log").write_text("a line\n")
        assert await changes.wait(0.2) is False
        conn = make_db(db)
        assert await changes.wait(2) is True
        changes.clear()
        ban(conn, "192.0.2.1")
        assert await changes.wait(2) is True
    finally:
        changes.close()


async def test_without_a_directory_to_watch_it_polls(tmp_path: Path) -> None:
    changes = FileChanges(str(tmp_path / "missing" / "fail2ban.sqlite3"), fallback=0.05)
    assert not changes.start()
    started = asyncio.get_running_loop().time()
    assert await changes.wait(5) is True
    assert asyncio.get_running_loop().time() - started < 1
    assert not changes.event_driven
