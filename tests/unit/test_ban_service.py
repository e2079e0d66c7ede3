"""BanService on its own: the ban snapshot's diffs, paging, and BanIp/UnbanIp's rules.

fail2ban is a fake holding jails and bans in dicts and logging every command, so a
test can say which commands a refresh may send (fail2ban's socket is single-threaded
and every list read holds it); the never-ban rules are the real BanPolicy.
"""

from __future__ import annotations

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
from bangui_daemon.models import ORIGIN_BLOCKLIST, ORIGIN_SELFBLOCK, ActiveBan
from bangui_daemon.services.bans import MAX_PAGE, BanService, RefusalCheck
from bangui_daemon.services.state import DaemonState

SSHD, BLOCKLIST = "sshd", "blocklist-import"
HOST = "198.51.100.7"  # this host's own address: never banned


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
        check: RefusalCheck = policy.check
        self.service = BanService(
            cast(Fail2banClient, self.f2b),
            self.state,
            lambda: BLOCKLIST,
            lambda: check,
            before_unban=self._archive if before_unban else None,
        )

    async def _archive(self, ip: str) -> int:
        # what the log holds when the archive is asked proves the order of the two
        self.f2b.log.append(("archive", ip))
        if self.archive_fails:
            raise OSError("disk full")
        self.archived.append(ip)
        return 1


@pytest.fixture
def s() -> Setup:
    return Setup()


# ---- refresh ---------------------------------------------------------------------


async def test_the_first_refresh_is_a_baseline(s: Setup) -> None:
    s.f2b.put(SSHD, "203.0.113.1", 100)
    s.f2b.put(BLOCKLIST, "203.0.113.2", 200)
    diff = await s.service.refresh()
    assert diff.baseline
    assert (diff.added, diff.removed) == ([], [])  # what was banned before is not "new"
    assert s.service.active_bans() == 2
    assert s.service.banned_ips() == ["203.0.113.1", "203.0.113.2"]
    assert s.state.fail2ban_connected
    assert s.state.fail2ban_version == "1.0.2"
    assert [j.name for j in s.service.jails()] == [BLOCKLIST, SSHD]


async def test_a_refresh_reports_added_and_lifted_bans(s: Setup) -> None:
    s.f2b.put(SSHD, "203.0.113.1", 100)
    await s.service.refresh()
    s.f2b.put(SSHD, "203.0.113.9", 300, bantime=-1)
    del s.f2b.bans[SSHD]["203.0.113.1"]
    diff = await s.service.refresh()
    assert not diff.baseline
    assert diff.added == [ActiveBan(SSHD, "203.0.113.9", 300, -1)]
    assert diff.removed == [ActiveBan(SSHD, "203.0.113.1", 100, 600)]
    assert diff.changed == 2


async def test_only_jails_whose_counts_moved_are_listed_again(s: Setup) -> None:
    s.f2b.put(SSHD, "203.0.113.1", 100)
    await s.service.refresh()
    assert sorted(s.f2b.reads("list")) == [BLOCKLIST, SSHD]
    s.f2b.log.clear()
    diff = await s.service.refresh()  # nothing changed: counts only, no list read
    assert diff.changed == 0
    assert s.f2b.reads("list") == []
    assert sorted(s.f2b.reads("counts")) == [BLOCKLIST, SSHD]
    s.f2b.put(SSHD, "203.0.113.2", 200)
    s.f2b.log.clear()
    await s.service.refresh()
    assert s.f2b.reads("list") == [SSHD]


async def test_a_jail_removed_by_a_reload_takes_its_bans_with_it(s: Setup) -> None:
    s.f2b.put(SSHD, "203.0.113.1", 100)
    s.f2b.put(BLOCKLIST, "203.0.113.2", 200)
    await s.service.refresh()
    del s.f2b.bans[BLOCKLIST]  # fail2ban reloaded without the jail
    diff = await s.service.refresh()
    assert diff.removed == [ActiveBan(BLOCKLIST, "203.0.113.2", 200, 600)]
    assert diff.added == []
    assert s.service.jail_names == [SSHD]
    assert s.service.banned_ips() == ["203.0.113.1"]
    with pytest.raises(InvalidArgument, match="unknown jail"):
        s.service.list_bans(BLOCKLIST, 0, 10)


async def test_a_deferred_jail_gets_its_counts_but_not_its_list(s: Setup) -> None:
    await s.service.refresh()
    for n in range(50):  # an import is filling the jail
        s.f2b.put(BLOCKLIST, f"203.0.113.{n}", 1000 + n)
    s.f2b.put(SSHD, "198.51.100.1", 500)
    s.f2b.log.clear()
    diff = await s.service.refresh(defer=[BLOCKLIST])
    assert s.f2b.reads("list") == [SSHD]  # the other jails are still listed
    assert [b.ip for b in diff.added] == ["198.51.100.1"]
    (info,) = (j for j in s.service.jails() if j.name == BLOCKLIST)
    assert info.currently_banned == 50  # counts are current
    assert s.service.list_bans(BLOCKLIST, 0, 10) == ([], 0)  # the list is not, yet

    s.f2b.log.clear()
    diff = await s.service.refresh()  # the import settled: its list is read once
    assert s.f2b.reads("list") == [BLOCKLIST]
    assert len(diff.added) == 50
    assert s.service.list_bans(BLOCKLIST, 0, 10)[1] == 50


async def test_a_deferred_jail_seen_for_the_first_time_is_listed(s: Setup) -> None:
    s.f2b.put(BLOCKLIST, "203.0.113.5", 100)
    await s.service.refresh(defer=[BLOCKLIST])
    assert s.service.banned_ips() == ["203.0.113.5"]


async def test_fail2ban_down_marks_it_disconnected_and_keeps_the_snapshot(s: Setup) -> None:
    s.f2b.put(SSHD, "203.0.113.1", 100)
    await s.service.refresh()
    s.f2b.down = True
    with pytest.raises(Fail2banUnavailable):
        await s.service.refresh()
    assert not s.state.fail2ban_connected
    assert s.changes[-1].values["Fail2banConnected"] is False
    assert s.service.banned_ips() == ["203.0.113.1"]
    s.f2b.down = False
    diff = await s.service.refresh()
    assert (diff.baseline, diff.changed) == (False, 0)  # back: nothing reported twice
    assert s.state.fail2ban_connected


# ---- list_bans ---------------------------------------------------------------------


async def test_list_bans_pages_newest_first(s: Setup) -> None:
    for n in range(7):
        s.f2b.put(SSHD if n % 2 else BLOCKLIST, f"203.0.113.{n}", 1000 + n)
    await s.service.refresh()
    page, total = s.service.list_bans("", 0, 3)
    assert total == 7
    assert [b.ip for b in page] == ["203.0.113.6", "203.0.113.5", "203.0.113.4"]
    page, total = s.service.list_bans("", 6, 3)
    assert ([b.ip for b in page], total) == (["203.0.113.0"], 7)
    page, total = s.service.list_bans(SSHD, 1, 10)
    assert ([b.ip for b in page], total) == (["203.0.113.3", "203.0.113.1"], 3)
    assert s.service.list_bans("", 7, 3) == ([], 7)


async def test_ties_in_time_are_ordered_by_jail_then_address(s: Setup) -> None:
    s.f2b.put(SSHD, "203.0.113.2", 1000)
    s.f2b.put(SSHD, "203.0.113.1", 1000)
    s.f2b.put(BLOCKLIST, "203.0.113.3", 1000)
    await s.service.refresh()
    page, _ = s.service.list_bans("", 0, 10)
    assert [(b.jail, b.ip) for b in page] == [
        (BLOCKLIST, "203.0.113.3"),
        (SSHD, "203.0.113.1"),
        (SSHD, "203.0.113.2"),
    ]


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE + 1])
async def test_list_bans_refuses_a_page_size_out_of_range(s: Setup, limit: int) -> None:
    await s.service.refresh()
    with pytest.raises(InvalidArgument, match=f"limit must be from 1 to {MAX_PAGE}"):
        s.service.list_bans("", 0, limit)


async def test_list_bans_of_an_unknown_jail_is_invalid(s: Setup) -> None:
    await s.service.refresh()
    with pytest.raises(InvalidArgument, match="unknown jail name 'nginx'"):
        s.service.list_bans("nginx", 0, 10)


async def test_jails_are_unavailable_not_unknown_before_fail2ban_answered(s: Setup) -> None:
    s.f2b.down = True
    with pytest.raises(Fail2banUnavailable):
        await s.service.refresh()
    with pytest.raises(Fail2banUnavailable, match="jails are unknown"):
        s.service.list_bans(SSHD, 0, 10)


# ---- ban_ip -----------------------------------------------------------------------


async def test_ban_ip_bans_the_canonical_address(s: Setup) -> None:
    await s.service.refresh()
    assert await s.service.ban_ip(SSHD, "2001:db8:0::0001") is True
    assert s.f2b.log[-1] == ("ban", SSHD, "2001:db8::1")
    assert await s.service.ban_ip(SSHD, "2001:db8::1") is False  # already banned


@pytest.mark.parametrize(
    ("ip", "reason"),
    [("127.0.0.1", "loopback"), (HOST, "host_address"), ("10.1.2.3", "private")],
)
async def test_ban_ip_refuses_what_must_never_be_banned(s: Setup, ip: str, reason: str) -> None:
    await s.service.refresh()
    s.f2b.log.clear()
    with pytest.raises(Refused, match=f"refusing to ban {ip}: {reason}"):
        await s.service.ban_ip(SSHD, ip)
    assert s.f2b.reads("ban") == []  # fail2ban never saw it


@pytest.mark.parametrize("ip", ["", "203.0.113", "203.0.113.0/24", "--all", "1.2.3.4 "])
async def test_ban_ip_refuses_what_is_not_one_address(s: Setup, ip: str) -> None:
    await s.service.refresh()
    s.f2b.log.clear()
    with pytest.raises(InvalidArgument, match="is not an IP address"):
        await s.service.ban_ip(SSHD, ip)
    assert s.f2b.log == []


async def test_ban_ip_in_an_unknown_jail_is_invalid(s: Setup) -> None:
    await s.service.refresh()
    s.f2b.log.clear()
    with pytest.raises(InvalidArgument, match="unknown jail name 'nginx'"):
        await s.service.ban_ip("nginx", "203.0.113.1")
    assert s.f2b.log == []


async def test_ban_ip_while_fail2ban_was_never_reached(s: Setup) -> None:
    s.f2b.down = True
    with pytest.raises(Fail2banUnavailable):
        await s.service.refresh()
    with pytest.raises(Fail2banUnavailable):
        await s.service.ban_ip(SSHD, "203.0.113.1")


async def test_ban_ip_when_fail2ban_goes_down_in_between(s: Setup) -> None:
    await s.service.refresh()
    s.f2b.down = True
    with pytest.raises(Fail2banUnavailable):
        await s.service.ban_ip(SSHD, "203.0.113.1")


async def test_ban_ip_that_fail2ban_refuses_is_an_invalid_argument(s: Setup) -> None:
    await s.service.refresh()
    s.f2b.refuse = "'sshd' is not running"
    with pytest.raises(InvalidArgument, match="fail2ban refused the ban: 'sshd' is not running"):
        await s.service.ban_ip(SSHD, "203.0.113.1")


# ---- unban_ip ---------------------------------------------------------------------


async def test_unban_ip_archives_the_address_before_unbanning(s: Setup) -> None:
    s.f2b.put(SSHD, "203.0.113.1", 100)
    await s.service.refresh()
    s.f2b.log.clear()
    assert await s.service.unban_ip(SSHD, "203.0.113.1") == [SSHD]
    # fail2ban deletes the address's rows on unban: the archive must have them first
    assert s.f2b.log == [("archive", "203.0.113.1"), ("unban", SSHD, "203.0.113.1")]
    assert "203.0.113.1" not in s.f2b.bans[SSHD]


async def test_unban_ip_from_every_jail_names_the_jails_it_left(s: Setup) -> None:
    s.f2b.put(SSHD, "203.0.113.1", 100)
    s.f2b.put(BLOCKLIST, "203.0.113.1", 100)
    s.f2b.put(BLOCKLIST, "203.0.113.2", 100)
    await s.service.refresh()
    s.f2b.log.clear()
    assert sorted(await s.service.unban_ip("", "203.0.113.1")) == [BLOCKLIST, SSHD]
    assert s.f2b.log[0] == ("archive", "203.0.113.1")  # once, before any unban
    assert sorted(s.f2b.reads("unban")) == [BLOCKLIST, SSHD]
    assert await s.service.unban_ip("", "203.0.113.1") == []  # nowhere banned any more
    assert s.f2b.bans[BLOCKLIST] == {"203.0.113.2": (100, 600)}


async def test_unban_ip_goes_on_when_archiving_fails(s: Setup) -> None:
    s.f2b.put(SSHD, "203.0.113.1", 100)
    await s.service.refresh()
    s.archive_fails = True
    assert await s.service.unban_ip(SSHD, "203.0.113.1") == [SSHD]


async def test_unban_ip_refuses_bad_input_before_touching_anything(s: Setup) -> None:
    await s.service.refresh()
    s.f2b.log.clear()
    with pytest.raises(InvalidArgument, match="is not an IP address"):
        await s.service.unban_ip("", "not-an-ip")
    with pytest.raises(InvalidArgument, match="unknown jail"):
        await s.service.unban_ip("nginx", "203.0.113.1")
    assert s.f2b.log == []
    assert s.archived == []


async def test_origin_follows_the_blocklist_jail(s: Setup) -> None:
    assert s.service.origin(BLOCKLIST) == ORIGIN_BLOCKLIST
    assert s.service.origin(SSHD) == ORIGIN_SELFBLOCK
