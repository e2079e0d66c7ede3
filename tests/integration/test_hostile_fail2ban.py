"""The daemon against a hostile fail2ban: whoever binds the socket path after fail2ban.

For each hostile mode (tests/harness/hostile_f2b.py) the real fail2ban is stopped and
the fake takes its socket path; the daemon, polling every 0.5 s, must stay alive,
answer read methods within a bounded time, keep its memory (peak RSS) and file
descriptors bounded, never run the pickle's code, and reconnect within 15 s once the
real fail2ban is back. About 45 s for the six modes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness.daemon import DaemonProcess
from tests.harness.fail2ban import F2bSandbox
from tests.harness.hostile_f2b import MODES, read_stats
from tests.harness.util import REPO_ROOT, wait_until
from tests.integration.dbus_calls import CORE, DEST, HISTORY, PATH, Runner, get_property

RSS_BOUND = 150 * 1000 * 1000  # bytes, peak (VmHWM) over the daemon's whole life
READ_BOUND = 5.0  # seconds a read method may take while fail2ban misbehaves
RECONNECT_BOUND = 15.0
F2B_TIMEOUT = 2.0
#: Hostile requests to live through per mode: six 200 MB replies (memory must not
#: carry over), three of the others, two of the slow ones (each costs a timeout).
REQUESTS = {"oversized": 6, "trickle": 2, "silence": 2, "pickle": 3, "garbage": 3, "truncated": 3}
#: What the daemon's log names for each mode (a named, readable error).
LOGGED = {
    "pickle": "forbidden global posix.system",
    "garbage": "not a valid pickle",
    "truncated": "fail2ban closed the connection",
    "oversized": "fail2ban reply is larger than",
    "trickle": f"did not answer within {F2B_TIMEOUT:g} s",
    "silence": f"did not answer within {F2B_TIMEOUT:g} s",
}
READ_METHODS = [
    (CORE, "GetStatus", ()),
    (CORE, "ListJails", ()),
    (CORE, "ListBans", ("suu", "", "0", "10")),
    (CORE, "ListTasks", ()),
    (HISTORY, "GetTimeline", ("xx", "0", "3600")),
]


def memory(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process in bytes, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def timed_read(busctl: Runner, iface: str, member: str, args: tuple[str, ...]) -> str:
    """Call a read method; return "ok" or the D-Bus error name, failing when it is slow."""
    started = time.monotonic()
    result = busctl("call", DEST, PATH, iface, member, *args, timeout=READ_BOUND + 5)
    took = time.monotonic() - started
    assert took < READ_BOUND, f"{member} took {took:.1f} s"
    if result.returncode == 0:
        return "ok"
    match = re.search(r"org\.[\w.]+Error\.\w+", result.stderr)
    return match.group(0) if match else result.stderr.strip()


@pytest.mark.parametrize("mode", MODES)
def test_daemon_outlives_a_hostile_fail2ban(
    mode: str, f2b: F2bSandbox, start_daemon: Any, busctl: Runner, tmp_path: Path
) -> None:
    daemon: DaemonProcess = start_daemon(fail2ban={"timeout": F2B_TIMEOUT})
    wait_until(lambda: get_property(busctl, "Fail2banConnected"), 10, "first connection")
    fds_before = open_fds(daemon.pid)
    f2b.stop()
    marker = tmp_path / "pwned"
    fake = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.harness.hostile_f2b",
            str(f2b.socket_path),
            mode,
            "--marker",
            str(marker),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    answers: set[str] = set()
    fds_seen = [fds_before]
    try:

        def enough() -> bool:
            assert daemon.running, "the daemon died"
            assert fake.poll() is None, "the hostile server died"
            fds_seen.append(open_fds(daemon.pid))
            for iface, member, args in READ_METHODS:
                answers.add(timed_read(busctl, iface, member, args))
            return int(read_stats(f2b.socket_path).get("requests", 0)) >= REQUESTS[mode]

        wait_until(enough, 60, f"{REQUESTS[mode]} hostile {mode} replies", max_interval=0.5)
        daemon.wait_for_output(LOGGED[mode], timeout=F2B_TIMEOUT + 5)
        rss, peak = memory(daemon.pid)
        stats = read_stats(f2b.socket_path)
        print(f"{mode}: RSS {rss / 1e6:.0f} MB, peak {peak / 1e6:.0f} MB, fds {fds_seen}, {stats}")
    finally:
        fake.kill()
        fake.wait(10)
    assert daemon.running
    assert not marker.exists(), "the pickle's code ran"
    assert peak < RSS_BOUND, f"peak RSS {peak / 1e6:.0f} MB (now {rss / 1e6:.0f} MB)"
    # No connection storm (each connection carried a request) and no descriptors (or
    # tasks holding them) piling up.
    assert stats["connections"] <= stats["requests"] + 1, stats
    assert max(fds_seen) <= fds_before + 3, fds_seen
    assert answers <= {"ok", "org.bangui.Daemon1.Error.Fail2banUnavailable"}, answers
    assert get_property(busctl, "Fail2banConnected") is False

    started = time.monotonic()
    f2b.start()
    wait_until(
        lambda: get_property(busctl, "Fail2banConnected"),
        RECONNECT_BOUND,
        "the daemon to reconnect to the real fail2ban",
    )
    assert time.monotonic() - started < RECONNECT_BOUND
    assert open_fds(daemon.pid) <= fds_before + 3
