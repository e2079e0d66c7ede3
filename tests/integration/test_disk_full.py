"""The archive's filesystem fills up during a sync: the real cause is reported (issue 9).

SQLite rolls a transaction back by itself on SQLITE_FULL; the ROLLBACK that followed
failed with "cannot rollback - no transaction is active", and that replaced "database
or disk is full" in the task's result, TaskFinished and the log. The archive lives on
a 4 MiB tmpfs mounted for this test (root only) and unmounted after it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.fail2ban import F2bSandbox
from tests.harness.util import wait_until
from tests.integration.dbus_calls import CORE, DEST, PATH, Runner, call, plain
from tests.integration.history_db import fill_bans

FULL = "database or disk is full"


@pytest.fixture
def small_fs() -> Iterator[Path]:
    """A 4 MiB tmpfs in a fresh temp dir; the machine ends as it started."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = Path(tempfile.mkdtemp(prefix="bgt-full-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        path.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
        path.rmdir()


def test_full_archive_filesystem_reports_disk_full_not_a_rollback_error(
    small_fs: Path,
    f2b: F2bSandbox,
    start_daemon: Callable[..., Any],
    busctl: Runner,
    signal_monitor: Any,
) -> None:
    f2b.stop()
    fill_bans(f2b.db_path, 30_000)  # about 10 MB of archive: more than the 4 MiB
    f2b.start()
    daemon = start_daemon({"archive": {"path": str(small_fs / "archive.sqlite3")}})

    def sync_failure() -> dict[str, Any] | None:
        for record in daemon.log_records():
            if record.get("event") == "task_failed" and record.get("task") == "history_sync":
                return dict(record)
        return None

    failed = wait_until(sync_failure, 60, "the first sync to fail")
    assert failed["error"] == FULL
    degraded = [
        r
        for r in daemon.log_records()
        if r.get("event") == "daemon_state_changed" and r.get("state") == "degraded"
    ]
    assert degraded[-1]["reason"] == f"history_sync: {FULL}"
    (state,) = call(busctl, "org.freedesktop.DBus.Properties", "Get", "ss", CORE, "State")
    assert state == "degraded"

    mon = signal_monitor(user="root")
    reply = busctl(
        "--json=short", "call", DEST, PATH, CORE, "RunTask", "s", "history_sync", timeout=60
    )
    assert reply.returncode == 0, reply.stderr
    (result,) = plain(json.loads(reply.stdout)["data"])
    assert (result["status"], result["error"]) == ("failed", FULL)
    finished = mon.wait_for('TaskFinished (string "history_sync"', timeout=10)
    assert FULL in finished, finished
    assert "cannot rollback" not in daemon.output
