"""How long a first history sync keeps fail2ban's writer waiting (issue 17).

``python bench/bench_f2b_lock.py [--rows 300000]``: fills a fail2ban-format DB (the
unit tests' copy of fail2ban's schema, rows made by tests/integration/history_db.py),
then measures three things in one run: a writer thread that acts as fail2ban's does
(journal_mode MEMORY, synchronous OFF, every 50 ms ``BEGIN IMMEDIATE``, one INSERT,
``COMMIT``, 5 s timeout) alone for 3 s, the baseline of its commit times; HistorySync
in-process over a fresh archive alone; and both at once, over another fresh archive.

Printed: the sync's wall time alone and with the writer (ratio); the writer's longest
and mean commit time during the sync against its baseline, the commits that failed
("database is locked"); the sync's own count of its reads of fail2ban's DB (longest,
total, share of the sync's wall time). Nothing is asserted. ``BANGUI_TREE=/other/tree``
measures another checkout's sync (the before/after of issue 17; its own counts are left
out where that version keeps none).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog.testing

# BANGUI_TREE=/path/to/another/checkout measures that version's sync instead
sys.path.insert(0, os.environ.get("BANGUI_TREE", str(Path(__file__).resolve().parent.parent)))

from bangui_daemon.archive.db import Archive
from bangui_daemon.archive.events_repo import EventsRepository
from bangui_daemon.events import EventHub
from bangui_daemon.services.history_sync import HistorySync
from tests.integration.history_db import fill_bans
from tests.unit.f2b_schema import SCHEMA_V4


class Writer(threading.Thread):
    """fail2ban's writer, as far as locks go: one short write transaction per tick."""

    def __init__(self, db: Path, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.db, self.every = db, every
        self.waits: list[float] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(self.db, timeout=5.0, isolation_level=None)
        conn.execute("PRAGMA journal_mode = MEMORY")  # fail2ban's own settings
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("CREATE TABLE IF NOT EXISTS bench_probe (t REAL)")
        while not self.stop.wait(self.every):
            started = time.monotonic()
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO bench_probe VALUES (?)", (started,))
                conn.execute("COMMIT")
            except sqlite3.OperationalError:
                self.failures += 1
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            self.waits.append(time.monotonic() - started)
        conn.close()


async def one_sync(db: Path, archive_path: Path) -> float:
    """Wall time of one first sync of `db` into a new archive."""
    archive = await Archive.open(str(archive_path))
    try:
        events = EventsRepository(archive)
        await events.load()
        sync = HistorySync(archive, events, lambda: str(db), lambda: "blocklist-import", EventHub())
        started = time.monotonic()
        await sync.run()
        return time.monotonic() - started
    finally:
        await archive.close()


def sync_holds(log_lines: Sequence[Mapping[str, object]]) -> dict[str, object]:
    for record in log_lines:
        if record.get("event") == "history_sync_complete":
            return {k: v for k, v in record.items() if str(k).startswith("f2b_")}
    return {}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=300_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-f2b-lock-") as tmp:
        work = Path(tmp)
        db = work / "fail2ban.sqlite3"
        conn = sqlite3.connect(db)
        conn.executescript(SCHEMA_V4)
        conn.close()
        fill_bans(db, args.rows)

        baseline = Writer(db)
        baseline.start()
        await asyncio.sleep(3)
        baseline.stop.set()
        baseline.join()
        alone = await one_sync(db, work / "alone.sqlite3")
        writer = Writer(db)
        writer.start()
        with structlog.testing.capture_logs() as logs:
            loaded = await one_sync(db, work / "loaded.sqlite3")
        writer.stop.set()
        writer.join()
        own = sync_holds(logs)

    waits, base = writer.waits, baseline.waits
    print(
        f"first sync of {args.rows} rows: alone {alone:.2f} s, with fail2ban's writer "
        f"{loaded:.2f} s (ratio {loaded / alone:.2f})"
    )
    print(
        f"writer's commit during the sync: longest {max(waits) * 1000:.0f} ms, mean "
        f"{statistics.mean(waits) * 1000:.1f} ms over {len(waits)}; alone: longest "
        f"{max(base) * 1000:.0f} ms, mean {statistics.mean(base) * 1000:.1f} ms (ratio of "
        f"means {statistics.mean(waits) / statistics.mean(base):.1f}); "
        f"{writer.failures} failed (database is locked)"
    )
    if own:
        share = 100 * float(str(own["f2b_read_seconds"])) / loaded
        print(
            f"sync's own reads of fail2ban's DB: {own['f2b_reads']}, longest "
            f"{own['f2b_longest_read_ms']} ms, total {own['f2b_read_seconds']} s "
            f"= {share:.1f}% of the sync"
        )


if __name__ == "__main__":
    asyncio.run(main())
