"""A pull of many CrowdSec decisions against the import path, in the same run.

Baseline: `ImportSource` of a file:// list of N addresses (the import path). Then N
other addresses become decisions in a real Local API (`cscli decisions import`), and
the time from the end of that import until fail2ban's blocklist jail holds them all
is the pull's cost (at most one pull interval more). The blocklist jail runs without
actions, so fail2ban's own per-ban cost stays out of both figures. Prints both and
the ratio; never asserts a time. Run: .venv/bin/python bench/bench_crowdsec.py
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import DaemonProcess, F2bSandbox, PrivateSystemBus
from tests.harness.crowdsec import LapiSandbox
from tests.harness.util import wait_until

JAIL = "bench-blocklist"
PULL = 1.0


def addresses(first: str, n: int) -> list[str]:
    base = int(ipaddress.IPv4Address(first))
    return [str(ipaddress.IPv4Address(base + i)) for i in range(n)]


def busctl(address: str, *args: str) -> str:
    return subprocess.run(
        ["busctl", f"--address={address}", "--timeout=3600", "--json=short", "call",
         "org.bangui.Daemon1",
         "/org/bangui/Daemon1", "org.bangui.Daemon1.Blocklists", *args],
        capture_output=True, text=True, check=True, timeout=3600,
    ).stdout  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--deadline", type=float, default=3600)
    args = parser.parse_args()
    n = args.entries
    work = Path(tempfile.mkdtemp(prefix="bench-crowdsec-"))
    lists = work / "lists"
    lists.mkdir()
    (lists / "list.txt").write_text("".join(f"{ip}\n" for ip in addresses("45.0.0.1", n)))
    decisions = work / "decisions.json"
    decisions.write_text(
        json.dumps(
            [
                {
                    "duration": "24h",
                    "origin": "bench",
                    "reason": "bench",
                    "scope": "ip",
                    "type": "ban",
                    "value": ip,
                }
                for ip in addresses("46.0.0.1", n)
            ]
        )
    )
    lapi = LapiSandbox().start()
    key = work / "bouncer.key"
    key.write_text(lapi.bouncer_key())
    overrides = {
        "log": {"level": "info"},
        "blocklist": {"jail": JAIL, "file_dir": str(lists), "max_entries": 2 * n,
                      "batch_size": 1000},
        "crowdsec": {"lapi_url": lapi.url, "bouncer_key_file": str(key), "pull_interval": PULL},
    }  # fmt: skip
    try:
        with (
            F2bSandbox(extra_jails={JAIL: {"action": "", "bantime": "1d"}}) as f2b,
            PrivateSystemBus() as bus,
            DaemonProcess.from_sandbox(f2b, bus, overrides) as daemon,
        ):
            out = busctl(
                bus.address, "AddSource", "ssb", "bench", f"file://{lists}/list.txt", "true"
            )
            source_id = json.loads(out)["data"][0]
            started = time.perf_counter()
            busctl(bus.address, "ImportSource", "u", str(source_id))
            baseline = time.perf_counter() - started
            print(f"ImportSource of {n:,} addresses (file://): {baseline:.1f} s")

            started = time.perf_counter()
            lapi.cscli("decisions", "import", "-i", str(decisions), timeout=1800)
            loaded = time.perf_counter() - started
            print(f"cscli decisions import of {n:,} decisions: {loaded:.1f} s (not ours)")
            started = time.perf_counter()

            def all_banned() -> bool:
                return bool(len(f2b.banned(JAIL)) >= 2 * n)

            try:
                wait_until(all_banned, args.deadline, "every decision banned", max_interval=1)
            except Exception:
                print("\n".join(daemon.output_lines[-20:]))
                raise
            pulled = time.perf_counter() - started
            print(f"pull until fail2ban holds them all: {pulled:.1f} s")
            print(f"pull / import path: {pulled / baseline:.2f}x")
    finally:
        lapi.close()


if __name__ == "__main__":
    main()
