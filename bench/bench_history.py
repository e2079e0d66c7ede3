"""Benchmark the history archive: first sync, incremental sync, a filtered page, RSS.

Run as root (the daemon owns org.bangui.Daemon1 on a private system-like bus):
``python bench/bench_history.py [--rows 1000000] [--repeat 7] [--queries 101]``.

One run builds fail2ban-format DBs (schema made by a real fail2ban-server, rows filled
with sqlite), then measures:

* the floor: a raw ``ATTACH`` + ``INSERT ... SELECT`` of all rows into a fresh archive
  with the daemon's schema (indexes and hour-count triggers; rows straight into the
  main ip index, as a bulk sync writes them), in one transaction, default pragmas;
  and the same without the triggers, to show what they cost;
* the daemon's first sync of the same rows (the real daemon process; the figure is
  the ``seconds`` of its ``history_sync_complete`` log line), and the ratio;
* an incremental sync of 1,000 new rows over a 100k and over a 1M archive (``--repeat``
  RunTask calls over the bus, each after fail2ban's DB grew by 1,000 rows; the daemon's
  own ``seconds`` and the RunTask round trip). Both daemons run at once, on two buses,
  and their runs alternate, so noise from the machine falls on both sizes alike. The
  default 25 runs pass RECENT_MAX once, so one run also folds the recent ip index
  into the main one: the median is a typical run, the mean is the amortised cost
  with that merge included;
* filtered GetHistory pages over the bus (DaemonClient, median of ``--queries``),
  country filters included once every address has a geo_cache row;
* the daemon's VmRSS and VmHWM from /proc/PID/status.

Times depend on the machine: figures and ratios are printed, nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bangui_daemon.archive.db import Archive
from bangui_daemon.cli.bus_client import DaemonClient
from tests.harness.bus import PrivateSystemBus
from tests.harness.daemon import DaemonProcess
from tests.harness.fail2ban import F2bSandbox
from tests.harness.users import ADMIN_GROUP, AccountLease, AccountSpec
from tests.integration.history_db import fill_bans, schema_only_copy

INCREMENT = 1000
GOALS = {
    "first_sync_ratio": 1.5,
    "incremental_ms": 50.0,
    "page_ms": 20.0,
    "rss_mb": 80.0,
}


def floor_copy(f2b_db: Path, archive: Path, *, triggers: bool = True) -> float:
    """Seconds for a raw ATTACH + INSERT ... SELECT of every row (the floor)."""
    conn = sqlite3.connect(str(archive), isolation_level=None)
    try:
        if not triggers:
            names = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            for (name,) in names.fetchall():
                conn.execute(f"DROP TRIGGER {name}")
        conn.execute("ATTACH DATABASE ? AS f2b", (f"file:{f2b_db}?mode=ro",))
        start = time.perf_counter()
        conn.execute("BEGIN")
        conn.execute(
            "INSERT INTO ban_events (action, jail, ip, timeofban, bantime, bancount, data, "
            "origin, recorded_by, ip_indexed) SELECT 'ban', jail, ip, timeofban, bantime, "
            "bancount, data, "
            "CASE WHEN jail = 'blocklist-import' THEN 'blocklist' ELSE 'selfblock' END, "
            "'history_sync', 1 FROM f2b.bans WHERE ip IS NOT NULL"
        )
        conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        conn.close()


async def new_archive(path: Path) -> None:
    archive = await Archive.open(str(path))
    await archive.close()


def rss(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process in MB."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def sync_records(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [r for r in daemon.log_records() if r.get("event") == "history_sync_complete"]


def fill_geo(archive: str) -> float:
    """Give every archived address a geo_cache row, as geo_resolve would: 30% CN, 10% US,
    3% NL, 0.3% IS, the rest spread over 60 other codes. Returns the seconds taken."""
    conn = sqlite3.connect(archive, isolation_level=None, timeout=60)
    try:
        start = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT OR REPLACE INTO geo_cache (ip, found, country_code, asn, org, source, "
            "resolved_at, last_seen) SELECT ip, 1, CASE WHEN r < 300 THEN 'CN' "
            "WHEN r < 400 THEN 'US' WHEN r < 430 THEN 'NL' WHEN r < 433 THEN 'IS' "
            "ELSE 'X' || (r % 60) END, 'AS' || (r % 500), '', 'mmdb', 0, 0 "
            "FROM (SELECT ip, abs(random()) % 1000 AS r FROM ban_events GROUP BY ip)"
        )
        conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        conn.close()


def merge_records(daemon: DaemonProcess) -> list[dict[str, Any]]:
    return [r for r in daemon.log_records() if r.get("event") == "ip_index_merged"]


class Incremental:
    """The runs of one archive size: daemon seconds and RunTask round trips."""

    def __init__(self, own: list[float], trip: list[float], merges: list[dict[str, Any]]):
        self.own = own
        self.trip = trip
        self.merges = merges

    def line(self) -> str:
        merged = ", ".join(
            f"{m['rows']:,} rows in {m['seconds'] * 1000:.0f} ms" for m in self.merges
        )
        return (
            f"median {statistics.median(self.own) * 1000:6.1f} ms "
            f"(round trip {statistics.median(self.trip) * 1000:6.1f} ms), "
            f"mean {statistics.mean(self.own) * 1000:6.1f} ms, "
            f"max {max(self.own) * 1000:6.1f} ms; ip index merges: {merged or 'none'}"
        )


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.bus = PrivateSystemBus()  # the 1M daemon's
        self.bus_small = PrivateSystemBus()  # the 100k daemon's, alive at the same time
        self.f2b = F2bSandbox(work / "f2b")
        self.accounts = AccountLease(AccountSpec(groups=(ADMIN_GROUP,)))
        self.results: dict[str, float] = {}

    def daemon(self, f2b_db: Path, name: str, bus: PrivateSystemBus) -> DaemonProcess:
        overrides = {
            "fail2ban": {"database": str(f2b_db)},
            "tasks": {"ban_watch": 2, "history_sync": 86400, "geo_resolve": 86400},
            "log": {"level": "info"},
        }
        return DaemonProcess.from_sandbox(
            self.f2b, bus, overrides, work_dir=self.work / name
        ).start(ready_timeout=60)

    async def first_sync(self, daemon: DaemonProcess, rows: int) -> float:
        deadline = time.monotonic() + 1800
        while not sync_records(daemon):
            if time.monotonic() > deadline or not daemon.running:
                raise RuntimeError("the first sync did not finish")
            await asyncio.sleep(0.05)
        record = sync_records(daemon)[0]
        assert record["new_events"] == rows, record
        return float(record["seconds"])

    async def one_increment(
        self, client: DaemonClient, daemon: DaemonProcess, f2b_db: Path, first: int
    ) -> tuple[float, float]:
        """(daemon seconds, RunTask round trip) of one sync of 1,000 new rows."""
        fill_bans(f2b_db, INCREMENT, first=first)
        before = len(sync_records(daemon))
        start = time.perf_counter()
        result = await client.run_task("history_sync")
        trip = time.perf_counter() - start
        assert result["new_events"] == INCREMENT, result
        deadline = time.monotonic() + 10
        while len(sync_records(daemon)) == before:  # the log line trails the reply
            if time.monotonic() > deadline:
                raise RuntimeError("no history_sync_complete log line")
            await asyncio.sleep(0.01)
        return float(sync_records(daemon)[-1]["seconds"]), trip

    async def incremental(
        self, sides: list[tuple[DaemonClient, DaemonProcess, Path, int]]
    ) -> list[Incremental]:
        """`--repeat` rounds of one 1,000-row sync per archive, interleaved (the order
        alternates each round) so that machine noise falls on both sizes alike."""
        runs: list[list[tuple[float, float]]] = [[] for _ in sides]
        for i in range(self.args.repeat):
            order = list(range(len(sides)))
            if i % 2:
                order.reverse()
            for k in order:
                client, daemon, f2b_db, first = sides[k]
                runs[k].append(
                    await self.one_increment(client, daemon, f2b_db, first + i * INCREMENT)
                )
        return [
            Incremental([r[0] for r in own], [r[1] for r in own], merge_records(daemon))
            for own, (_, daemon, _, _) in zip(runs, sides, strict=True)
        ]

    async def pages(self, client: DaemonClient, now: int) -> dict[str, tuple[float, int]]:
        """Median ms of a 50-row GetHistory page (and its total) per filter."""
        (probe,), _ = await client.get_history({"jail": "sshd"}, 1, 1)
        ip = str(probe["ip"])
        net = ".".join(ip.split(".")[:3]) + ".0/24"
        filters: dict[str, dict[str, object]] = {
            "jail+since (last day)": {"jail": "sshd", "since": now - 86400},
            "since (last day)": {"since": now - 86400},
            "since+until (one hour)": {"since": now - 5 * 86400, "until": now - 5 * 86400 + 3600},
            "ip": {"ip": ip},
            "ip CIDR /24": {"ip": net},
            "ip CIDR /24 + since": {"ip": net, "since": now - 5 * 86400},
            "jail only (80% of rows)": {"jail": "sshd"},
            "action=ban + since (last day)": {"action": "ban", "since": now - 86400},
            "no filter": {},
            "country, 30% of addresses": {"country_code": "CN"},
            "country, 3%": {"country_code": "NL"},
            "country, 0.3%": {"country_code": "IS"},
            "country 30% + since (last day)": {"country_code": "CN", "since": now - 86400},
        }
        out: dict[str, tuple[float, int]] = {}
        for name, flt in filters.items():
            times = []
            total = 0
            for _ in range(self.args.queries):
                start = time.perf_counter()
                _, total = await client.get_history(flt, 1, 50)
                times.append(time.perf_counter() - start)
            out[name] = (statistics.median(times) * 1000, total)
        return out

    async def run(self) -> None:
        args = self.args
        small = min(100_000, args.rows)
        self.accounts.acquire()  # the policy's group="bangui-admin", before the bus reads it
        self.bus.start()
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = self.bus.address
        self.f2b.start()  # a real fail2ban-server makes the schema ...
        self.f2b.stop()
        template = self.work / "schema.sqlite3"
        schema_only_copy(self.f2b.db_path, template)
        self.f2b.start()  # ... and stays up for the daemon's ban watch

        db_small = self.work / "f2b-100k.sqlite3"
        db_big = self.work / "f2b-1m.sqlite3"
        start = time.perf_counter()
        shutil.copyfile(template, db_small)
        fill_bans(db_small, small, base=int(time.time()) - args.rows - 600)
        shutil.copyfile(template, db_big)
        fill_bans(db_big, args.rows, base=int(time.time()) - args.rows - 600)
        print(
            f"built fail2ban DBs of {small:,} and {args.rows:,} rows in "
            f"{time.perf_counter() - start:.1f} s"
        )

        # --- the floor
        floor_archive = self.work / "floor.sqlite3"
        await new_archive(floor_archive)
        floor = floor_copy(db_big, floor_archive)
        floor_archive.unlink()
        print(f"floor: raw ATTACH + INSERT ... SELECT of {args.rows:,} rows: {floor:.2f} s")
        await new_archive(floor_archive)
        bare = floor_copy(db_big, floor_archive, triggers=False)
        floor_archive.unlink()
        print(f"  the same without the hour-count triggers: {bare:.2f} s ({floor / bare:.2f}x)")

        # --- first syncs (one at a time), then interleaved increments, pages and RSS
        self.bus_small.start()
        daemon_small = self.daemon(db_small, "daemon-100k", self.bus_small)
        daemon = None
        try:
            await self.first_sync(daemon_small, small)
            daemon = self.daemon(db_big, "daemon-1m", self.bus)
            first = await self.first_sync(daemon, args.rows)
            rss_after_sync = rss(daemon.pid)
            client_small = await DaemonClient().connect(self.bus_small.address)
            client = await DaemonClient().connect(self.bus.address)
            try:
                inc_small, inc_big = await self.incremental(
                    [
                        (client_small, daemon_small, db_small, small + 1),
                        (client, daemon, db_big, args.rows + 1),
                    ]
                )
                assert daemon.config is not None
                geo_seconds = fill_geo(str(daemon.config["archive"]["path"]))
                print(f"geo_cache filled for every archived address in {geo_seconds:.1f} s")
                pages = await self.pages(client, int(time.time()))
            finally:
                client_small.close()
                client.close()
            rss_end = rss(daemon.pid)
        finally:
            for d in (daemon_small, daemon):
                if d is not None:
                    d.stop()
                    d.close()

        ratio = first / floor
        print(
            f"first sync by the daemon: {first:.2f} s = {ratio:.2f}x the floor "
            f"(goal <= {GOALS['first_sync_ratio']}x)"
        )
        print(
            f"incremental sync of {INCREMENT} rows, {args.repeat} runs (the daemon's own time), "
            f"goal < {GOALS['incremental_ms']:.0f} ms:"
        )
        print(f"  over {small:>9,} archived: {inc_small.line()}")
        print(f"  over {args.rows:>9,} archived: {inc_big.line()}")
        median_ratio = statistics.median(inc_big.own) / statistics.median(inc_small.own)
        mean_ratio = statistics.mean(inc_big.own) / statistics.mean(inc_small.own)
        print(f"  1M / 100k: median {median_ratio:.2f}x, mean with the merge {mean_ratio:.2f}x")
        print(
            f"GetHistory page of 50 over the bus, median of {args.queries} "
            f"(goal < {GOALS['page_ms']:.0f} ms):"
        )
        for name, (ms, total) in pages.items():
            print(f"  {name:32s} {ms:7.2f} ms   total {total:,}")
        print(
            f"daemon memory after the first sync: VmRSS {rss_after_sync[0]:.1f} MB, "
            f"VmHWM {rss_after_sync[1]:.1f} MB"
        )
        print(
            f"daemon memory at the end:           VmRSS {rss_end[0]:.1f} MB, "
            f"VmHWM {rss_end[1]:.1f} MB (goal < {GOALS['rss_mb']:.0f} MB)"
        )

    def close(self) -> None:
        self.f2b.close()
        self.bus.close()
        self.bus_small.close()
        self.accounts.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=25)
    parser.add_argument("--queries", type=int, default=101)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bgt-bench-history-"))
    work.chmod(0o755)
    bench = Bench(args, work)
    try:
        asyncio.run(bench.run())
    finally:
        bench.close()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
