"""The archive side of history: sync from a fail2ban-format DB, purge, query plans.

fail2ban's DB here is a sqlite file in its on-disk schema (version 4, as fail2ban
creates it); the integration tests use one made by a real fail2ban-server. Time is
injected (a fixed clock): nothing sleeps.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from bangui_daemon.archive import f2b_copy
from bangui_daemon.archive.db import Archive
from bangui_daemon.archive.events_repo import EventsRepository, HistoryFilter, LiveEvent
from bangui_daemon.archive.f2b_copy import Fail2banCopy
from bangui_daemon.archive.state_repo import put_state
from bangui_daemon.events import Event, EventHub, HistorySynced
from bangui_daemon.services import history_sync
from bangui_daemon.services.history import PURGE_BATCH as BATCH
from bangui_daemon.services.history import HistoryService
from bangui_daemon.services.history_sync import HistorySync
from bangui_daemon.tasks.retention import DAY, HistoryPurge
from tests.unit.f2b_schema import SCHEMA_V4

NOW = 1_800_000_000
BLOCKLIST = "blocklist-import"


def f2b_db(path: Path, rows: Iterable[tuple[str, str, int, int, Any]] = ()) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA_V4)
    add_rows(path, rows, conn)
    conn.close()
    return path


def add_rows(
    path: Path,
    rows: Iterable[tuple[str, str, int, int, Any]],
    conn: sqlite3.Connection | None = None,
) -> None:
    own = conn is None
    c = conn or sqlite3.connect(path)
    c.executemany(
        "INSERT INTO bans (jail, ip, timeofban, bantime, bancount, data) VALUES (?,?,?,?,1,?)",
        [
            (j, ip, t, bt, None if data is None else json.dumps(data).encode())
            for j, ip, t, bt, data in rows
        ],
    )
    c.commit()
    if own:
        c.close()


def sshd_data(ip: str, n: int = 3) -> dict[str, Any]:
    return {
        "matches": [
            f"Nov 23 17:37:1{i} host sshd[{i}]: Failed password from {ip}" for i in range(n)
        ],
        "failures": n,
    }


def ban_rows(n: int, start: int = 0) -> list[tuple[str, str, int, int, Any]]:
    out: list[tuple[str, str, int, int, Any]] = []
    for i in range(start, start + n):
        ip = f"45.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
        if i % 4 == 0:
            out.append((BLOCKLIST, ip, NOW - 10_000 + i, 604800, {"matches": [], "failures": 0}))
        else:
            out.append(("sshd", ip, NOW - 10_000 + i, 3600, sshd_data(ip)))
    return out


class Synced:
    """The sync plus what it published and counted."""

    def __init__(self, archive: Archive, db: Path) -> None:
        self.db = db
        self.published: list[Event] = []
        self.events = EventsRepository(archive)  # counts from 0: the archive starts empty
        hub = EventHub()
        hub.subscribe(self.published.append)
        self.sync = HistorySync(archive, self.events, lambda: str(self.db), lambda: BLOCKLIST, hub)

    @property
    def counted(self) -> int:
        return self.events.count


async def archived(archive: Archive) -> list[tuple[Any, ...]]:
    return await archive.fetchall(
        "SELECT action, jail, ip, timeofban, bantime, origin, data FROM ban_events "
        "ORDER BY action, jail, ip, timeofban"
    )


def f2b_keys(path: Path) -> set[tuple[str, str, int]]:
    conn = sqlite3.connect(path)
    try:
        return {(j, ip, t) for j, ip, t in conn.execute("SELECT jail, ip, timeofban FROM bans")}
    finally:
        conn.close()


def ban_keys(rows: Iterable[tuple[Any, ...]]) -> set[tuple[str, str, int]]:
    return {(r[1], r[2], r[3]) for r in rows if r[0] == "ban"}


# ---------------------------------------------------------------------- sync
async def test_sync_copies_everything_once_and_again_adds_nothing(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_sync, "PAGE_ROWS", 97)  # many pages, one partial
    db = f2b_db(tmp_path / "f2b.sqlite3", ban_rows(1000))
    s = Synced(archive, db)
    first = await s.sync.run()
    assert first["new_events"] == 1000
    assert first["high_water_mark"] == 1000
    assert s.published == [HistorySynced(1000)]
    assert s.counted == 1000
    rows = await archived(archive)
    assert len(rows) == 1000
    assert ban_keys(rows) == f2b_keys(db)
    by_ip = {r[2]: r for r in rows}
    assert json.loads(by_ip["45.0.0.1"][6]) == sshd_data("45.0.0.1")
    assert by_ip["45.0.0.4"][5] == "blocklist"
    assert by_ip["45.0.0.1"][5] == "selfblock"

    again = await s.sync.run()
    assert again["new_events"] == 0
    assert not again["rescanned"]
    assert len(s.published) == 1  # no HistorySynced for a sync that added nothing
    assert await archived(archive) == rows

    add_rows(db, ban_rows(10, start=1000))
    third = await s.sync.run()
    assert third["new_events"] == 10
    assert third["high_water_mark"] == 1010
    assert ban_keys(await archived(archive)) == f2b_keys(db)


async def test_sync_indexes_bulk_pages_at_once_and_merges_small_runs_in_batches(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_sync, "RECENT_MAX", 100)
    monkeypatch.setattr(history_sync, "PAGE_ROWS", 40)

    async def recent() -> int:
        return int(await archive.scalar("SELECT count(*) FROM ban_events WHERE ip_indexed = 0"))

    db = f2b_db(tmp_path / "f2b.sqlite3", ban_rows(250))
    s = Synced(archive, db)
    assert (await s.sync.run())["new_events"] == 250  # a backfill: the main index directly
    assert await recent() == 0
    for n in range(1, 4):  # small runs wait in the recent index ...
        add_rows(db, ban_rows(30, start=250 + 30 * (n - 1)))
        assert (await s.sync.run())["new_events"] == 30
        assert await recent() == 30 * n
    add_rows(db, ban_rows(30, start=340))
    assert (await s.sync.run())["new_events"] == 30  # ... until they are RECENT_MAX
    assert await recent() == 0
    assert ban_keys(await archived(archive)) == f2b_keys(db)
    history = await EventsRepository(archive).for_ip("45.0.1.104", 10)  # row 360
    assert [(e.jail, e.timeofban) for e in history] == [(BLOCKLIST, NOW - 10_000 + 360)]


async def test_synced_rows_take_the_country_the_geo_cache_already_knows(
    archive: Archive, tmp_path: Path
) -> None:
    db = f2b_db(tmp_path / "f2b.sqlite3", ban_rows(30))
    async with archive.write() as conn:
        await conn.execute(
            "INSERT INTO geo_cache (ip, found, country_code, asn, source, resolved_at, "
            "last_seen) VALUES ('45.0.0.7', 1, 'SE', 'AS29518', 'mmdb', 0, 0)"
        )
    s = Synced(archive, db)
    assert (await s.sync.run())["new_events"] == 30
    rows = await archive.fetchall(
        "SELECT ip, country_code, asn FROM ban_events WHERE country_code != ''"
    )
    assert rows == [("45.0.0.7", "SE", "AS29518")]


async def test_sync_survives_fail2ban_db_recreated_and_rowids_reused(
    archive: Archive, tmp_path: Path
) -> None:
    db = f2b_db(tmp_path / "f2b.sqlite3", ban_rows(50))
    s = Synced(archive, db)
    assert (await s.sync.run())["new_events"] == 50
    # fail2ban's DB is replaced by a new one with fewer, different rows
    db.unlink()
    f2b_db(db, ban_rows(20, start=500))
    result = await s.sync.run()
    assert result["rescanned"]
    assert result["new_events"] == 20
    # ... then by one with as many rows as the mark, reusing its rowids
    db.unlink()
    f2b_db(db, ban_rows(20, start=700))
    result = await s.sync.run()
    assert result["rescanned"]
    assert result["new_events"] == 20
    assert len(await archived(archive)) == 90  # nothing lost, nothing doubled


async def test_newest_rows_deleted_by_an_unban_then_new_bans(
    archive: Archive, tmp_path: Path
) -> None:
    db = f2b_db(tmp_path / "f2b.sqlite3", ban_rows(30))
    s = Synced(archive, db)
    await s.sync.run()
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM bans WHERE rowid >= 29")  # fail2ban's unban: rows gone
    conn.commit()
    conn.close()
    add_rows(db, ban_rows(5, start=100))  # new bans take rowids 29..33
    result = await s.sync.run()
    assert result["new_events"] == 5
    assert len(await archived(archive)) == 35
    assert ban_keys(await archived(archive)) >= f2b_keys(db)


async def test_purged_fail2ban_rows_stay_archived(archive: Archive, tmp_path: Path) -> None:
    db = f2b_db(tmp_path / "f2b.sqlite3", ban_rows(40))
    s = Synced(archive, db)
    await s.sync.run()
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM bans")  # fail2ban's purge took everything
    conn.commit()
    conn.close()
    assert (await s.sync.run())["new_events"] == 0
    add_rows(db, ban_rows(3, start=40))  # rowids start again at 1
    assert (await s.sync.run())["new_events"] == 3
    assert len(await archived(archive)) == 43


async def test_live_events_are_filled_from_fail2ban_not_doubled(
    archive: Archive, tmp_path: Path
) -> None:
    events = EventsRepository(archive)
    await events.load()
    rows = ban_rows(8, start=1)  # ips 45.0.0.1 .. 45.0.0.8
    jail, ip, t, bantime, data = rows[0]
    # the live view's bantime is end - start of `banip --with-time`: a second or three off
    added = await events.record_live(
        [
            LiveEvent("ban", jail, ip, t, bantime + 2, "selfblock"),
            LiveEvent("unban", jail, ip, t + 60, bantime, "selfblock"),
        ]
    )
    assert added == 2
    db = f2b_db(tmp_path / "f2b.sqlite3", rows)
    s = Synced(archive, db)
    assert (await s.sync.run())["new_events"] == 7
    got = await archive.fetchall(
        "SELECT action, data, recorded_by, bantime FROM ban_events WHERE ip = ? ORDER BY action",
        (ip,),
    )
    assert [(a, r) for a, _d, r, _b in got] == [("ban", "history_sync"), ("unban", "ban_watch")]
    assert got[0][3] == bantime  # completed from fail2ban's row, like the other fields
    assert json.loads(got[0][1]) == data
    service = HistoryService(events, lambda _j: "selfblock", lambda: None, clock=lambda: NOW)
    history = await service.ip_history(ip)
    assert history.total_bans == 1
    assert history.events[1].matches == data["matches"]


async def test_live_ban_one_second_before_its_row_is_the_same_ban(
    archive: Archive, tmp_path: Path
) -> None:
    """fail2ban's row holds round(time), `banip --with-time` shows it truncated."""
    events = EventsRepository(archive)
    await events.load()
    t = NOW - 100
    rows = [
        ("sshd", "45.9.0.1", t + 1, 3600, sshd_data("45.9.0.1")),  # live seen at t
        ("sshd", "45.9.0.2", t, 3600, sshd_data("45.9.0.2")),  # two bans a second apart,
        ("sshd", "45.9.0.2", t + 1, 3600, sshd_data("45.9.0.2", 4)),  # live saw the first
    ]
    live = [
        LiveEvent("ban", "sshd", "45.9.0.1", t, 3600, "selfblock"),
        LiveEvent("ban", "sshd", "45.9.0.2", t, 3600, "selfblock"),
    ]
    assert await events.record_live(live) == 2
    db = f2b_db(tmp_path / "f2b.sqlite3", rows)
    s = Synced(archive, db)
    assert (await s.sync.run())["new_events"] == 1  # 45.9.0.2's second ban
    got = await archive.fetchall(
        "SELECT ip, timeofban, recorded_by, data IS NOT NULL FROM ban_events ORDER BY ip, 2"
    )
    assert got == [
        ("45.9.0.1", t + 1, "history_sync", 1),
        ("45.9.0.2", t, "history_sync", 1),
        ("45.9.0.2", t + 1, "history_sync", 1),
    ]
    # the other order: the sync copied the row before the ban watch saw the ban
    add_rows(db, [("sshd", "45.9.0.3", t + 1, 3600, sshd_data("45.9.0.3"))])
    assert (await s.sync.run())["new_events"] == 1
    assert (
        await events.record_live([LiveEvent("ban", "sshd", "45.9.0.3", t, 3600, "selfblock")]) == 0
    )
    assert (
        await events.record_live([LiveEvent("unban", "sshd", "45.9.0.3", t, 0, "selfblock")]) == 1
    )
    assert ban_keys(await archived(archive)) == f2b_keys(db)


async def test_fail2ban_can_commit_while_a_page_is_archived(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 17: the page's archive transaction holds no lock on fail2ban's DB, so a
    writer like fail2ban's commits at once (timeout 0) from inside that transaction."""
    db = f2b_db(tmp_path / "f2b.sqlite3", ban_rows(3000))
    commits: list[str] = []

    async def put_state_and_write_fail2ban(conn: Any, key: str, value: str) -> None:
        writer = sqlite3.connect(db, timeout=0, isolation_level=None)
        try:
            writer.execute("PRAGMA journal_mode = MEMORY")  # fail2ban's
            writer.execute("BEGIN EXCLUSIVE")
            writer.execute("DELETE FROM bips")
            writer.execute("COMMIT")
            commits.append(key)
        finally:
            writer.close()
        await put_state(conn, key, value)

    monkeypatch.setattr(f2b_copy, "put_state", put_state_and_write_fail2ban)
    monkeypatch.setattr(history_sync, "PAGE_ROWS", 1000)
    assert (await Synced(archive, db).sync.run())["new_events"] == 3000
    assert len(commits) == 6  # mark and row key of each of the 3 pages


async def test_ban_watch_rows_are_looked_up_in_the_page_by_index(
    archive: Archive, tmp_path: Path
) -> None:
    """With live rows pending, each page's align looks the page up by key: a scan of the
    page for every live row stalled a first sync during a large import for minutes."""
    events = EventsRepository(archive)
    await events.load()
    await events.record_live([LiveEvent("ban", "sshd", "45.9.0.1", NOW, 600, "selfblock")])
    db = f2b_db(tmp_path / "f2b.sqlite3", ban_rows(100))
    async with Fail2banCopy.open(archive, str(db)) as copy:
        await copy.copy_range(0, 100, BLOCKLIST, {})
        plan = await copy._conn.execute_fetchall("EXPLAIN QUERY PLAN " + copy._align)
    details = [str(row[3]) for row in plan]
    assert any("f2b_stage_key" in d for d in details), details
    assert not any(d.split()[:2] == ["SCAN", "b"] for d in details), details  # the page


async def test_capture_ip_before_unban(archive: Archive, tmp_path: Path) -> None:
    db = f2b_db(tmp_path / "f2b.sqlite3", ban_rows(10))
    s = Synced(archive, db)
    assert await s.sync.capture_ip("45.0.0.3") == 1
    assert await s.sync.capture_ip("45.0.0.3") == 0
    assert s.counted == 1
    # the regular sync still copies the rest, and the captured row only once
    assert (await s.sync.run())["new_events"] == 9


async def test_capture_ip_waits_for_the_row_of_a_live_ban(archive: Archive, tmp_path: Path) -> None:
    """fail2ban writes the row of a ban after the ban: UnbanIp's capture waits for it,
    or the unban deletes nothing and fail2ban restores the ban at its next start."""
    db = f2b_db(tmp_path / "f2b.sqlite3", ban_rows(3))
    s = Synced(archive, db)
    capture = asyncio.ensure_future(s.sync.capture_ip("45.7.0.1", ["sshd"]))
    await asyncio.sleep(0.3)
    assert not capture.done()
    conn = sqlite3.connect(db)  # fail2ban's observer, late
    for table in ("bans", "bips"):
        conn.execute(
            f"INSERT INTO {table} (jail, ip, timeofban, bantime) VALUES (?, ?, 1, 60)",
            ("sshd", "45.7.0.1"),
        )
    conn.commit()
    conn.close()
    assert await capture == 1


async def test_missing_fail2ban_db_is_skipped(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Synced(archive, tmp_path / "nope.sqlite3")
    result = await s.sync.run()
    assert result["new_events"] == 0
    assert "skipped" in result
    assert await s.sync.capture_ip("45.0.0.1") == 0
    # without fail2ban's DB the ban watch still archives: its recent ip index is merged
    monkeypatch.setattr(history_sync, "RECENT_MAX", 5)
    await s.events.record_live(
        [LiveEvent("ban", "sshd", f"45.2.0.{i}", NOW - i, 600, "selfblock") for i in range(6)]
    )
    await s.sync.run()
    assert await s.events.recent_ips() == 0


# --------------------------------------------------------------------- purge
async def insert_times(archive: Archive, times: Iterable[tuple[str, int]]) -> None:
    async with archive.write() as conn:
        await conn.executemany(
            "INSERT INTO ban_events (action, jail, ip, timeofban) VALUES (?, 'sshd', ?, ?)",
            [(a, f"45.1.{i // 256 % 256}.{i % 256}", t) for i, (a, t) in enumerate(times)],
        )


def history_of(events: EventsRepository) -> HistoryService:
    return HistoryService(events, lambda _jail: "", lambda: None)


async def test_purge_removes_only_events_older_than_the_retention(archive: Archive) -> None:
    cutoff = NOW - 30 * DAY
    old = [("ban", cutoff - 1 - i) for i in range(BATCH * 2 + 17)]  # several batches
    old += [("unban", cutoff - 1), ("ban", cutoff - 400 * DAY)]
    kept = [("ban", cutoff), ("unban", cutoff), ("ban", cutoff + 1), ("ban", NOW), ("ban", NOW + 5)]
    await insert_times(archive, old + kept)
    events = EventsRepository(archive)
    await events.load()
    assert events.count == len(old) + len(kept)
    clock = {"now": float(NOW)}
    purge = HistoryPurge(history_of(events), lambda: 30, clock=lambda: clock["now"])
    result = await purge.run()
    assert result == {"deleted": len(old), "cutoff": cutoff, "retention_days": 30}
    left = await archive.fetchall("SELECT action, timeofban FROM ban_events ORDER BY timeofban")
    assert sorted(left) == sorted((a, t) for a, t in kept)
    assert events.count == len(kept)
    assert (await purge.run())["deleted"] == 0
    clock["now"] += 1  # one second later the events at the old cutoff are due
    assert (await purge.run())["deleted"] == 2
    assert events.count == len(kept) - 2


async def test_purge_with_zero_retention_keeps_everything(archive: Archive) -> None:
    await insert_times(archive, [("ban", 1), ("ban", NOW - 1000 * DAY)])
    events = EventsRepository(archive)
    await events.load()
    result = await HistoryPurge(history_of(events), lambda: 0, clock=lambda: NOW).run()
    assert result["deleted"] == 0
    assert await archive.scalar("SELECT count(*) FROM ban_events") == 2


# ------------------------------------------------------------- query plans
class Recorder:
    """Records the SQL EventsRepository runs on the archive's reader."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.sql: list[tuple[str, list[Any]]] = []
        self._fetchall = archive.fetchall
        self._scalar = archive.scalar

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        self.sql.append((sql, list(params)))
        return await self._fetchall(sql, params)

    async def scalar(self, sql: str, params: Iterable[Any] = ()) -> Any:
        self.sql.append((sql, list(params)))
        return await self._scalar(sql, params)

    async def plans(self) -> list[list[str]]:
        return [
            [str(r[3]) for r in await self._fetchall("EXPLAIN QUERY PLAN " + sql, params)]
            for sql, params in self.sql
        ]


PLAN_FILTERS = {
    "jail+since": HistoryFilter(jail="sshd", since=NOW - DAY),
    "jail+since+until": HistoryFilter(jail="sshd", since=NOW - DAY, until=NOW),
    "ip": HistoryFilter(ip="45.33.12.7"),
    "ip+since": HistoryFilter(ip="45.33.12.7", since=NOW - DAY),
    "cidr/24": HistoryFilter(network="45.33.12.0/24"),
    "cidr/28": HistoryFilter(network="45.33.12.16/28"),
    "cidr/32": HistoryFilter(network="45.33.12.7/32"),
    "cidr/16": HistoryFilter(network="45.33.0.0/16"),
    "since": HistoryFilter(since=NOW - DAY),
    "since+until": HistoryFilter(since=NOW - DAY, until=NOW - 3600),
    "since+origin": HistoryFilter(since=NOW - DAY, origin="blocklist"),
    "since+action": HistoryFilter(since=NOW - DAY, action="unban"),
    "jail+since+action": HistoryFilter(jail="sshd", since=NOW - DAY, action="ban"),
    "ip+action": HistoryFilter(ip="45.33.12.7", action="ban"),
    "ip+country": HistoryFilter(ip="45.33.12.7", country_code="NL", jail="sshd"),
    "cidr/24+country": HistoryFilter(network="45.33.12.0/24", country_code="NL"),
    # a country without rows: its addresses drive both the count and the page
    "country": HistoryFilter(country_code="NL"),
    "country+since": HistoryFilter(country_code="NL", since=NOW - DAY),
    "country+jail": HistoryFilter(country_code="NL", jail="sshd"),
}


@pytest.mark.parametrize("name", sorted(PLAN_FILTERS))
async def test_filtered_page_never_scans_ban_events(archive: Archive, name: str) -> None:
    await insert_times(archive, [("ban", NOW - i * 60) for i in range(3000)])
    events = EventsRepository(archive)
    await events.load()
    recorder = Recorder(archive)
    archive.fetchall = recorder.fetchall  # type: ignore[method-assign]
    archive.scalar = recorder.scalar  # type: ignore[method-assign]
    await events.page(PLAN_FILTERS[name], 0, 50)
    plans = await recorder.plans()
    assert len(plans) == 2  # the count and the page
    count_plan, page_plan = plans
    assert any(line.split()[1:2] == ["e"] for line in page_plan), page_plan
    for line in count_plan + page_plan:
        table = line.split()[1:2]
        if table == ["e"]:
            # "SCAN e" is a full scan of the table or of a whole index
            assert line.startswith("SEARCH e USING "), (name, line)
            if name.startswith(("ip", "cidr")):  # an address drives, whatever else is given
                assert "INDEX ban_events_ip" in line, (name, line)
            # the natural key's index is led by time: fine when the search is bounded by it
            if "sqlite_autoindex" in line:
                assert "(timeofban" in line, (name, line)
        elif table == ["ban_event_hours"]:
            # a whole scan of the hourly counts only when no time bounds them
            assert line.startswith("SEARCH") or "since" not in name, (name, line)
        else:
            assert table != ["ban_events"], (name, line)
