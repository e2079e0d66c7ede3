"""BanService on its own: the ban snapshot's diffs, paging, and BanIp/UnbanIp's rules.

fail2ban is a fake holding jails and bans in dicts and logging every command, so a
test can say which commands a snapshot may send (fail2ban's socket is single-threaded
and every list read holds it); the never-ban rules are the real BanPolicy.
"""

from __future__ import annotations

import time
from typing import cast

import pytest

from bangui_daemon.blocklist.policy import BanPolicy
from bangui_daemon.errors import (
    Fail2banCommandError,
    Fail2banUnavailable,
    InvalidArgument,
    Refused,
)
from bangui_daemon.events import EventHub, PropertiesChanged
from bangui_daemon.fail2ban.client import BanEntry, Fail2banClient, JailCounts
from bangui_daemon.models import ORIGIN_BLOCKLIST, ORIGIN_SELFBLOCK
from bangui_daemon.services.bans import BanService
from bangui_daemon.services.daemon_state import DaemonState

SSHD, BLOCKLIST = "sshd", "blocklist-import"
HOST = "45.113.99.7"  # this host's own address: never banned


class FakeFail2ban:
    """Jails -> {ip: (timeofban, bantime)}; `log` records every command sent."""

    def __init__(self) -> None:
        self.bans: dict[str, dict[str, tuple[int, int]]] = {SSHD: {}, BLOCKLIST: {}}
        self.total: dict[str, int] = {}
        self.log: list[tuple[str, ...]] = []
        self.down = False
        self.refuse: str | None = None  # fail2ban's message when it refuses a ban

    def _cmd(self, *words: str) -> None:
        self.log.append(words)
        if self.down:
            raise Fail2banUnavailable("fail2ban is not running (socket is down)")

    def reads(self, command: str) -> list[str]:
        """The jails `command` was sent for."""
        return [w[1] for w in self.log if w[0] == command]

    def put(self, jail: str, ip: str, timeofban: int, bantime: int = 600) -> None:
        self.bans[jail][ip] = (timeofban, bantime)
        self.total[jail] = self.total.get(jail, 0) + 1

    async def version(self) -> str:
        self._cmd("version")
        return "1.0.2"

    async def jails(self) -> list[str]:
        self._cmd("jails")
        return list(self.bans)

    async def jail_counts(self, jail: str) -> JailCounts:
        self._cmd("counts", jail)
        return JailCounts(0, 0, len(self.bans[jail]), self.total.get(jail, 0))

    async def banned_with_time(self, jail: str) -> list[BanEntry]:
        self._cmd("list", jail)
        return [BanEntry(ip, t, b) for ip, (t, b) in self.bans[jail].items()]

    async def ban(self, jail: str, ips: list[str]) -> int:
        self._cmd("ban", jail, *ips)
        if self.refuse is not None:
            raise Fail2banCommandError("UnknownJailException", self.refuse)
        new = [ip for ip in ips if ip not in self.bans[jail]]
        for ip in new:
            self.put(jail, ip, 1_700_000_000)
        return len(new)

    async def unban(self, jail: str, ips: list[str]) -> int:
        self._cmd("unban", jail, *ips)
        return sum(self.bans[jail].pop(ip, None) is not None for ip in ips)


class Setup:
    def __init__(self, *, before_unban: bool = True) -> None:
        self.f2b = FakeFail2ban()
        self.hub = EventHub()
        self.changes: list[PropertiesChanged] = []
        self.hub.subscribe(
            lambda e: self.changes.append(e) if isinstance(e, PropertiesChanged) else None
        )
        self.state = DaemonState(self.hub)
        self.archived: list[str] = []
        self.archive_fails = False
        policy = BanPolicy(host_addresses=[HOST])

        async def refusal(_jail: str, address: str) -> str | None:
            return policy.check(address)

        self.service = BanService(
            cast(Fail2banClient, self.f2b),
            self.state,
            lambda: BLOCKLIST,
            refusal,
            before_unban=self._archive if before_unban else None,
        )

    async def _archive(self, ip: str, _live_jails: list[str]) -> int:
        # what the log holds when the archive is asked proves the order of the two
        self.f2b.log.append(("archive", ip))
        if self.archive_fails:
            raise OSError("disk full")
        self.archived.append(ip)
        return 1


@pytest.fixture
def s() -> Setup:
    return Setup()


# ---- list_bans ---------------------------------------------------------------------


async def load(service: BanService) -> None:
    """Take a first snapshot the way the ban watch does at start: counts, then lists."""
    counts = await service.read_counts()
    for jail, jail_counts in counts.items():
        seen = service.begin_list(jail)
        service.apply_list(jail, await service.read_list(jail), jail_counts, seen)
    service.reconcile(counts, time.time())
    service.mark_baseline()


async def test_list_bans_pages_newest_first(s: Setup) -> None:
    for n in range(7):
        s.f2b.put(SSHD if n % 2 else BLOCKLIST, f"45.113.0.{n}", 1000 + n)
    await load(s.service)
    page, total = s.service.list_bans("", 0, 3)
    assert total == 7
    assert [b.ip for b in page] == ["45.113.0.6", "45.113.0.5", "45.113.0.4"]
    page, total = s.service.list_bans("", 6, 3)
    assert ([b.ip for b in page], total) == (["45.113.0.0"], 7)
    page, total = s.service.list_bans(SSHD, 1, 10)
    assert ([b.ip for b in page], total) == (["45.113.0.3", "45.113.0.1"], 3)
    assert s.service.list_bans("", 7, 3) == ([], 7)


async def test_ties_in_time_are_ordered_by_jail_then_address(s: Setup) -> None:
    s.f2b.put(SSHD, "45.113.0.2", 1000)
    s.f2b.put(SSHD, "45.113.0.1", 1000)
    s.f2b.put(BLOCKLIST, "45.113.0.3", 1000)
    await load(s.service)
    page, _ = s.service.list_bans("", 0, 10)
    assert [(b.jail, b.ip) for b in page] == [
        (BLOCKLIST, "45.113.0.3"),
        (SSHD, "45.113.0.1"),
        (SSHD, "45.113.0.2"),
    ]


async def test_list_bans_of_an_unknown_jail_is_invalid(s: Setup) -> None:
    await load(s.service)
    with pytest.raises(InvalidArgument, match="unknown jail name 'nginx'"):
        s.service.list_bans("nginx", 0, 10)


async def test_jails_are_unavailable_not_unknown_before_fail2ban_answered(s: Setup) -> None:
    s.f2b.down = True
    with pytest.raises(Fail2banUnavailable):
        await load(s.service)
    with pytest.raises(Fail2banUnavailable, match="jails are unknown"):
        s.service.list_bans(SSHD, 0, 10)


# ---- ban_ip -----------------------------------------------------------------------


async def test_ban_ip_bans_the_canonical_address(s: Setup) -> None:
    await load(s.service)
    assert await s.service.ban_ip(SSHD, "2a01:db8:0::0001") is True
    assert s.f2b.log[-1] == ("ban", SSHD, "2a01:db8::1")
    assert await s.service.ban_ip(SSHD, "2a01:db8::1") is False  # already banned


@pytest.mark.parametrize(
    ("ip", "reason"),
    [("127.0.0.1", "loopback"), (HOST, "host_address"), ("10.1.2.3", "private")],
)
async def test_ban_ip_refuses_what_must_never_be_banned(s: Setup, ip: str, reason: str) -> None:
    await load(s.service)
    s.f2b.log.clear()
    with pytest.raises(Refused, match=f"refusing to ban {ip}: {reason}"):
        await s.service.ban_ip(SSHD, ip)
    assert s.f2b.reads("ban") == []  # fail2ban never saw it


@pytest.mark.parametrize("ip", ["", "203.0.113", "45.113.0.0/24", "--all", "1.2.3.4 "])
async def test_ban_ip_refuses_what_is_not_one_address(s: Setup, ip: str) -> None:
    await load(s.service)
    s.f2b.log.clear()
    with pytest.raises(InvalidArgument, match="is not an IP address"):
        await s.service.ban_ip(SSHD, ip)
    assert s.f2b.log == []


async def test_ban_ip_in_an_unknown_jail_is_invalid(s: Setup) -> None:
    await load(s.service)
    s.f2b.log.clear()
    with pytest.raises(InvalidArgument, match="unknown jail name 'nginx'"):
        await s.service.ban_ip("nginx", "45.113.0.1")
    assert s.f2b.log == []


async def test_ban_ip_while_fail2ban_was_never_reached(s: Setup) -> None:
    s.f2b.down = True
    with pytest.raises(Fail2banUnavailable):
        await load(s.service)
    with pytest.raises(Fail2banUnavailable):
        await s.service.ban_ip(SSHD, "45.113.0.1")


async def test_ban_ip_when_fail2ban_goes_down_in_between(s: Setup) -> None:
    await load(s.service)
    s.f2b.down = True
    with pytest.raises(Fail2banUnavailable):
        await s.service.ban_ip(SSHD, "45.113.0.1")


async def test_ban_ip_that_fail2ban_refuses_is_an_invalid_argument(s: Setup) -> None:
    await load(s.service)
    s.f2b.refuse = "'sshd' is not running"
    with pytest.raises(InvalidArgument, match="fail2ban refused the ban: 'sshd' is not running"):
        await s.service.ban_ip(SSHD, "45.113.0.1")


# ---- unban_ip ---------------------------------------------------------------------


async def test_unban_ip_archives_the_address_before_unbanning(s: Setup) -> None:
    s.f2b.put(SSHD, "45.113.0.1", 100)
    await load(s.service)
    s.f2b.log.clear()
    assert await s.service.unban_ip(SSHD, "45.113.0.1") == [SSHD]
    # fail2ban deletes the address's rows on unban: the archive must have them first
    assert s.f2b.log == [("archive", "45.113.0.1"), ("unban", SSHD, "45.113.0.1")]
    assert "45.113.0.1" not in s.f2b.bans[SSHD]


async def test_unban_ip_from_every_jail_names_the_jails_it_left(s: Setup) -> None:
    s.f2b.put(SSHD, "45.113.0.1", 100)
    s.f2b.put(BLOCKLIST, "45.113.0.1", 100)
    s.f2b.put(BLOCKLIST, "45.113.0.2", 100)
    await load(s.service)
    s.f2b.log.clear()
    assert sorted(await s.service.unban_ip("", "45.113.0.1")) == [BLOCKLIST, SSHD]
    assert s.f2b.log[0] == ("archive", "45.113.0.1")  # once, before any unban
    assert sorted(s.f2b.reads("unban")) == [BLOCKLIST, SSHD]
    assert await s.service.unban_ip("", "45.113.0.1") == []  # nowhere banned any more
    assert s.f2b.bans[BLOCKLIST] == {"45.113.0.2": (100, 600)}


async def test_unban_ip_goes_on_when_archiving_fails(s: Setup) -> None:
    s.f2b.put(SSHD, "45.113.0.1", 100)
    await load(s.service)
    s.archive_fails = True
    assert await s.service.unban_ip(SSHD, "45.113.0.1") == [SSHD]


async def test_unban_ip_refuses_bad_input_before_touching_anything(s: Setup) -> None:
    await load(s.service)
    s.f2b.log.clear()
    with pytest.raises(InvalidArgument, match="is not an IP address"):
        await s.service.unban_ip("", "not-an-ip")
    with pytest.raises(InvalidArgument, match="unknown jail"):
        await s.service.unban_ip("nginx", "45.113.0.1")
    assert s.f2b.log == []
    assert s.archived == []


async def test_origin_follows_the_blocklist_jail(s: Setup) -> None:
    assert s.service.origin(BLOCKLIST) == ORIGIN_BLOCKLIST
    assert s.service.origin(SSHD) == ORIGIN_SELFBLOCK
