"""A /metrics scrape with many active bans, against the same scrape with none.

Starts a sandboxed fail2ban (a jail without actions, so 100,000 bans take seconds),
a private bus and the daemon with `[metrics] listen` on loopback. Scrapes `--scrapes`
times with no bans (the baseline), bans `--bans` addresses, waits until the daemon's
snapshot holds them all, and scrapes again. Prints medians, p95 and the ratio; never
asserts a time. Run: .venv/bin/python bench/bench_metrics.py [--bans 100000]
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client.parser import text_string_to_metric_families

from tests.harness import DaemonProcess, F2bSandbox, PrivateSystemBus
from tests.harness.util import wait_until

JAIL = "bench"


def scrape(url: str) -> tuple[float, str]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:  # loopback only
        text = response.read().decode()
    return time.perf_counter() - start, text


def banned_current(text: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "f2b_jail_banned_current":
            for s in family.samples:
                if s.labels.get("jail") == JAIL:
                    return s.value
    return -1.0


def timed(url: str, n: int) -> list[float]:
    for _ in range(5):  # warm-up
        scrape(url)
    return [scrape(url)[0] for _ in range(n)]


def addresses(n: int) -> list[str]:
    base = int(ipaddress.IPv4Address("45.0.0.1"))
    return [str(ipaddress.IPv4Address(base + i)) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bans", type=int, default=100_000)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/metrics"
    with (
        F2bSandbox(extra_jails={JAIL: {"action": "", "bantime": "1d"}}) as f2b,
        PrivateSystemBus() as bus,
        DaemonProcess.from_sandbox(
            f2b, bus, {"log": {"level": "info"}, "metrics": {"listen": f"127.0.0.1:{port}"}}
        ),
    ):
        idle = timed(url, args.scrapes)
        ips = addresses(args.bans)
        started = time.perf_counter()
        for i in range(0, len(ips), 5000):
            f2b.client("set", JAIL, "banip", *ips[i : i + 5000])
        print(f"banned {len(ips):,} addresses in {time.perf_counter() - started:.1f} s")
        wait_until(lambda: banned_current(scrape(url)[1]) == len(ips), 300, "all bans seen")
        busy = timed(url, args.scrapes)
        size = len(scrape(url)[1])

    def row(name: str, samples: list[float]) -> float:
        ordered = sorted(samples)
        median = statistics.median(ordered)
        p95 = ordered[int(len(ordered) * 0.95) - 1]
        print(f"{name:<36}{len(samples):>6}{median * 1e3:>12.2f}{p95 * 1e3:>10.2f}")
        return median

    print(f"{'scrape of /metrics':<36}{'n':>6}{'median ms':>12}{'p95 ms':>10}")
    base = row("no active bans (baseline)", idle)
    loaded = row(f"{args.bans:,} active bans", busy)
    print(f"ratio (median): {loaded / base:.2f}x; body {size:,} bytes")


if __name__ == "__main__":
    main()
