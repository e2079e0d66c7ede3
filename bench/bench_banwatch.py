"""The ban watch: how soon BanAdded arrives, and what watching costs fail2ban.

1. Latency: a fresh sandbox (sshd with the dummy action, as the tests run it) and the
   daemon with the DEFAULT config (ban_watch = 2 s); N bans made one at a time with
   `fail2ban-client set sshd banip`. BanAdded's arrival (a dbus-fast subscriber) is
   compared with the command's return and with fail2ban's own "Ban" log line.
2. Cost at scale: sshd holding 50,000 bans (its action emptied so that loading them
   takes seconds, not the dummy action's 11 ms fork per ban), one new ban a second
   through the socket. fail2ban-server's CPU time (/proc/PID/stat utime+stime) over
   the same load without the daemon, with it, and without it again (same run, same
   server): the ratio is "with" over the mean of the two "without" windows. Every one
   of the bans made while the daemon runs must get its BanAdded.

Starts its own fail2ban, private system-like bus and daemon, as the tests do. Prints
figures and ratios; never asserts a time (the machine is noisy).
Run: .venv/bin/python bench/bench_banwatch.py [--bans 20] [--active 50000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import re
import sqlite3
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import DaemonProcess, F2bSandbox, PrivateSystemBus
from tests.harness.util import wait_until
from tests.integration.ban_signals import BanSignals, percentile

TICK = os.sysconf("SC_CLK_TCK")
DEFAULTS = {"tasks": None, "log": {"level": "info"}}  # no tasks table: config.md's defaults
_BAN_LINE = re.compile(r"^(\S+ \S+) fail2ban\.actions\s.*\[sshd\] Ban (\S+)$", re.M)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of a process: utime + stime (/proc/PID/stat, in clock ticks of
    10 ms: a 30 s window holds only a handful of them), and the sum of its threads'
    on-CPU nanoseconds (/proc/PID/task/*/schedstat), which resolves the difference."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ns = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        with contextlib.suppress(OSError), open(path) as f:
            ns += int(f.read().split()[0])
    return (int(fields[11]) + int(fields[12])) / TICK, ns / 1e9


def thread_cpu(pid: int) -> dict[str, float]:
    """On-CPU seconds per thread name (fail2ban names its threads after their jobs)."""
    out: dict[str, float] = {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        with contextlib.suppress(OSError):
            name = Path(task, "comm").read_text().strip()
            ns = int(Path(task, "schedstat").read_text().split()[0])
            out[name] = out.get(name, 0.0) + ns / 1e9
    return out


def ban_log_times(f2b: F2bSandbox) -> dict[str, float]:
    return {
        ip: datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").astimezone().timestamp()
        for stamp, ip in _BAN_LINE.findall(f2b.log_text())
    }


def show(label: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    print(
        f"  {label:<44} p50 {percentile(ms, 50):7.1f} ms   p90 {percentile(ms, 90):7.1f} ms"
        f"   max {max(ms):7.1f} ms"
    )


# ---- 1. latency -----------------------------------------------------------------


async def latency_run(f2b: F2bSandbox, address: str, n: int) -> list[tuple[str, float, float]]:
    out = []
    async with BanSignals(address) as signals:
        for i in range(n):
            ip = f"203.0.113.{i + 1}"
            result = await asyncio.to_thread(f2b.cli, "set", "sshd", "banip", ip)
            returned = time.time()
            if result.returncode != 0:
                raise RuntimeError(result.stderr)
            arrival = await signals.wait_for(ip, 10)
            out.append((ip, returned, arrival.at))
    return out


def latency(n: int) -> None:
    with F2bSandbox() as f2b, PrivateSystemBus() as bus:
        with DaemonProcess.from_sandbox(f2b, bus, DEFAULTS):
            runs = asyncio.run(latency_run(f2b, bus.address, n))
        logged = ban_log_times(f2b)
    print(f"1. BanAdded latency, {n} bans by `fail2ban-client set sshd banip`, default config")
    show("after the command returned (<0: before)", [at - ret for _ip, ret, at in runs])
    show("after fail2ban's own Ban log line", [at - logged[ip] for ip, _ret, at in runs])


# ---- 2. cost at scale -----------------------------------------------------------


def db_rows(f2b: F2bSandbox) -> int:
    conn = sqlite3.connect(f"file:{f2b.db_path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM bans").fetchone()[0])
    finally:
        conn.close()


def load_bans(f2b: F2bSandbox, active: int) -> float:
    """Ban `active` addresses in sshd and wait until fail2ban's observer has written
    every row (it lags the bans by tens of seconds at this size)."""
    started = time.monotonic()
    ips = [f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in range(active)]
    for start in range(0, active, 5000):
        f2b.client("set", "sshd", "banip", *ips[start : start + 5000], timeout=300)
    wait_until(lambda: db_rows(f2b) >= active, 600, "fail2ban's rows", interval=1)
    return time.monotonic() - started


def startup_settled(daemon: DaemonProcess) -> bool:
    """The daemon's start-up runs (copying 50,000 rows, resolving as many) are over."""
    done = {r.get("task") for r in daemon.log_records() if r.get("event") == "task_finished"}
    return {"history_sync", "geo_resolve"} <= done


async def one_ban_a_second(
    f2b: F2bSandbox, seconds: int, first: int, signals: BanSignals | None
) -> tuple[tuple[float, float], list[tuple[str, float]]]:
    """Ban one new address a second; return fail2ban's CPU seconds and (ip, returned)."""
    pid = f2b.pid
    assert pid is not None
    made = []
    threads = thread_cpu(pid)
    before = cpu_seconds(pid)
    start = time.monotonic()
    for i in range(seconds):
        ip = f"198.18.{(first + i) // 256 % 256}.{(first + i) % 256}"
        await asyncio.to_thread(f2b.client, "set", "sshd", "banip", ip)
        made.append((ip, time.time()))
        await asyncio.sleep(max(0.0, start + i + 1 - time.monotonic()))
    after = cpu_seconds(pid)
    grew = {k: round((v - threads.get(k, 0.0)) * 1000, 1) for k, v in thread_cpu(pid).items()}
    print(f"    fail2ban threads' CPU ms ({'with' if signals else 'without'} the daemon): {grew}")
    return (after[0] - before[0], after[1] - before[1]), made


async def with_daemon(
    f2b: F2bSandbox, address: str, seconds: int, first: int
) -> tuple[tuple[float, float], list[float], int]:
    async with BanSignals(address) as signals:
        cpu, made = await one_ban_a_second(f2b, seconds, first, signals)
        arrived = []
        for ip, returned in made:
            with contextlib.suppress(TimeoutError):
                arrived.append((await signals.wait_for(ip, 5)).at - returned)
    return cpu, arrived, len(made)


def cost(active: int, seconds: int) -> None:
    f2b = F2bSandbox()
    jail_conf = f2b.conf_dir / "jail.conf"
    jail_conf.write_text(jail_conf.read_text().replace("[sshd]\n", "[sshd]\naction =\n", 1))
    with f2b, PrivateSystemBus() as bus:
        loaded = load_bans(f2b, active)
        without_1, _ = asyncio.run(one_ban_a_second(f2b, seconds, 0, None))
        daemon = DaemonProcess.from_sandbox(f2b, bus, DEFAULTS)
        started = time.monotonic()
        with daemon:
            ready = time.monotonic() - started
            wait_until(lambda: startup_settled(daemon), 300, "start-up tasks", interval=0.5)
            settled = time.monotonic() - started
            snapshot = [r for r in daemon.log_records() if r.get("event") == "ban_list_read"]
            with_cpu, arrived, made = asyncio.run(with_daemon(f2b, bus.address, seconds, seconds))
        without_2, _ = asyncio.run(one_ban_a_second(f2b, seconds, 2 * seconds, None))
    stat = [without_1[0], with_cpu[0], without_2[0]]
    sched = [without_1[1], with_cpu[1], without_2[1]]
    print(f"2. sshd with {active} active bans (loaded in {loaded:.1f} s), one ban a second")
    print(
        f"  daemon READY after {ready:.1f} s, its start-up runs (history copy, geo)"
        f" done after {settled:.1f} s; lists read: {[r['bans'] for r in snapshot]}"
    )
    print(f"  fail2ban-server CPU over {seconds} s: without / with the daemon / without again")
    for label, cpu in (("utime+stime (/proc/PID/stat)", stat), ("threads' schedstat", sched)):
        ratio = cpu[1] / ((cpu[0] + cpu[2]) / 2)
        print(
            f"    {label:<30} {cpu[0]:.3f} s / {cpu[1]:.3f} s / {cpu[2]:.3f} s"
            f"   ratio with/without {ratio:.3f}x"
        )
    print(f"  BanAdded received for {len(arrived)} of {made} bans")
    if arrived:
        show("BanAdded after the banip command returned", arrived)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bans", type=int, default=20)
    parser.add_argument("--active", type=int, default=50_000)
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    latency(args.bans)
    cost(args.active, args.seconds)


if __name__ == "__main__":
    main()
