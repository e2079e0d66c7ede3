"""GetStatus over the bus against two baselines measured in the same run.

- GetStatus: 2,000 sequential calls from one dbus-fast client (median, p99);
- org.freedesktop.DBus.Peer.Ping to the daemon: the bus round trip floor;
- `fail2ban-client status` run as a process: what a sysadmin's script pays today.

Starts its own sandboxed fail2ban, private system-like bus and daemon (as the tests
do). Prints figures and ratios; never asserts a time (the machine is noisy).
Run: .venv/bin/python bench/bench_status.py [--calls 2000] [--processes 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from tests.harness import DaemonProcess, F2bSandbox, PrivateSystemBus

DEST, PATH, CORE = "org.bangui.Daemon1", "/org/bangui/Daemon1", "org.bangui.Daemon1"


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


async def timed(n: int, call: Callable[[], Awaitable[None]]) -> list[float]:
    for _ in range(min(50, n)):  # warm-up
        await call()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await call()
        out.append(time.perf_counter() - start)
    return out


async def bus_figures(address: str, calls: int) -> dict[str, list[float]]:
    bus = await MessageBus(bus_address=address).connect()

    async def get_status() -> None:
        reply = await bus.call(
            Message(destination=DEST, path=PATH, interface=CORE, member="GetStatus")
        )
        assert reply is not None
        assert reply.message_type == MessageType.METHOD_RETURN

    async def ping() -> None:
        reply = await bus.call(
            Message(
                destination=DEST, path=PATH, interface="org.freedesktop.DBus.Peer", member="Ping"
            )
        )
        assert reply is not None
        assert reply.message_type == MessageType.METHOD_RETURN

    figures = {"ping": await timed(calls, ping), "get_status": await timed(calls, get_status)}
    bus.disconnect()
    return figures


def f2b_client_figures(socket: Path, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(
            ["fail2ban-client", "-s", str(socket), "status"], check=True, capture_output=True
        )
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=100)
    args = parser.parse_args()
    with (
        F2bSandbox() as f2b,
        PrivateSystemBus() as bus,
        DaemonProcess.from_sandbox(f2b, bus, {"log": {"level": "info"}}),
    ):
        figures = asyncio.run(bus_figures(bus.address, args.calls))
        figures["fail2ban_client"] = f2b_client_figures(f2b.socket_path, args.processes)
    rows = {name: summary(samples) for name, samples in figures.items()}
    print(f"{'what':<34}{'n':>6}{'median ms':>12}{'p99 ms':>10}")
    labels = {
        "ping": "Peer.Ping (bus floor)",
        "get_status": "GetStatus over the bus",
        "fail2ban_client": "fail2ban-client status (process)",
    }
    for name, (median, p99) in rows.items():
        print(f"{labels[name]:<34}{len(figures[name]):>6}{median * 1e3:>12.3f}{p99 * 1e3:>10.3f}")
    status, ping, proc = rows["get_status"][0], rows["ping"][0], rows["fail2ban_client"][0]
    print(f"GetStatus / Peer.Ping (median):               {status / ping:.2f}x")
    print(f"fail2ban-client status / GetStatus (median):  {proc / status:.1f}x faster over D-Bus")


if __name__ == "__main__":
    main()
