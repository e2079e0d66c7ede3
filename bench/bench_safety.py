"""What one never-ban decision costs (BanIp and each import build one), with baselines
measured in the same run.

Run: ``python bench/bench_safety.py [--repeat R]``. Prints times and ratios only;
absolute times depend on the machine (and its load), so nothing is asserted.
"""

from __future__ import annotations

import argparse
import socket
import time
from collections.abc import Callable

from bangui_daemon.blocklist.host import HostAddresses, _fallback_addresses, netlink_addresses
from bangui_daemon.blocklist.policy import BanPolicy


def per_call(func: Callable[[], object], repeat: int, rounds: int = 5) -> float:
    """Best of `rounds` of the mean time of one call over `repeat` calls."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeat):
            func()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


def bare_netlink_socket() -> None:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE).close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    host = HostAddresses(set())
    allow = [f"45.{n}.0.0/16" for n in range(100)]
    addresses = host.current()

    def decision() -> object:
        policy = BanPolicy(allowlist=allow, host_addresses=host.current(), ignoreip=["::1"])
        return policy.check("45.200.1.1")

    timings = {
        "netlink socket open+close (baseline)": per_call(bare_netlink_socket, args.repeat),
        "netlink address dump": per_call(netlink_addresses, args.repeat),
        "/proc/net + SIOCGIFCONF read": per_call(lambda: _fallback_addresses("/proc/net"), 100),
        "HostAddresses.current()": per_call(host.current, args.repeat),
        "BanPolicy build (100 allow-list nets)": per_call(
            lambda: BanPolicy(allowlist=allow, host_addresses=addresses), args.repeat
        ),
        "one decision (read + build + check)": per_call(decision, args.repeat),
    }
    base = timings["netlink socket open+close (baseline)"]
    print(f"{len(addresses)} host addresses; best of 5 rounds")
    for name, seconds in timings.items():
        print(f"{name:40} {seconds * 1e6:9.1f} us  {seconds / base:7.1f}x baseline")
    dump, proc = timings["netlink address dump"], timings["/proc/net + SIOCGIFCONF read"]
    print(f"netlink dump vs /proc/net + SIOCGIFCONF: {proc / dump:.2f}x faster")


if __name__ == "__main__":
    main()
