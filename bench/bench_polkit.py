"""What asking polkit costs an admin call, against a bus round trip measured alongside.

Run as root: ``python bench/bench_polkit.py [--calls 500]``.

A private system-like bus, a real polkitd with polkit/ of this repo, and a
connection of the throw-away user ``bgt-admin`` (a ``gdbus monitor`` running as that
user) as the subject. Alternating, it times the two round trips the daemon makes for
an admin call by a non-root caller: ``GetConnectionCredentials`` (the baseline; the
daemon caches it per connection) and polkit's ``CheckAuthorization`` for
``org.bangui.Daemon1.manage-bans`` (answered yes by the shipped group rule). Medians,
p99 and the ratio are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from tests.harness.bus import PrivateSystemBus
from tests.harness.polkit import PrivatePolkit
from tests.harness.users import ADMIN_GROUP, ADMIN_USER, AccountLease
from tests.harness.util import wait_until

DBUS = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")


async def owner_of_uid(bus: MessageBus, uid: int) -> str | None:
    """The unique name of a connection of `uid` (the subject process), if any."""
    names = await bus.call(Message(*DBUS[:1], path=DBUS[1], interface=DBUS[2], member="ListNames"))
    assert names is not None
    for name in names.body[0]:
        if not name.startswith(":"):
            continue
        r = await bus.call(
            Message(
                DBUS[0], path=DBUS[1], interface=DBUS[2], member="GetConnectionUnixUser",
                signature="s", body=[name],
            )
        )  # fmt: skip
        if r is not None and r.message_type == MessageType.METHOD_RETURN and r.body[0] == uid:
            return str(name)
    return None


def summary(label: str, times: list[float]) -> str:
    times = sorted(times)
    p99 = times[int(len(times) * 0.99) - 1]
    return f"{label:<28} median {statistics.median(times) * 1e3:6.3f} ms, p99 {p99 * 1e3:6.3f} ms"


async def measure(address: str, uid: int, calls: int) -> None:
    bus = await MessageBus(bus_address=address).connect()
    subject = await owner_of_uid(bus, uid)
    assert subject, "the subject connection is not on the bus"
    creds = Message(
        DBUS[0], path=DBUS[1], interface=DBUS[2], member="GetConnectionCredentials",
        signature="s", body=[subject],
    )  # fmt: skip
    check = Message(
        destination="org.freedesktop.PolicyKit1",
        path="/org/freedesktop/PolicyKit1/Authority",
        interface="org.freedesktop.PolicyKit1.Authority",
        member="CheckAuthorization",
        signature="(sa{sv})sa{ss}us",
        body=[
            ["system-bus-name", {"name": Variant("s", subject)}],
            "org.bangui.Daemon1.manage-bans",
            {"admin_group": ADMIN_GROUP},
            0,
            "",
        ],
    )
    reply = await bus.call(check)
    if reply is None or reply.body[0][0] is not True:
        raise SystemExit(f"polkit did not say yes for {ADMIN_USER}: {reply and reply.body}")
    base: list[float] = []
    polkit: list[float] = []
    for _ in range(calls):
        for msg, out in ((creds, base), (check, polkit)):
            start = time.perf_counter()
            await bus.call(msg)
            out.append(time.perf_counter() - start)
    print(summary("GetConnectionCredentials", base))
    print(summary("polkit CheckAuthorization", polkit))
    print(f"ratio (median): {statistics.median(polkit) / statistics.median(base):.1f}x")
    bus.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    with AccountLease() as users, PrivateSystemBus() as bus, PrivatePolkit(bus):
        admin = users[ADMIN_USER]
        monitor = subprocess.Popen(
            ["setpriv", f"--reuid={admin.name}", f"--regid={admin.name}", "--init-groups",
             "gdbus", "monitor", "--address", bus.address, "--dest", "org.freedesktop.DBus"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_until(lambda: asyncio.run(_has_subject(bus.address, admin.uid)), 10, "the subject")
            asyncio.run(measure(bus.address, admin.uid, args.calls))
        finally:
            monitor.terminate()
            monitor.wait(10)


async def _has_subject(address: str, uid: int) -> bool:
    bus = await MessageBus(bus_address=address).connect()
    try:
        return await owner_of_uid(bus, uid) is not None
    finally:
        bus.disconnect()


if __name__ == "__main__":
    main()
