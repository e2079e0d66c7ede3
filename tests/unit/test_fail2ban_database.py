"""Fail2banDatabase against sqlite files in fail2ban's on-disk format."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from bangui_daemon.errors import Fail2banUnavailable, InvalidArgument
from bangui_daemon.fail2ban.database import (
    UNKNOWN_BANTIME,
    BanRow,
    Fail2banDatabase,
    decode_data,
)

_T = TypeVar("_T")

# fail2ban 0.11 .. 1.1 (schema version 4), as `sqlite3 fail2ban.sqlite3 .schema` prints it.
SCHEMA_V4 = """
CREATE TABLE fail2banDb(version INTEGER);
CREATE TABLE jails(name TEXT NOT NULL UNIQUE, enabled INTEGER NOT NULL DEFAULT 1);
CREATE INDEX jails_name ON jails(name);
CREATE TABLE logs(jail TEXT NOT NULL, path TEXT, firstlinemd5 TEXT,
  lastfilepos INTEGER DEFAULT 0, FOREIGN KEY(jail) REFERENCES jails(name) ON DELETE CASCADE,
  UNIQUE(jail, path), UNIQUE(jail, path, firstlinemd5));
CREATE TABLE bans(jail TEXT NOT NULL, ip TEXT, timeofban INTEGER NOT NULL,
  bantime INTEGER NOT NULL, bancount INTEGER NOT NULL default 1, data JSON,
  FOREIGN KEY(jail) REFERENCES jails(name));
CREATE INDEX bans_jail_timeofban_ip ON bans(jail, timeofban);
CREATE INDEX bans_jail_ip ON bans(jail, ip);
CREATE INDEX bans_ip ON bans(ip);
CREATE TABLE bips(ip TEXT NOT NULL, jail TEXT NOT NULL, timeofban INTEGER NOT NULL,
  bantime INTEGER NOT NULL, bancount INTEGER NOT NULL default 1, data JSON,
  PRIMARY KEY(ip, jail), FOREIGN KEY(jail) REFERENCES jails(name));
INSERT INTO fail2banDb(version) VALUES (4);
INSERT INTO jails(name) VALUES ('sshd'), ('blocklist-import');
"""

# Before fail2ban 0.10 (schema version 2): no bantime, no bancount.
SCHEMA_V2 = """
CREATE TABLE fail2banDb(version INTEGER);
CREATE TABLE jails(name TEXT NOT NULL UNIQUE, enabled INTEGER NOT NULL DEFAULT 1);
CREATE TABLE bans(jail TEXT NOT NULL, ip TEXT, timeofban INTEGER NOT NULL, data JSON);
INSERT INTO fail2banDb(version) VALUES (2);
"""

SSHD_DATA = {
    "matches": [
        ["", "Nov 23 17:37:13", " host sshd[1001]: Failed password for admin1 from 45.33.12.7"],
        "Nov 23 17:37:14 host sshd[1002]: Failed password for admin2 from 45.33.12.7",
    ],
    "failures": 3,
    "user": "admin1",
}


def blob(data: object) -> bytes:
    """fail2ban's sqlite adapter stores `data` as UTF-8 JSON bytes."""
    return json.dumps(data).encode("utf-8")


def make_db(path: Path, script: str = SCHEMA_V4) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(script)
    return conn


def add_ban(
    conn: sqlite3.Connection,
    jail: str,
    ip: str,
    timeofban: int,
    bantime: int = 3600,
    bancount: int = 1,
    data: object = b'{"matches": [], "failures": 0}',
) -> None:
    conn.execute(
        "INSERT INTO bans(jail, ip, timeofban, bantime, bancount, data) VALUES (?,?,?,?,?,?)",
        (jail, ip, timeofban, bantime, bancount, data),
    )


def write_file(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def snapshot(path: Path) -> tuple[int, bytes, list[str]]:
    """Everything a writer would change: mtime, content, sibling journal files."""
    return path.stat().st_mtime_ns, path.read_bytes(), sorted(os.listdir(path.parent))


def recreate(path: Path) -> sqlite3.Connection:
    path.unlink()
    return make_db(path)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "fail2ban.sqlite3"


async def test_missing_file_gives_empty_results(db_path: Path) -> None:
    db = Fail2banDatabase(str(db_path))
    assert not db.exists()
    assert await db.schema_version() is None
    assert await db.max_rowid() == 0
    assert await db.count_bans() == 0
    assert await db.min_max_timeofban() is None
    assert await db.fetch_bans_after(0, 100) == []
    assert not db.exists()  # read-only: never created


async def test_reads_v4_rows(db_path: Path) -> None:
    conn = make_db(db_path)
    add_ban(conn, "sshd", "45.33.12.7", 1_795_455_433, 3600, 2, blob(SSHD_DATA))
    add_ban(conn, "blocklist-import", "11.1.1.1", 1_795_455_439, 604800)
    add_ban(conn, "blocklist-import", "2001:db8::1", 1_795_455_440, -1)
    conn.close()
    db = Fail2banDatabase(str(db_path))
    assert db.exists()
    assert await db.schema_version() == 4
    assert await db.count_bans() == 3
    assert await db.max_rowid() == 3
    assert await db.min_max_timeofban() == (1_795_455_433, 1_795_455_440)
    rows = await db.fetch_bans_after(0, 100)
    assert rows[0] == BanRow(
        rowid=1,
        jail="sshd",
        ip="45.33.12.7",
        timeofban=1_795_455_433,
        bantime=3600,
        bancount=2,
        failures=3,
        matches=[
            "Nov 23 17:37:13 host sshd[1001]: Failed password for admin1 from 45.33.12.7",
            "Nov 23 17:37:14 host sshd[1002]: Failed password for admin2 from 45.33.12.7",
        ],
    )
    assert rows[1] == BanRow(2, "blocklist-import", "11.1.1.1", 1_795_455_439, 604800, 1, 0, [])
    assert rows[2].bantime == -1


async def test_pages_by_rowid(db_path: Path) -> None:
    conn = make_db(db_path)
    for i in range(25):
        add_ban(conn, "sshd", f"45.0.0.{i}", 1_700_000_000 + i)
    conn.execute("DELETE FROM bans WHERE rowid IN (3, 4)")  # a manual unban
    conn.close()
    db = Fail2banDatabase(str(db_path))
    seen: list[int] = []
    high = 0
    while page := await db.fetch_bans_after(high, 10):
        assert len(page) <= 10
        seen += [row.rowid for row in page]
        high = page[-1].rowid
    assert seen == [i for i in range(1, 26) if i not in (3, 4)]
    since = await db.fetch_bans_since(1_700_000_020, 0, 100)
    assert [row.ip for row in since] == [f"45.0.0.{i}" for i in range(20, 25)]
    assert [r.rowid for r in await db.fetch_bans_since(1_700_000_020, 23, 100)] == [24, 25]


async def test_page_size_is_bounded(db_path: Path) -> None:
    db = Fail2banDatabase(str(db_path))
    for bad in (0, -1, 10_001):
        with pytest.raises(InvalidArgument):
            await db.fetch_bans_after(0, bad)


async def test_old_schema_without_bantime_bancount(db_path: Path) -> None:
    conn = make_db(db_path, SCHEMA_V2)
    conn.execute(
        "INSERT INTO bans(jail, ip, timeofban, data) VALUES ('sshd', '1.2.3.4', 5, ?)",
        (blob({"matches": ["a"], "failures": 1}),),
    )
    conn.close()
    db = Fail2banDatabase(str(db_path))
    assert await db.schema_version() == 2
    assert await db.fetch_bans_after(0, 10) == [
        BanRow(1, "sshd", "1.2.3.4", 5, UNKNOWN_BANTIME, 1, 1, ["a"])
    ]


async def test_schema_without_data_or_version_table(db_path: Path) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("CREATE TABLE bans(jail TEXT, ip TEXT, timeofban INTEGER, bantime INTEGER)")
    conn.execute("INSERT INTO bans VALUES ('sshd', NULL, 7, 60)")
    conn.close()
    db = Fail2banDatabase(str(db_path))
    assert await db.schema_version() is None
    assert await db.fetch_bans_after(0, 10) == [BanRow(1, "sshd", "", 7, 60, 1, 0, [])]


async def test_empty_file_has_no_tables(db_path: Path) -> None:
    write_file(db_path, b"")
    db = Fail2banDatabase(str(db_path))
    assert db.exists()
    assert await db.schema_version() is None
    assert await db.max_rowid() == 0
    assert await db.fetch_bans_after(0, 10) == []


async def test_not_a_database(db_path: Path) -> None:
    write_file(db_path, b"this is not sqlite at all" * 100)
    with pytest.raises(Fail2banUnavailable):
        await Fail2banDatabase(str(db_path)).count_bans()


async def test_never_writes_to_the_file(db_path: Path) -> None:
    make_db(db_path).close()
    before = snapshot(db_path)
    db = Fail2banDatabase(str(db_path))
    await db.fetch_bans_after(0, 10)
    await db.schema_version()
    assert snapshot(db_path) == before
    assert before[2] == [db_path.name]
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    conn.close()


async def test_recreated_database_lowers_max_rowid(db_path: Path) -> None:
    conn = make_db(db_path)
    for i in range(5):
        add_ban(conn, "sshd", f"45.0.0.{i}", 1_700_000_000 + i)
    conn.close()
    db = Fail2banDatabase(str(db_path))
    assert await db.max_rowid() == 5
    conn = recreate(db_path)
    add_ban(conn, "sshd", "45.9.9.9", 1_800_000_000)
    conn.close()
    assert await db.max_rowid() == 1


class _CountingDatabase(Fail2banDatabase):
    """Runs a hook before each attempt, so a test can act between retries."""

    def __init__(self, path: str, hook: Callable[[int], None], lock_retries: int = 6) -> None:
        super().__init__(path, busy_timeout=0.01, retry_delay=0.01, lock_retries=lock_retries)
        self.attempts = 0
        self._hook = hook

    def _once(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        self.attempts += 1
        self._hook(self.attempts)
        return super()._once(fn)


async def test_retries_while_locked_then_reads(db_path: Path) -> None:
    conn = make_db(db_path)
    add_ban(conn, "sshd", "45.0.0.1", 1)
    writer = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN EXCLUSIVE")  # fail2ban in the middle of a write

    def hook(attempt: int) -> None:
        if attempt == 3:
            writer.execute("COMMIT")

    db = _CountingDatabase(str(db_path), hook)
    assert [r.ip for r in await db.fetch_bans_after(0, 10)] == ["45.0.0.1"]
    assert db.attempts == 3
    writer.close()
    conn.close()


async def test_gives_up_when_lock_persists(db_path: Path) -> None:
    make_db(db_path).close()
    writer = sqlite3.connect(db_path, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        db = _CountingDatabase(str(db_path), lambda _: None, lock_retries=3)
        with pytest.raises(Fail2banUnavailable, match="locked"):
            await db.count_bans()
        assert db.attempts == 4
    finally:
        writer.rollback()
        writer.close()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            blob({"matches": [["", "Nov 23", " sshd: fail"], "Nov 24 sshd: x"], "failures": 3}),
            (3, ["Nov 23 sshd: fail", "Nov 24 sshd: x"]),
        ),
        (json.dumps({"matches": ["x"], "failures": 2}), (2, ["x"])),
        (b'{"matches": [], "failures": 0}', (0, [])),
        (memoryview(b'{"failures": 5}'), (5, [])),
        (b'{"matches": [1, ["a", 2], ["b", "c"]], "failures": "7"}', (7, ["bc"])),
        (b"not json", (0, [])),
        (b"[1, 2]", (0, [])),
        (None, (0, [])),
        (42, (0, [])),
    ],
)
def test_decode_data(raw: object, expected: tuple[int, list[str]]) -> None:
    assert decode_data(raw) == expected
