"""Soak: many task runs and ban churn over minutes; memory, descriptors and lag stay flat.

Starts its own sandboxed fail2ban (a jail `soak` without action next to the usual
ones), private system-like bus and daemon, as the tests do. Then, in `--tasks` paced
rounds spread over `--duration` seconds, each round:

- calls RunTask over the bus (cycling through every task but ban_watch);
- bans a batch of addresses in fail2ban (`--bans` in all) and unbans the
  previous round's batch, so the daemon's ban watch and history sync see the churn.

Figures, printed for the warm start (after 10% of the rounds) and the end: the
daemon's RSS and open descriptors, RunTask's round trip, and the task lag: how late
each `TaskFinished(ban_watch)` signal arrives after the previous one plus the
interval (scheduler lateness as a client sees it); the most tasks seen running at
once (ListTasks after every round); and RSS from half-way to the end, where caches
that grow with the archive have settled and only a leak still grows. Goal: RSS and
descriptors grow < 10%, lag does not grow.

The bans cycle through `--distinct` addresses (5,000 by default), so the caches that
are bounded by design (the geo cache: 200,000 entries in memory; geo_resolve: the
20,000 most recent addresses) fill during the warm-up and a leak shows as growth
after it. `--distinct 0` makes every ban a new address: RSS then also grows with the
geo cache, up to its bound. Never asserts (the machine is noisy).

Run: .venv/bin/python bench/soak.py [--duration 600] [--tasks 1000] [--bans 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import itertools
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from bangui_daemon.fail2ban.client import Fail2banClient
from tests.harness import DaemonProcess, F2bSandbox, PrivateSystemBus

DEST, PATH, CORE = "org.bangui.Daemon1", "/org/bangui/Daemon1", "org.bangui.Daemon1"
JAIL = "soak"
# ban_watch is left out: its scheduled runs are the ones whose lateness is measured,
# and a RunTask(ban_watch) would add a signal off the schedule.
TASKS = (
    "history_sync",
    "geo_resolve",
    "blocklist_import",
    "geo_cache_cleanup",
    "history_purge",
)
BAN_WATCH = 1.0  # seconds: the interval whose lateness is measured
FIRST = 11 << 24  # 11.0.0.0/8, then on: globally routable, never refused


def rss_and_fds(pid: int) -> tuple[int, int]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Window:
    """What one stretch of the run measured."""

    rss: int = 0
    fds: int = 0
    run_task: dict[str, list[float]] = field(default_factory=dict)
    lag: list[float] = field(default_factory=list)
    status: dict[str, int] = field(default_factory=dict)


class Soak:
    def __init__(self, args: argparse.Namespace, daemon: DaemonProcess, f2b: F2bSandbox) -> None:
        self.args = args
        self.daemon = daemon
        self.f2b = Fail2banClient(str(f2b.socket_path), timeout=60.0)
        self.finished_at: list[float] = []
        self.busy = 0
        self.failed_tasks = 0
        self.most_running = 0
        self.half_rss = 0

    def _on_message(self, msg: Message) -> None:
        if msg.member == "TaskFinished" and msg.body and msg.body[0] == "ban_watch":
            self.finished_at.append(time.monotonic())

    async def _run_task(self, bus: MessageBus, name: str) -> float:
        started = time.perf_counter()
        reply = await bus.call(
            Message(
                destination=DEST,
                path=PATH,
                interface=CORE,
                member="RunTask",
                signature="s",
                body=[name],
            )
        )
        took = time.perf_counter() - started
        assert reply is not None
        if reply.message_type == MessageType.ERROR:
            if reply.error_name and reply.error_name.endswith(".Busy"):
                self.busy += 1
            else:
                raise RuntimeError(f"RunTask({name}): {reply.error_name} {reply.body}")
        elif reply.body[0].get("status") is not None and reply.body[0]["status"].value == "failed":
            self.failed_tasks += 1
        return took

    async def _running_tasks(self, bus: MessageBus) -> int:
        reply = await bus.call(
            Message(destination=DEST, path=PATH, interface=CORE, member="ListTasks")
        )
        assert reply is not None
        return sum(1 for task in reply.body[0] if task["running"].value)

    async def _status(self, bus: MessageBus) -> dict[str, int]:
        reply = await bus.call(
            Message(destination=DEST, path=PATH, interface=CORE, member="GetStatus")
        )
        assert reply is not None
        keys = ("archived_events", "geo_cache_entries", "active_bans")
        return {key: int(reply.body[0][key].value) for key in keys}

    def _lag_since(self, since: float) -> list[float]:
        times = [t for t in self.finished_at if t >= since]
        return [later - earlier - BAN_WATCH for earlier, later in itertools.pairwise(times)]

    async def run(self) -> tuple[Window, Window]:
        args = self.args
        bus = await MessageBus(bus_address=self.daemon.address).connect()
        await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=[f"type='signal',interface='{CORE}',member='TaskFinished'"],
            )
        )
        bus.add_message_handler(self._on_message)
        per_round = args.bans // args.tasks
        step = args.duration / args.tasks
        warm = max(1, args.tasks // 10)
        start, end = Window(), Window()
        previous: list[str] = []
        began = time.monotonic()
        warm_at = began
        for i in range(args.tasks):
            batch = [
                str(ipaddress.IPv4Address(FIRST + (i * per_round + k) % args.distinct))
                for k in range(per_round)
            ]
            if batch:
                await self.f2b.ban(JAIL, batch)
            if previous:
                await self.f2b.unban(JAIL, previous)
            previous = batch
            task = TASKS[i % len(TASKS)]
            took = await self._run_task(bus, task)
            if i < warm * 2:
                start.run_task.setdefault(task, []).append(took)
            elif i >= args.tasks - warm * 2:
                end.run_task.setdefault(task, []).append(took)
            if i == warm:
                warm_at = time.monotonic()
                start.rss, start.fds = rss_and_fds(self.daemon.pid)
                start.status = await self._status(bus)
            if i == args.tasks // 2:
                self.half_rss = rss_and_fds(self.daemon.pid)[0]
            self.most_running = max(self.most_running, await self._running_tasks(bus))
            if i % max(1, args.tasks // 10) == 0:
                rss, fds = rss_and_fds(self.daemon.pid)
                print(f"  round {i:>5}: RSS {rss / 1e6:6.1f} MB, fds {fds}", flush=True)
            delay = began + (i + 1) * step - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        if previous:
            await self.f2b.unban(JAIL, previous)
        ending = time.monotonic()
        end.rss, end.fds = rss_and_fds(self.daemon.pid)
        end.status = await self._status(bus)
        span = (ending - warm_at) / 10
        start.lag = self._lag_since(warm_at)[: max(2, int(span / BAN_WATCH))]
        end.lag = self._lag_since(ending - span)
        bus.disconnect()
        await self.f2b.close()
        return start, end


def growth(before: float, after: float) -> str:
    return f"{(after - before) / before * 100:+.1f}%" if before else "n/a"


def ms(samples: list[float], pick: str) -> float:
    if not samples:
        return float("nan")
    if pick == "median":
        return statistics.median(samples) * 1e3
    return max(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--tasks", type=int, default=1000, help="RunTask calls (default 1000)")
    parser.add_argument("--bans", type=int, default=100_000, help="bans, each unbanned later")
    parser.add_argument(
        "--distinct",
        type=int,
        default=5000,
        help="distinct addresses the bans cycle through (default 5000; 0: every ban a new one)",
    )
    args = parser.parse_args()
    args.distinct = args.distinct or args.bans
    if args.tasks < 20 or args.bans < 0 or args.distinct < args.bans // args.tasks * 2:
        parser.error("--tasks must be at least 20, --distinct at least two rounds' bans")
    overrides = {
        "log": {"level": "info"},
        "tasks": {"ban_watch": BAN_WATCH, "history_sync": 10, "geo_resolve": 60},
    }
    started = time.monotonic()
    with (
        F2bSandbox(extra_jails={JAIL: {"action": "", "bantime": "1d"}}) as f2b,
        PrivateSystemBus() as bus,
        DaemonProcess.from_sandbox(f2b, bus, overrides) as daemon,
    ):
        soak = Soak(args, daemon, f2b)
        start, end = asyncio.run(soak.run())
        alive = daemon.running
    took = time.monotonic() - started
    print(
        f"soak: {args.tasks} RunTask, {args.bans} bans + unbans of {args.distinct} addresses"
        f" in {took:.0f} s "
        f"(Busy {soak.busy}, failed runs {soak.failed_tasks}, daemon alive {alive})"
    )
    print(f"{'figure':<40}{'start':>12}{'end':>12}{'growth':>10}")
    rows = [
        ("RSS (MB)", start.rss / 1e6, end.rss / 1e6),
        ("open fds", start.fds, end.fds),
        *((key, start.status[key], end.status[key]) for key in start.status),
        *(
            (
                f"RunTask {task} median (ms)",
                ms(start.run_task[task], "median"),
                ms(end.run_task.get(task, []), "median"),
            )
            for task in TASKS
            if task in start.run_task
        ),
        ("task lag median (ms)", ms(start.lag, "median"), ms(end.lag, "median")),
        ("task lag max (ms)", ms(start.lag, "max"), ms(end.lag, "max")),
    ]
    rows.insert(1, ("RSS, second half (MB)", soak.half_rss / 1e6, end.rss / 1e6))
    for label, before, after in rows:
        print(f"{label:<40}{before:>12.1f}{after:>12.1f}{growth(before, after):>10}")
    print(f"most tasks running at once: {soak.most_running} of {len(TASKS) + 1} (pile-up)")


if __name__ == "__main__":
    main()
