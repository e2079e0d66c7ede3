"""The ban watch: how soon BanAdded arrives, and what watching costs fail2ban.

1. Latency: a fresh sandbox (sshd with the dummy action, as the tests run it) and the
   daemon with the DEFAULT config (ban_watch = 2 s); N bans made one at a time with
   `fail2ban-client set sshd banip`. BanAdded's arrival (a dbus-fast subscriber) is
   compared with the command's return and with fail2ban's own "Ban" log line.
2. Cost at scale: sshd holding 50,000 bans (its action emptied so that loading them
   takes seconds, not the dummy action's 11 ms fork per ban), one new ban a second
   through the socket. fail2ban-server's CPU time (/proc/PID/stat utime+stime, and
   the threads' schedstat, which resolves what 10 ms ticks cannot) over windows of
   the same load, alternately with the daemon SIGSTOPped (it then asks and reads
   nothing: "without") and running ("with"), same run, same server: a quiet
   fail2ban spends ~2 ms a second, so one window is a handful of ticks and the
   shared machine's drift is as large as the effect; alternating rounds cancels it.
   Every ban made while the daemon runs must get its BanAdded.

Starts its own fail2ban, private system-like bus and daemon, as the tests do. Prints
figures and ratios; never asserts a time (the machine is noisy).
Run: .venv/bin/python bench/bench_banwatch.py [--bans 20] [--active 50000] [--seconds 30]
     [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import os
import re
import signal
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


Window = tuple[float, float, dict[str, float]]  # stat s, schedstat s, per thread s


async def one_ban_a_second(
    f2b: F2bSandbox, seconds: int, first: int
) -> tuple[Window, list[tuple[str, float]]]:
    """Ban one new address a second; return fail2ban's CPU and (ip, returned)."""
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
    grew = {k: v - threads.get(k, 0.0) for k, v in thread_cpu(pid).items()}
    return (after[0] - before[0], after[1] - before[1], grew), made


async def rounds_with_daemon(
    f2b: F2bSandbox, daemon: DaemonProcess, address: str, seconds: int, rounds: int
) -> tuple[list[Window], list[Window], list[float], int]:
    """Alternate windows with the daemon stopped (SIGSTOP: it asks and reads nothing)
    and running; the machine's drift then hits both kinds alike."""
    off: list[Window] = []
    on: list[Window] = []
    arrived: list[float] = []
    made_on = 0
    async with BanSignals(address) as signals:
        first = 10_000
        for _ in range(rounds):
            os.kill(daemon.pid, signal.SIGSTOP)
            try:
                window, _made = await one_ban_a_second(f2b, seconds, first)
            finally:
                os.kill(daemon.pid, signal.SIGCONT)
            off.append(window)
            first += seconds
            await asyncio.sleep(2)  # the stopped daemon catches up outside the windows
            window, made = await one_ban_a_second(f2b, seconds, first)
            on.append(window)
            first += seconds
            made_on += len(made)
            for ip, returned in made:
                with contextlib.suppress(TimeoutError):
                    arrived.append((await signals.wait_for(ip, 5)).at - returned)
    return off, on, arrived, made_on


def ratio_line(label: str, off: list[float], on: list[float]) -> str:
    per = " ".join(f"{b / a:.2f}" if a else "-" for a, b in zip(off, on, strict=True))
    return (
        f"    {label:<34} without {sum(off):.3f} s, with {sum(on):.3f} s:"
        f" ratio {sum(on) / sum(off):.3f}x (per round: {per})"
    )


def cost(active: int, seconds: int, rounds: int) -> None:
    f2b = F2bSandbox()
    jail_conf = f2b.conf_dir / "jail.conf"
    jail_conf.write_text(jail_conf.read_text().replace("[sshd]\n", "[sshd]\naction =\n", 1))
    with f2b, PrivateSystemBus() as bus:
        loaded = load_bans(f2b, active)
        (before, _, _), _ = asyncio.run(one_ban_a_second(f2b, seconds, 0))
        daemon = DaemonProcess.from_sandbox(f2b, bus, DEFAULTS)
        started = time.monotonic()
        with daemon:
            ready = time.monotonic() - started
            wait_until(lambda: startup_settled(daemon), 300, "start-up tasks", interval=0.5)
            settled = time.monotonic() - started
            snapshot = [r for r in daemon.log_records() if r.get("event") == "ban_list_read"]
            off, on, arrived, made = asyncio.run(
                rounds_with_daemon(f2b, daemon, bus.address, seconds, rounds)
            )
    print(f"2. sshd with {active} active bans (loaded in {loaded:.1f} s), one ban a second")
    print(
        f"  daemon READY after {ready:.1f} s, its start-up runs (history copy, geo)"
        f" done after {settled:.1f} s; lists read: {[r['bans'] for r in snapshot]}"
    )
    print(f"  fail2ban-server CPU over {rounds} x {seconds} s windows without / with the daemon")
    print(f"    (before the daemon ever started, one window: {before:.3f} s by stat)")
    print(ratio_line("utime+stime (/proc/PID/stat)", [w[0] for w in off], [w[0] for w in on]))
    print(ratio_line("threads' schedstat", [w[1] for w in off], [w[1] for w in on]))
    for name in sorted(off[0][2]):
        print(ratio_line(f"  thread {name}", [w[2][name] for w in off], [w[2][name] for w in on]))
    print(f"  BanAdded received for {len(arrived)} of the {made} bans made while it ran")
    if arrived:
        show("BanAdded after the banip command returned", arrived)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bans", type=int, default=20)
    parser.add_argument("--active", type=int, default=50_000)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    latency(args.bans)
    cost(args.active, args.seconds, args.rounds)


if __name__ == "__main__":
    main()
