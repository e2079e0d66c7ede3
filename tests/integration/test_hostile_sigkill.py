"""SIGKILL at random moments of imports and syncs, then restart: the invariants hold.

No hook inside the daemon: the test kills it from outside, a seeded random delay
after a point it observes (the ImportStarted signal, the first ban fail2ban executed,
the archive's sync mark, the daemon's READY). Seed: ``BANGUI_SIGKILL_SEED`` (9 by
default); a few iterations each, about 35 s in all.

Invariants after the retry:
- imports: fail2ban's jail holds exactly the listed set; fail2ban executed one ban
  per address and never banned twice without an unban between (the dummy action's
  +/- lines alternate), its DB has one row per banned address; no run is left
  pending and each content has one completed run;
- syncs: the archive holds exactly fail2ban's rows, none missing, none twice.
"""

from __future__ import annotations

import os
import random
import re
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.harness.daemon import DaemonProcess
from tests.harness.fail2ban import F2bSandbox
from tests.harness.util import wait_until
from tests.integration.blocklist_server import ListServer, serving
from tests.integration.dbus_calls import BLOCKLISTS, DEST, PATH, Runner, call
from tests.integration.history_db import archive_compare, fill_bans, read_state
from tests.integration.test_history import run_sync

SEED = int(os.environ.get("BANGUI_SIGKILL_SEED", "9"))
JAIL = "blocklist-import"
POOL = [f"45.{70 + i // 250}.{i % 250 // 50}.{i % 50 + 1}" for i in range(150)]
IMPORT_ROUNDS = 3
SYNC_ROWS = 40_000
SYNC_KILLS = 2


def list_body(entries: list[str]) -> bytes:
    return ("# sigkill test\n" + "\n".join(entries) + "\n").encode()


def runs(busctl: Runner, source: int) -> list[dict[str, Any]]:
    found, _total = call(busctl, BLOCKLISTS, "ListImportRuns", "uuu", str(source), "1", "100")
    return list(found)


def import_until_done(busctl: Runner, source: int) -> None:
    """ImportSource; a scheduled import running already (Busy) is waited out."""

    def imported() -> bool:
        reply = busctl("--json=short", "--timeout=60", "call", DEST, PATH, BLOCKLISTS,
                       "ImportSource", "u", str(source), timeout=70)  # fmt: skip
        if reply.returncode != 0:
            assert "Busy" in reply.stderr or "already" in reply.stderr, reply.stderr
        return reply.returncode == 0

    wait_until(imported, 60, "the import to be not busy", max_interval=0.1)


def action_history(f2b: F2bSandbox) -> dict[str, list[str]]:
    """Per address, the dummy action's +/- lines in the order fail2ban ran them."""
    out: dict[str, list[str]] = {}
    for line in f2b.dummy_actions(JAIL):
        if line[:1] in "+-" and len(line) > 1:
            out.setdefault(line[1:], []).append(line[0])
    return out


def db_rows(f2b: F2bSandbox) -> dict[str, tuple[int, int]]:
    """fail2ban's DB: per address of the jail, (rows, highest bancount)."""
    with sqlite3.connect(f"file:{f2b.db_path}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT ip, count(*), max(bancount) FROM bans WHERE jail = ? GROUP BY ip", (JAIL,)
        )
        return {str(ip): (int(n), int(top)) for ip, n, top in rows}


def assert_import_invariants(f2b: F2bSandbox, listed: set[str]) -> None:
    assert set(f2b.banned(JAIL)) == listed
    for ip, history in action_history(f2b).items():
        expected = ["+", "-"] * (len(history) // 2) + ["+"] * (len(history) % 2)
        assert history == expected, (ip, history)  # never banned twice in a row
        assert (history[-1] == "+") == (ip in listed), (ip, history)
    assert set(action_history(f2b)) >= listed
    # fail2ban writes its rows a moment after the ban (its observer thread).
    wait_until(lambda: set(db_rows(f2b)) == listed, 10, "fail2ban's rows of the listed set")
    rows = db_rows(f2b)
    assert all(row == (1, 1) for row in rows.values()), rows


@pytest.mark.daemon_config({"blocklist": {"batch_size": 10}})
def test_sigkill_at_random_moments_of_imports(
    f2b: F2bSandbox, daemon: DaemonProcess, busctl: Runner, signal_monitor: Any
) -> None:
    rnd = random.Random(SEED)
    server: ListServer
    with serving() as server:
        (source,) = call(busctl, BLOCKLISTS, "AddSource", "ssb", "killed",
                         server.url("/list/k"), "false")  # fmt: skip
        contents = 0
        for _ in range(IMPORT_ROUNDS):
            listed = sorted(rnd.sample(POOL, rnd.randrange(40, 90)))
            server.lists["k"] = list_body(listed)
            contents += 1
            point = rnd.choice(["started", "first-ban"])
            delay = rnd.uniform(0, 0.4)
            mon = signal_monitor(user="root")
            actions_before = len(f2b.dummy_actions(JAIL))

            def acted(before: int = actions_before) -> bool:
                return len(f2b.dummy_actions(JAIL)) > before

            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(busctl, "call", DEST, PATH, BLOCKLISTS,
                                      "ImportSource", "u", str(source))  # fmt: skip
                mon.wait_for(re.compile(rf"ImportStarted \(uint32 {source},"), 20)
                if point == "first-ban":
                    wait_until(acted, 20, "fail2ban's first action of the import")
                time.sleep(delay)  # the random moment
                daemon.kill()
                pending.result(30)
            mon.stop()
            daemon.start()
            import_until_done(busctl, source)
            statuses = [r["status"] for r in runs(busctl, source)]
            assert "pending" not in statuses, statuses
            assert statuses.count("completed") == len({r["content_hash"]
                                                       for r in runs(busctl, source)})  # fmt: skip
            assert_import_invariants(f2b, set(listed))
        assert len(runs(busctl, source)) <= contents


def test_sigkill_at_random_moments_of_a_sync(
    f2b: F2bSandbox, start_daemon: Callable[..., DaemonProcess], busctl: Runner
) -> None:
    rnd = random.Random(SEED)
    f2b.stop()
    fill_bans(f2b.db_path, SYNC_ROWS)
    f2b.start()
    daemon = start_daemon()  # its first history_sync starts right away
    assert daemon.config is not None
    archive = str(daemon.config["archive"]["path"])
    banned = 0
    marks = [0]

    def mark() -> int:
        return int(read_state(archive, "history_sync.rowid") or 0)

    for i in range(SYNC_KILLS):
        # A live ban between kills: the ban watch and the sync both see it.
        f2b.client("set", "sshd", "banip", f"45.90.0.{banned + 1}")
        banned += 1
        if i:  # observed point: the resumed sync moved the mark on
            wait_until(lambda: mark() > marks[-1], 60, "the resumed sync to make progress")
        time.sleep(rnd.uniform(0.0, 1.5))  # the random moment
        daemon.kill()
        marks.append(mark())
        partial = archive_compare(f2b.db_path, archive)
        assert partial["duplicates"] == 0, partial
        daemon.start()
    run_sync(busctl)
    assert daemon.stop() == 0
    final = archive_compare(f2b.db_path, archive)
    total = SYNC_ROWS + banned
    assert final == {"f2b": total, "archived": total, "missing": 0, "extra": 0, "duplicates": 0}
    print(f"sync kills at archive marks {marks[1:]} of {total} rows")
