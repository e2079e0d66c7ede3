"""Benchmark GeoService.lookup_ips (cold and warm) against the raw maxminddb reader.

Run: ``python bench/bench_geo.py [--country PATH] [--asn PATH] [--n 10000] [--repeat 5]``.
Defaults to MaxMind's test databases in tests/data/geoip (tiny and mostly empty, so
most addresses are "not found"); point it at real GeoLite2 files for real figures.
Prints rates and ratios to the raw reader measured in the same run; absolute times
depend on the machine, so nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import maxminddb
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from bangui_daemon.archive.db import Archive
from bangui_daemon.archive.geo_repo import GeoCacheRepository
from bangui_daemon.geo.lookup import MmdbResolver
from bangui_daemon.services.geo import GeoService
from tests.harness import DaemonProcess, F2bSandbox, PrivateSystemBus

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "geoip"


def addresses(n: int, seed: int = 1) -> list[str]:
    """``n`` distinct random unicast IPv4 addresses."""
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        v = rng.randrange(1 << 24, 224 << 24)
        out.add(f"{v >> 24}.{v >> 16 & 255}.{v >> 8 & 255}.{v & 255}")
    return sorted(out, key=lambda _: rng.random())


def best(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


async def best_async(
    repeat: int, make: Callable[[], Awaitable[Callable[[], Awaitable[object]]]]
) -> float:
    """Best time of ``repeat`` runs; ``make`` prepares one (untimed) and returns it."""
    times = []
    for _ in range(repeat):
        run = await make()
        start = time.perf_counter()
        await run()
        times.append(time.perf_counter() - start)
    return min(times)


def raw_reader(country: str, asn: str, ips: list[str], repeat: int) -> float:
    """What the C extension alone costs: two ``get`` per address, no models."""
    readers = [maxminddb.open_database(p) for p in (country, asn) if p]

    def run() -> None:
        for ip in ips:
            for r in readers:
                r.get(ip)

    try:
        return best(repeat, run)
    finally:
        for r in readers:
            r.close()


async def over_the_bus(country: str, asn: str, ips: list[str], repeat: int) -> tuple[float, float]:
    """LookupIps end to end: a real daemon on a private bus, called by dbus-fast.

    Returns (cold, warm best-of-`repeat`) seconds for the whole list in one call.
    """
    config = {"geo": {"country_db": country, "asn_db": asn}, "log": {"level": "warning"}}
    with (
        F2bSandbox() as f2b,
        PrivateSystemBus() as bus_daemon,
        DaemonProcess.from_sandbox(f2b, bus_daemon, config),
    ):
        bus = await MessageBus(bus_address=bus_daemon.address).connect()

        async def lookup() -> None:
            reply = await bus.call(
                Message(
                    destination="org.bangui.Daemon1",
                    path="/org/bangui/Daemon1",
                    interface="org.bangui.Daemon1.Geo",
                    member="LookupIps",
                    signature="as",
                    body=[ips],
                )
            )
            assert reply is not None
            assert reply.message_type == MessageType.METHOD_RETURN, reply.body
            assert len(reply.body[0]) == len(ips)

        start = time.perf_counter()
        await lookup()
        cold = time.perf_counter() - start

        async def again() -> Callable[[], Awaitable[object]]:
            return lookup

        warm = await best_async(repeat, again)
        bus.disconnect()
    return cold, warm


def dbus_codec_floor(n: int, repeat: int) -> float:
    """Marshal + unmarshal of an n-record aa{sv} reply alone: the protocol's own cost.

    Uses dbus-fast internals (the bench only): no lookup can make LookupIps cheaper.
    """
    import io

    from dbus_fast import Variant
    from dbus_fast._private.unmarshaller import Unmarshaller

    records = [
        {
            "ip": Variant("s", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"),
            "country_code": Variant("s", "SE"),
            "country_name": Variant("s", "Sweden"),
            "asn": Variant("s", "AS29518"),
            "org": Variant("s", "Bredband2 AB"),
            "source": Variant("s", "cache"),
        }
        for i in range(n)
    ]
    message = Message(
        destination=":1.1",
        path="/o",
        interface="o.i",
        member="M",
        signature="aa{sv}",
        body=[records],
        serial=1,
    )

    def run() -> None:
        data = message._marshall(False)
        Unmarshaller(io.BytesIO(data)).unmarshall()  # type: ignore[arg-type]

    return best(repeat, run)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--country", default=str(DATA / "GeoLite2-Country-Test.mmdb"))
    parser.add_argument("--asn", default=str(DATA / "GeoLite2-ASN-Test.mmdb"))
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-bus", action="store_true", help="skip the end-to-end part")
    args = parser.parse_args()
    repeat = args.repeat
    ips = addresses(min(args.n, 10_000))
    n = len(ips)

    with tempfile.TemporaryDirectory() as tmp:
        archive = await Archive.open(str(Path(tmp) / "bench.sqlite3"))
        repo = GeoCacheRepository(archive)
        resolver = MmdbResolver(args.country, args.asn)
        try:
            raw = raw_reader(args.country, args.asn, ips, repeat)
            geoip2_time = best(repeat, lambda: resolver.lookup_many(ips))

            async def cold() -> Callable[[], Awaitable[object]]:
                service = GeoService(repo, resolver, None)
                await service.load()  # empty table: nothing is ever flushed here
                return lambda: service.lookup_ips(ips)

            cold_time = await best_async(repeat, cold)

            warm_service = GeoService(repo, resolver, None)
            await warm_service.load()
            await warm_service.lookup_ips(ips)

            async def warm() -> Callable[[], Awaitable[object]]:
                return lambda: warm_service.lookup_ips(ips)

            warm_time = await best_async(repeat, warm)
            fields_time = best(repeat, lambda: [warm_service.fields(ip) for ip in ips])
            start = time.perf_counter()
            await warm_service.flush()
            flush_time = time.perf_counter() - start
            found = sum(a.found for a in await warm_service.lookup_ips(ips))

            # For scale: one aiosqlite point read per address (what the cache avoids).
            some = ips[:1000]
            start = time.perf_counter()
            for ip in some:
                await archive.fetchone("SELECT country_code FROM geo_cache WHERE ip = ?", (ip,))
            point_read = (time.perf_counter() - start) / len(some)
        finally:
            resolver.close()
            await archive.close()

    def rate(seconds: float, count: int = n) -> str:
        return f"{count / seconds:>12,.0f}/s"

    print(f"addresses: {n} ({found} found), best of {repeat}")
    print(f"raw maxminddb get (country+asn)   {rate(raw)}  1.00x")
    print(f"MmdbResolver.lookup_many (geoip2) {rate(geoip2_time)}  {raw / geoip2_time:.2f}x")
    print(f"GeoService.lookup_ips cold        {rate(cold_time)}  {raw / cold_time:.2f}x")
    print(f"GeoService.lookup_ips warm        {rate(warm_time)}  {raw / warm_time:.2f}x")
    print(f"GeoService.fields (ListBans)      {rate(fields_time)}  {raw / fields_time:.2f}x")
    print(f"aiosqlite point read              {rate(point_read, 1)}  {raw / n / point_read:.2f}x")
    print(f"flush of {n} answers: {flush_time * 1000:.1f} ms (one transaction)")
    print(f"warm / cold speed-up: {cold_time / warm_time:.1f}x")
    if not args.no_bus:
        bus_cold, bus_warm = await over_the_bus(args.country, args.asn, ips, repeat)
        print(f"LookupIps over the bus, cold      {rate(bus_cold)}  {raw / bus_cold:.2f}x")
        print(f"LookupIps over the bus, warm      {rate(bus_warm)}  {raw / bus_warm:.2f}x")
        floor = dbus_codec_floor(n, repeat)
        print(f"D-Bus marshal+unmarshal alone     {rate(floor)}  {raw / floor:.2f}x")
        print(f"LookupIps warm / codec floor: {floor / bus_warm:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
