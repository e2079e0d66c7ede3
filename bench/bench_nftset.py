"""The batched nftables action (bangui-nftset) against fail2ban's stock nftables action.

Everything runs in a private network namespace (``unshare --net``): fail2ban-server
and every nft. Needs root.

1. Per address, same run, same fail2ban: N addresses (default 1,000) banned with
   multi-IP ``banip`` commands of 200 (the daemon's batch size) into a jail using the
   stock ``nftables-allports`` action (one nft process per ban) and into one using
   bangui-nftset; the clock stops when the jail's nft set holds all of them.
2. The whole import: a list of 100,000 public IPv4 addresses, 200 IPv6 addresses and 50
   CIDRs imported with ImportSource by the daemon into a jail using bangui-nftset,
   until the sets hold exactly those entries. Then the list drops every 10th IPv4
   address (10,000), fail2ban restarts, and the source is removed; after each, until
   the sets hold exactly what fail2ban bans. (Right after a 100k import fail2ban's DB
   is still busy writing the ban rows: an unban can fail on "database is locked", and
   one that overtakes its ban's row leaves the row, so the restart restores it.)

Prints times and the ratio; asserts nothing about time (the machine is shared).
Run: .venv/bin/python bench/bench_nftset.py [--per-address 1000] [--entries 100000]
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bangui_daemon.cli.bus_client import DaemonClient
from tests.harness import DaemonProcess, F2bSandbox, PrivateSystemBus
from tests.harness.fail2ban import END, JAIL_BLOCKLIST, safe_loads
from tests.harness.netns import NFTSET_ACTION, NetNamespace
from tests.integration.dbus_calls import BLOCKLISTS

BATCH = 200  # the daemon's default blocklist.batch_size
STOCK_JAIL = "stock"
BATCHED_JAIL = "batched"
TABLE = "bangui"
STOCK_ACTIONS = ("nftables.conf", "nftables-allports.conf")


def v4(n: int, first: str) -> list[str]:
    base = int(ipaddress.IPv4Address(first))
    return [str(ipaddress.IPv4Address(base + i)) for i in range(n)]


def import_list(n: int) -> list[str]:
    first6 = int(ipaddress.IPv6Address("2a01:4f8:7::1"))  # global: documentation is refused
    v6 = [str(ipaddress.IPv6Address(first6 + i)) for i in range(200)]
    nets = [f"46.{i}.0.0/24" for i in range(50)]
    return [*v4(n, "45.0.0.1"), *v6, *nets]


def kernel(ns: NetNamespace, jail: str) -> set[str]:
    sets = (f"{jail}-{kind}" for kind in ("addr4", "net4", "addr6", "net6"))
    return set().union(*(ns.set_elements(TABLE, s, missing_ok=True) for s in sets))


def wait_for(probe: Callable[[], bool], limit: float, what: str) -> None:
    deadline = time.monotonic() + limit
    while not probe():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def sandbox(ns: NetNamespace, **options: Any) -> F2bSandbox:
    files: dict[str, str | Path] = {"bangui-nftset.py": NFTSET_ACTION}
    files.update({name: Path("/etc/fail2ban/action.d") / name for name in STOCK_ACTIONS})
    return F2bSandbox(command_prefix=ns.prefix, action_files=files, **options)


def ban_all(f2b: F2bSandbox, jail: str, ips: list[str]) -> None:
    """Multi-IP banip commands of BATCH on one connection (like the daemon)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(f2b.socket_path))
        for at in range(0, len(ips), BATCH):
            sock.sendall(pickle.dumps(["set", jail, "banip", *ips[at : at + BATCH]], 4) + END)
            reply = bytearray()
            while not reply.endswith(END):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise RuntimeError("fail2ban closed the connection")
                reply += chunk
            code, value = safe_loads(bytes(reply[: -len(END)]))
            if code != 0:
                raise RuntimeError(f"banip failed: {value!r}")


def per_address(n: int) -> tuple[float, float]:
    """Seconds per address: (stock nftables-allports, bangui-nftset)."""
    jails = {
        STOCK_JAIL: {"action": "nftables-allports", "bantime": "1w"},
        BATCHED_JAIL: {"action": "bangui-nftset.py", "bantime": "1w"},
    }
    with NetNamespace() as ns, sandbox(ns, extra_jails=jails) as f2b:
        stock_ips, batched_ips = set(v4(n, "45.1.0.1")), set(v4(n, "45.2.0.1"))
        start = time.perf_counter()
        ban_all(f2b, STOCK_JAIL, sorted(stock_ips))
        wait_for(
            lambda: (
                ns.set_elements("f2b-table", f"addr-set-{STOCK_JAIL}", missing_ok=True) >= stock_ips
            ),
            600,
            "the stock action's set",
        )
        stock = (time.perf_counter() - start) / n
        start = time.perf_counter()
        ban_all(f2b, BATCHED_JAIL, sorted(batched_ips))
        wait_for(lambda: kernel(ns, BATCHED_JAIL) == batched_ips, 600, "bangui-nftset's sets")
        batched = (time.perf_counter() - start) / n
    return stock, batched


def daemon_call(address: str, call: Callable[[DaemonClient], Awaitable[Any]]) -> Any:
    """One DaemonClient call on a fresh connection (fail2ban restarts in between)."""

    async def run() -> Any:
        client = await DaemonClient(long_timeout=3600).connect(address)
        try:
            return await call(client)
        finally:
            client.close()

    return asyncio.run(run())


def until_sets(
    ns: NetNamespace,
    f2b: F2bSandbox,
    want: set[str],
    what: str,
    limit: float = 600,
    *,
    superset: bool = False,
) -> set[str]:
    """Wait until the sets hold `want` (or more, with `superset`); return what they hold."""
    deadline = time.monotonic() + limit
    while True:
        got = kernel(ns, JAIL_BLOCKLIST)
        if got == want or (superset and got >= want):
            return got
        if time.monotonic() > deadline:
            banned = set(f2b.banned(JAIL_BLOCKLIST))
            raise RuntimeError(
                f"sets after {what}: missing {sorted(want - got)[:5]}, unexpected "
                f"{sorted(got - want)[:5]}; fail2ban bans {len(banned)} "
                f"({len(banned - want)} unexpected), the sets {len(got)}"
            )
        time.sleep(0.1)


def mirror(ns: NetNamespace, f2b: F2bSandbox, what: str, limit: float = 600) -> set[str]:
    """Wait until the sets hold exactly what fail2ban bans (its list read twice alike)."""
    deadline = time.monotonic() + limit
    while True:
        banned = set(f2b.banned(JAIL_BLOCKLIST))
        got = kernel(ns, JAIL_BLOCKLIST)
        if got == banned == set(f2b.banned(JAIL_BLOCKLIST)):
            return got
        if time.monotonic() > deadline:
            raise RuntimeError(f"after {what} the sets hold {len(got)}, fail2ban {len(banned)}")
        time.sleep(0.2)


def floor_import(n_v4: int) -> float:
    """Seconds for ImportSource of the same list into a jail without any action."""
    entries = import_list(n_v4)
    with (
        NetNamespace() as ns,
        sandbox(ns, jail_options={JAIL_BLOCKLIST: {"action": ""}}) as f2b,
        PrivateSystemBus() as bus,
        DaemonProcess.from_sandbox(f2b, bus, overrides(len(entries))) as daemon,
    ):
        assert daemon.config is not None
        path = Path(daemon.config["blocklist"]["file_dir"]) / "bench.txt"
        path.write_text("# bench\n" + "\n".join(entries) + "\n")
        source = daemon_call(bus.address, lambda c: c.add_source("bench", f"file://{path}", False))
        start = time.perf_counter()
        result = daemon_call(bus.address, lambda c: c.import_source(source))
        if result["status"] != "completed":
            raise RuntimeError(f"unexpected floor import: {result}")
        return time.perf_counter() - start


def overrides(entries: int) -> dict[str, Any]:
    return {
        "log": {"level": "info", "format": "json"},
        "blocklist": {"max_entries": entries + 1000},
        "tasks": {"ban_watch": 2.0},  # the production interval
    }


def whole_import(n_v4: int) -> None:
    """The import, a diff, a fail2ban restart and RemoveSource, each until the sets agree."""
    entries = import_list(n_v4)

    def report(step: str, seconds: float) -> None:
        print(f"{len(entries)} entries: {step}: {seconds:.1f} s", flush=True)

    with (
        NetNamespace() as ns,
        sandbox(ns, jail_options={JAIL_BLOCKLIST: {"action": "bangui-nftset.py"}}) as f2b,
        PrivateSystemBus() as bus,
        DaemonProcess.from_sandbox(f2b, bus, overrides(len(entries))) as daemon,
    ):
        assert daemon.config is not None
        path = Path(daemon.config["blocklist"]["file_dir"]) / "bench.txt"
        path.write_text("# bench\n" + "\n".join(entries) + "\n")
        source = daemon_call(bus.address, lambda c: c.add_source("bench", f"file://{path}", False))
        start = time.perf_counter()
        result = daemon_call(bus.address, lambda c: c.import_source(source))
        report("ImportSource returned", time.perf_counter() - start)
        if result["status"] != "completed" or result["added"] != len(entries):
            raise RuntimeError(f"unexpected import: {result}")
        until_sets(ns, f2b, set(entries), "the import")

        report("import until the sets hold exactly the list", time.perf_counter() - start)

        kept = [e for i, e in enumerate(entries) if i % 10 or i >= n_v4]  # every 10th IPv4
        dropped = set(entries) - set(kept)
        path.write_text("# bench\n" + "\n".join(kept) + "\n")
        start = time.perf_counter()
        for _attempt in range(5):  # fail2ban's DB may still be busy with 100k ban rows
            result = daemon_call(bus.address, lambda c: c.import_source(source))
            if result["status"] == "completed":
                break
            print(f"note: diff import {result['status']}: {result['error']}; again")
        got = mirror(ns, f2b, "the diff")
        if not got >= set(kept) or got & dropped:
            raise RuntimeError(f"diff: {len(got & dropped)} dropped entries still banned")
        report(
            f"diff dropping {len(dropped)}, until the sets are exact", time.perf_counter() - start
        )

        before = got
        start = time.perf_counter()
        f2b.stop()
        if f"inet {TABLE}" in ns.tables():
            raise RuntimeError("the table outlived fail2ban")
        f2b.start()
        until_sets(ns, f2b, before, "the restart", superset=True)
        got = mirror(ns, f2b, "the restart")
        report("fail2ban stop + start, until the sets are restored", time.perf_counter() - start)
        if got != before:
            # fail2ban writes ban rows from a queue: an unban that overtook its ban's row
            # leaves the row, and the restart brings the address back (the sets follow)
            print(f"note: fail2ban restored {len(got - before)} entries it had unbanned")

        start = time.perf_counter()
        daemon_call(  # unbans 90,000 through fail2ban: more than the default 30 s
            bus.address,
            lambda c: c.call(BLOCKLISTS, "RemoveSource", "u", [source], reply_timeout=3600),
        )
        got = mirror(ns, f2b, "RemoveSource")
        report(
            f"RemoveSource, until the sets are exact ({len(got)} left)", time.perf_counter() - start
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--per-address", type=int, default=1000)
    parser.add_argument("--entries", type=int, default=100_000, help="IPv4 in the import")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (unshare --net)")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    if args.per_address > 0:
        stock, batched = per_address(args.per_address)
        print(
            f"per address ({args.per_address} bans, batches of {BATCH}): "
            f"stock nftables-allports {stock * 1e3:.2f} ms, bangui-nftset "
            f"{batched * 1e3:.3f} ms, ratio {stock / batched:.0f}x (goal >= 50x)",
            flush=True,
        )
    floor = floor_import(args.entries)
    print(f"floor: the same ImportSource into a jail without any action: {floor:.1f} s")
    whole_import(args.entries)
    print("goal: import until the sets hold everything < 60 s on 2 cores")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
