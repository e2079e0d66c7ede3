"""Blocklist import through the daemon against the floor of banning the same addresses by hand.

For each fail2ban action ("none": the jail has ``action =``; "dummy": the sandbox's
dummy action, one short shell command per address, like a real firewall action):

- floor: a fresh fail2ban sandbox; the same addresses sent as one multi-IP
  ``set JAIL banip IP...`` per batch (the daemon's batch size) on one socket
  connection, with nothing else: no download, no parsing, no bookkeeping;
- daemon: a fresh sandbox, private bus and daemon; the list (a ``file://`` source
  below ``blocklist.file_dir``) imported with ImportSource; then the unchanged list
  imported twice more (both must come back "unchanged" without a banip): once as is
  (the file's validators answer, like an HTTP 304) and once with a new mtime (the
  bytes are read, parsed, hashed and found completed).

Each runs with the ban watch off (after its first tick: the import on its own) and at
its production interval (2 s), which re-reads every ban of fail2ban per tick while
the import adds them. Prints times and ratios; never asserts a time (the machine is
noisy). The dummy action forks a shell per address (~6 ms), so its default size is
smaller; ``--dummy-entries 100000`` runs the full list (about 10 min per side).
Run: .venv/bin/python bench/bench_import.py [--entries 100000] [--watched-entries 20000]
     [--dummy-entries 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import pickle
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bangui_daemon.cli.bus_client import DaemonClient
from tests.harness import DaemonProcess, F2bSandbox, PrivateSystemBus
from tests.harness.fail2ban import END, safe_loads

BATCH = 200  # the daemon's default blocklist.batch_size
WATCH_DEFAULT = 2.0  # ban_watch interval, seconds: the production default
WATCH_OFF = 86400.0  # ban_watch after its first tick only: the import on its own
JAIL_NONE = "bl-noaction"
JAIL_DUMMY = "blocklist-import"


def addresses(n: int) -> list[str]:
    """`n` distinct global unicast IPv4 addresses from 45.0.0.1 upwards."""
    first = int(ipaddress.IPv4Address("45.0.0.1"))
    return [str(ipaddress.IPv4Address(first + i)) for i in range(n)]


def sandbox() -> F2bSandbox:
    """fail2ban with the usual jails plus one whose action is none (``action =``)."""
    return F2bSandbox(extra_jails={JAIL_NONE: {"action": "", "bantime": "1w"}})


def floor(jail: str, ips: list[str]) -> float:
    """Seconds to ban `ips` in a fresh fail2ban, one multi-IP banip per batch, one socket."""
    with sandbox() as f2b:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(f2b.socket_path))
            start = time.perf_counter()
            for at in range(0, len(ips), BATCH):
                command = ["set", jail, "banip", *ips[at : at + BATCH]]
                sock.sendall(pickle.dumps(command, protocol=4) + END)
                reply = bytearray()
                while not reply.endswith(END):
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        raise RuntimeError("fail2ban closed the connection")
                    reply += chunk
                code, value = safe_loads(bytes(reply[: -len(END)]))
                if code != 0:
                    raise RuntimeError(f"banip failed: {value!r}")
            elapsed = time.perf_counter() - start
        banned = len(f2b.banned(jail))
    if banned != len(ips):
        raise RuntimeError(f"floor banned {banned} of {len(ips)}")
    return elapsed


@dataclass
class Figures:
    first_s: float
    not_modified_s: float  # re-import answered by the file's validators (no read)
    same_hash_s: float  # re-import of the same bytes with a new mtime (read, hash, compare)
    results: list[dict[str, Any]]


async def _imports(address: str, path: Path) -> Figures:
    client = await DaemonClient(long_timeout=3600).connect(address)
    timings: list[float] = []
    results: list[dict[str, Any]] = []
    try:
        source = await client.add_source("bench", f"file://{path}", False)
        for attempt in range(3):
            if attempt == 2:  # same content, new validators: the content-hash path
                later = time.time() + 10
                os.utime(path, (later, later))
            start = time.perf_counter()
            results.append(dict(await client.import_source(source)))
            timings.append(time.perf_counter() - start)
    finally:
        client.close()
    first_s, not_modified_s, same_hash_s = timings
    return Figures(first_s, not_modified_s, same_hash_s, results)


def through_daemon(bus: PrivateSystemBus, jail: str, ips: list[str], watch: float) -> Figures:
    with sandbox() as f2b:
        overrides = {
            "log": {"level": "info", "format": "json"},
            "blocklist": {"jail": jail, "batch_size": BATCH},
            "tasks": {"ban_watch": watch},
        }
        with DaemonProcess.from_sandbox(f2b, bus, overrides) as daemon:
            assert daemon.config is not None
            path = Path(daemon.config["blocklist"]["file_dir"]) / "bench.txt"
            path.write_text("# bench list\n" + "\n".join(ips) + "\n")
            figures = asyncio.run(_imports(bus.address, path))
            done = [
                r for r in daemon.log_records() if r.get("event") == "blocklist_import_completed"
            ]
            if done:
                print(
                    f"   daemon: parse+policy {done[0].get('parse_seconds')} s, "
                    f"apply {done[0].get('apply_seconds')} s"
                )
        banned = len(f2b.banned(jail))
    first, *again = figures.results
    if first["status"] != "completed" or first["added"] != len(ips) or banned != len(ips):
        raise RuntimeError(f"unexpected first import ({banned} banned): {first}")
    if [r["status"] for r in again] != ["unchanged", "unchanged"]:
        raise RuntimeError(f"unexpected re-imports: {again}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000, help="action none")
    parser.add_argument(
        "--watched-entries", type=int, default=20_000, help="action none, ban watch every 2 s"
    )
    parser.add_argument("--dummy-entries", type=int, default=10_000, help="dummy action")
    args = parser.parse_args()
    cases = (
        ("none", JAIL_NONE, args.entries, WATCH_OFF),
        ("none", JAIL_NONE, args.watched_entries, WATCH_DEFAULT),
        ("dummy", JAIL_DUMMY, args.dummy_entries, WATCH_OFF),
        ("dummy", JAIL_DUMMY, args.dummy_entries, WATCH_DEFAULT),
    )
    rows = []
    floors: dict[tuple[str, int], float] = {}
    with PrivateSystemBus() as bus:
        for label, jail, n, watch in cases:
            if n <= 0:
                continue
            ips = addresses(n)
            if (jail, n) not in floors:
                floors[jail, n] = floor(jail, ips)
            got = through_daemon(bus, jail, ips, watch)
            watching = "off" if watch == WATCH_OFF else f"{watch:g} s"
            rows.append((label, watching, n, floors[jail, n], got))
            print(
                f"[{label}, ban watch {watching}] {n} entries: floor {floors[jail, n]:.2f} s, "
                f"import {got.first_s:.2f} s, unchanged {got.not_modified_s * 1e3:.0f} ms "
                f"(validators) / {got.same_hash_s * 1e3:.0f} ms (hash)",
                flush=True,
            )
    print()
    print(
        f"{'action':<7}{'watch':>6}{'entries':>9}{'floor s':>9}{'import s':>10}"
        f"{'floor/import':>14}{'import/s':>10}{'304 ms':>8}{'hash ms':>9}{'hash/first':>12}"
    )
    for label, watching, n, floor_s, got in rows:
        print(
            f"{label:<7}{watching:>6}{n:>9}{floor_s:>9.2f}{got.first_s:>10.2f}"
            f"{floor_s / got.first_s:>13.2f}x{n / got.first_s:>10.0f}"
            f"{got.not_modified_s * 1e3:>8.0f}{got.same_hash_s * 1e3:>9.0f}"
            f"{got.same_hash_s / got.first_s:>12.1%}"
        )
    print("goals: floor/import >= 0.9x; unchanged re-import < 5% of the first import")


if __name__ == "__main__":
    main()
