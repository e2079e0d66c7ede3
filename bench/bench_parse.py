"""Benchmark the blocklist parser (and the ban policy) against baselines in the same run.

Run: ``python bench/bench_parse.py [--lines N] [--repeat R]``. Prints lines/s and
ratios only; absolute times depend on the machine, so nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import random
import time
from collections.abc import Callable

from bangui_daemon.blocklist.parse import parse_blocklist
from bangui_daemon.blocklist.policy import BanPolicy

CHUNK = 64 * 1024  # about what aiohttp's iter_chunked hands over


def make_list(lines: int, distinct: int = 0, seed: int = 1) -> bytes:
    """Return a synthetic list: IPv4 mostly, some CIDR, comments, ipsum lines, dupes.

    With `distinct`, addresses come from a pool of that many /32s, so the list has
    about that many distinct entries (real lists are capped at 100k per source).
    """
    rng = random.Random(seed)
    pool = [rng.getrandbits(32) | 1 << 24 for _ in range(distinct)]
    out: list[str] = []
    for n in range(lines):
        kind = rng.random()
        value = rng.choice(pool) if pool else rng.randrange(1 << 24, 224 << 24)
        a, b, c, d = value >> 24 & 255, value >> 16 & 255, value >> 8 & 255, value & 255
        if kind < 0.70:
            out.append(f"{a}.{b}.{c}.{d}")
        elif kind < 0.80:
            out.append(f"{a}.{b}.{c}.{d}\t{rng.randrange(1, 9)}")
        elif kind < 0.85:
            out.append(f"{a}.{b}.{c}.0/{rng.randrange(16, 33)}")
        elif kind < 0.90:
            out.append(f"# comment line {n}")
        elif kind < 0.93:
            out.append(f"{a}.{b}.{c}.0/24 ; SBL{n}")
        else:
            out.append(out[rng.randrange(len(out))] if out else "1.1.1.1")  # duplicate
    return ("\r\n".join(out) + "\r\n").encode()


def chunks(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


def run_parser(data: bytes) -> int:
    return len(parse_blocklist(chunks(data), max_entries=10**8).entries)


def run_naive_ipaddress(data: bytes) -> int:
    """What one writes without a fast path: ipaddress for every line."""
    seen: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
    for raw in data.decode("utf-8", "replace").splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        token = line.split()[0]
        with contextlib.suppress(ValueError):
            seen.add(ipaddress.ip_network(token, strict=False))
    return len(sorted(seen, key=lambda n: (n.version, n.network_address, n.prefixlen)))


def run_bare_address_loop(data: bytes) -> int:
    """The brief's floor: ipaddress.ip_address on the first field, nothing else."""
    ok = 0
    for line in data.splitlines():
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(line.split(b"\t", 1)[0].decode())
            ok += 1
    return ok


def run_bare_split(data: bytes) -> int:
    """Lower bound: only splitting into stripped lines."""
    return sum(1 for line in data.splitlines() if line.strip())


def best_of(repeat: int, func: Callable[[bytes], int], data: bytes) -> tuple[float, int]:
    best = float("inf")
    result = 0
    for _ in range(repeat):
        start = time.perf_counter()
        result = func(data)
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--distinct", type=int, default=0, help="address pool size, 0 = random")
    args = parser.parse_args()
    data = make_list(args.lines, args.distinct)
    print(f"{args.lines:,} lines, {len(data) / 1e6:.1f} MB, best of {args.repeat}")

    timings: dict[str, float] = {}
    for name, func in (
        ("parse_blocklist", run_parser),
        ("naive ipaddress parser", run_naive_ipaddress),
        ("bare ip_address loop", run_bare_address_loop),
        ("bare split loop", run_bare_split),
    ):
        seconds, count = best_of(args.repeat, func, data)
        timings[name] = seconds
        print(
            f"{name:24} {seconds:7.3f} s {args.lines / seconds:12,.0f} lines/s  ({count:,} items)"
        )
    ours = timings["parse_blocklist"]
    for name in ("naive ipaddress parser", "bare ip_address loop", "bare split loop"):
        print(f"parse_blocklist vs {name}: {timings[name] / ours:.2f}x")

    entries = parse_blocklist([data[: len(data) // 10]], max_entries=10**8).entries
    rng = random.Random(2)
    allow = [f"{rng.randrange(1, 224)}.{rng.randrange(256)}.0.0/16" for _ in range(300)]
    policy = BanPolicy(allowlist=allow, ignoreip=["127.0.0.1/8 ::1"])
    seconds, _ = best_of(args.repeat, lambda _: len(policy.partition(entries)[0]), b"")
    print(
        f"BanPolicy.partition: {len(entries):,} entries vs 300+ ranges in {seconds:.3f} s "
        f"({len(entries) / seconds:,.0f} entries/s)"
    )


if __name__ == "__main__":
    main()
