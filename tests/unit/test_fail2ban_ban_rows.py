"""Waiting for fail2ban's observer to write the rows of bans before they are lifted."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from bangui_daemon.fail2ban.ban_rows import await_ban_rows
from tests.unit.f2b_schema import SCHEMA_V4

JAIL = "blocklist-import"


def f2b_db(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_V4)
    conn.close()
    return path


def write_bips(path: Path, ips: list[str]) -> None:
    """What fail2ban's observer does some time after the ban."""
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO bips (ip, jail, timeofban, bantime) VALUES (?, ?, 1, 600)",
        [(ip, JAIL) for ip in ips],
    )
    conn.commit()
    conn.close()


async def test_returns_once_every_row_is_written(tmp_path: Path) -> None:
    db = f2b_db(tmp_path / "f2b.sqlite3")
    ips = [f"45.1.{i // 250}.{i % 250 + 1}" for i in range(1200)]  # more than one lookup
    write_bips(db, ips[:700])
    waiting = asyncio.ensure_future(await_ban_rows(str(db), JAIL, ips, within=30))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # 500 rows are still to come
    write_bips(db, ips[700:])
    assert await waiting is True


async def test_gives_up_at_the_deadline_or_on_an_unreadable_db(tmp_path: Path) -> None:
    db = f2b_db(tmp_path / "f2b.sqlite3")
    write_bips(db, ["45.1.0.1"])
    assert await await_ban_rows(str(db), JAIL, ["45.1.0.1", "45.1.0.2"], within=0.3) is False
    assert await await_ban_rows(str(db), "sshd", ["45.1.0.1"], within=0.3) is False  # per jail
    assert await await_ban_rows(str(tmp_path / "missing.sqlite3"), JAIL, ["45.1.0.1"], 30) is False
    (tmp_path / "not-a-db").write_bytes(b"x" * 4096)
    assert await await_ban_rows(str(tmp_path / "not-a-db"), JAIL, ["45.1.0.1"], 30) is False
    assert await await_ban_rows(str(db), JAIL, [], within=0) is True
