"""The ban watch's decisions, with fail2ban's socket and DB replaced by fakes.

What is checked here is what a subscriber would notice: which signals go out, in what
order relative to the geo answer, and which questions fail2ban is asked (a full list
only when its counters cannot be explained).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bangui_daemon.events import BanAdded, BanRemoved, BansChanged, Event, EventHub
from bangui_daemon.fail2ban.client import BanEntry, JailCounts
from bangui_daemon.fail2ban.db_tail import BanRow, TailRead
from bangui_daemon.services.ban_watch import FULL_EVERY, PER_ADDRESS_LIMIT, BanWatch
from bangui_daemon.services.bans import BanService
from bangui_daemon.services.daemon_state import DaemonState
from tests.harness.util import await_until


class FakeFail2ban:
    """fail2ban's ban lists and counters, and the DB rows its bans write."""

    def __init__(self, jails: tuple[str, ...] = ("sshd", "blocklist-import")) -> None:
        self.bans: dict[str, dict[str, BanEntry]] = {j: {} for j in jails}
        self.total = dict.fromkeys(jails, 0)
        self.rows: list[BanRow] = []
        self.questions: list[tuple[str, str]] = []
        self.connected = True

    def ban(self, jail: str, ip: str, bantime: int = 3600, *, row: bool = True) -> int:
        """Ban now; return the time of the ban."""
        now = int(time.time())
        self.bans[jail][ip] = BanEntry(ip, now, bantime)
        self.total[jail] += 1
        if row:
            self.rows.append(BanRow(len(self.rows) + 1, jail, ip, now, bantime))
        return now

    def lift(self, jail: str, ip: str) -> None:
        """fail2ban lifts a ban (expiry, or an unban not through the daemon)."""
        del self.bans[jail][ip]

    # the client's side
    async def version(self) -> str:
        return "1.0.2"

    async def jails(self) -> list[str]:
        return list(self.bans)

    async def jail_counts(self, jail: str) -> JailCounts:
        self.questions.append(("counts", jail))
        return JailCounts(0, 0, len(self.bans[jail]), self.total[jail])

    async def banned_with_time(self, jail: str) -> list[BanEntry]:
        self.questions.append(("list", jail))
        return list(self.bans[jail].values())

    async def unban(self, jail: str, ips: list[str]) -> int:
        for ip in ips:
            self.lift(jail, ip)
        return len(ips)

    async def is_banned(self, jail: str, ips: list[str]) -> list[bool]:
        self.questions.append(("ask", jail))
        return [ip in self.bans[jail] for ip in ips]


class FakeTail:
    """The DB tail over FakeFail2ban.rows."""

    path = "/fake/fail2ban.sqlite3"

    def __init__(self, f2b: FakeFail2ban) -> None:
        self.f2b = f2b
        self.mark = 0

    async def start(self) -> None:
        self.mark = len(self.f2b.rows)

    async def read(self) -> TailRead:
        rows = self.f2b.rows[self.mark :]
        self.mark = len(self.f2b.rows)
        return TailRead(rows, more=False, lost=False)

    async def close(self) -> None:
        return None


class FakeChanges:
    """inotify: `written()` wakes the watch."""

    event_driven = True

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.waits = 0  # the watch waits again once it has handled a wake-up

    def start(self) -> bool:
        return True

    def written(self) -> None:
        self._event.set()

    async def wait(self, within: float) -> bool:
        self.waits += 1
        try:
            await asyncio.wait_for(self._event.wait(), within)
        except TimeoutError:
            return False
        return True

    def clear(self) -> None:
        self._event.clear()

    def close(self) -> None:
        return None


async def _never_refused(_jail: str, _ip: str) -> str | None:
    return None


class Harness:
    def __init__(self, quiet: str | None = None) -> None:
        self.f2b = FakeFail2ban()
        self.hub = EventHub()
        self.events: list[Any] = []
        self.published = asyncio.Event()
        self.hub.subscribe(self._note)
        self.changes = FakeChanges()
        self.bans = BanService(
            self.f2b,  # type: ignore[arg-type]
            DaemonState(self.hub),
            lambda: "blocklist-import",
            _never_refused,
        )
        self.watch = BanWatch(
            self.bans,
            FakeTail(self.f2b),  # type: ignore[arg-type]
            self.changes,  # type: ignore[arg-type]
            self.hub,
            self.resolve,
            lambda: 2.0,
            quiet_jail=lambda: quiet,
        )

    def _note(self, event: Event) -> None:
        self.events.append(event)
        self.published.set()

    async def resolve(self, ips: Any) -> None:
        self.events.append(("geo", list(ips)))

    def signals(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def settle(self, predicate: Any, within: float = 2.0) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                self.published.clear()
                await self.published.wait()


def lists(h: Harness) -> list[tuple[str, str]]:
    return [q for q in h.f2b.questions if q[0] == "list"]


@pytest.fixture
async def h() -> Any:
    harness = Harness()
    harness.f2b.ban("sshd", "192.0.2.1")
    harness.f2b.rows.clear()  # banned before the daemon started: no row to read
    await harness.watch.start()
    yield harness
    await harness.watch.stop()


async def test_a_written_row_becomes_ban_added_after_its_geo_answer(h: Harness) -> None:
    assert h.signals(BanAdded) == []  # the start-up snapshot is no news
    at = h.f2b.ban("sshd", "198.51.100.7")
    h.changes.written()
    await h.settle(lambda: h.signals(BansChanged))
    assert h.events[-3:] == [
        ("geo", ["198.51.100.7"]),
        BanAdded("sshd", "198.51.100.7", at, 3600),
        BansChanged(1, 0),
    ]
    assert "198.51.100.7" in [b.ip for b in h.bans.list_bans("sshd", 0, 100)[0]]
    assert lists(h) == [("list", "blocklist-import"), ("list", "sshd")]  # at start only


async def test_a_storm_is_one_bans_changed(h: Harness) -> None:
    for i in range(PER_ADDRESS_LIMIT + 1):
        h.f2b.ban("sshd", f"198.51.{i // 250}.{i % 250 + 1}")
    h.changes.written()
    await h.settle(lambda: h.signals(BansChanged))
    assert h.signals(BanAdded) == []
    assert h.signals(BansChanged) == [BansChanged(PER_ADDRESS_LIMIT + 1, 0)]
    assert not [e for e in h.events if isinstance(e, tuple)]  # no geo for a storm
    assert h.bans.active_bans() == PER_ADDRESS_LIMIT + 2


async def test_the_importing_jail_is_summed_not_named() -> None:
    harness = Harness(quiet="blocklist-import")
    await harness.watch.start()
    try:
        harness.f2b.ban("blocklist-import", "203.0.113.5")
        harness.f2b.ban("sshd", "198.51.100.8")
        harness.changes.written()
        await harness.settle(lambda: harness.signals(BansChanged))
        assert [e.ip for e in harness.signals(BanAdded)] == ["198.51.100.8"]
        assert harness.signals(BansChanged) == [BansChanged(2, 0)]
    finally:
        await harness.watch.stop()


async def test_counters_explain_an_expiry_and_an_unban_through_us(h: Harness) -> None:
    at = h.f2b.ban("sshd", "198.51.100.9", bantime=1)
    h.f2b.ban("sshd", "198.51.100.10")
    h.changes.written()
    await h.settle(lambda: len(h.signals(BanAdded)) == 2)
    await asyncio.sleep(max(0.0, at + 1.01 - time.time()))
    h.f2b.lift("sshd", "198.51.100.9")  # ran out
    assert await h.bans.unban_ip("sshd", "198.51.100.10") == ["sshd"]  # UnbanIp
    result = await h.watch.poll()  # due bans: the counters are read
    assert {e.ip for e in h.signals(BanRemoved)} == {"198.51.100.9", "198.51.100.10"}
    # only the ban that ran out a moment ago is asked about; nothing is listed
    assert (result["lists"], result["asked"], result["looked_again"]) == ([], 1, False)


async def test_only_some_due_bans_lifted_are_asked_about_not_listed(h: Harness) -> None:
    at = h.f2b.ban("sshd", "198.51.100.11", bantime=2)
    h.f2b.ban("sshd", "198.51.100.12", bantime=2)
    h.changes.written()
    await h.settle(lambda: len(h.signals(BanAdded)) == 2)
    h.f2b.lift("sshd", "198.51.100.11")  # fail2ban lifted one; the other lags
    await asyncio.sleep(max(0.0, at + 2.01 - time.time()))
    result = await h.watch.poll()
    assert h.signals(BanRemoved) == [BanRemoved("sshd", "198.51.100.11")]
    assert result["asked"] == 2
    assert result["lists"] == []


async def test_a_removal_nothing_explains_costs_one_list(h: Harness) -> None:
    h.f2b.lift("sshd", "192.0.2.1")  # fail2ban-client unbanip: its rows are deleted
    waits = h.changes.waits
    h.changes.written()  # a write that brought no ban row

    async def handled() -> bool:  # the watch reads the DB on its own task, then waits again
        return h.changes.waits > waits

    await await_until(handled, 2.0, "the watch to handle the write")
    result = await h.watch.poll()
    assert result["looked_again"] is True
    assert result["lists"] == ["sshd"]
    assert h.signals(BanRemoved) == [BanRemoved("sshd", "192.0.2.1")]
    result = await h.watch.poll(full=True)
    assert result["lists"] == []  # agreed again: no second list


async def test_quiet_ticks_ask_fail2ban_nothing(h: Harness) -> None:
    asked = len(h.f2b.questions)
    for _ in range(FULL_EVERY - 1):
        assert (await h.watch.poll())["counters_read"] is False
    assert len(h.f2b.questions) == asked
    assert (await h.watch.poll())["counters_read"] is True  # every FULL_EVERY ticks
    h.f2b.connected = False  # fail2ban went away: the next tick must notice
    assert (await h.watch.poll())["counters_read"] is True


async def test_a_ban_without_a_row_is_found_by_the_counters(h: Harness) -> None:
    h.f2b.ban("sshd", "198.51.100.13", row=False)  # fail2ban without a DB, or a lost row
    result = await h.watch.poll(full=True)
    assert result["lists"] == ["sshd"]
    assert [e.ip for e in h.signals(BanAdded)] == ["198.51.100.13"]
