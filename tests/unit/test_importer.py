"""The Importer on its own: a real archive in a temp dir, a fake fail2ban, file:// lists.

The fake fail2ban reads the archive at every banip, so the tests can check the
crash-safety rule itself: an address's intent is durable before fail2ban is asked to
ban it. Lists are files below the configured file_dir, so the real download path
(ETag, conditional read) runs without a network.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from bangui_daemon.archive.db import Archive
from bangui_daemon.archive.sources_repo import SourceRow
from bangui_daemon.blocklist.host import HostAddresses
from bangui_daemon.blocklist.importer import COMPLETED, FAILED, UNCHANGED, Importer, ImportOutcome
from bangui_daemon.blocklist.safety import SafetyPolicy
from bangui_daemon.config import BlocklistConfig
from bangui_daemon.errors import Fail2banUnavailable
from bangui_daemon.events import Event, EventHub, ImportFinished, ImportStarted
from bangui_daemon.fail2ban.client import Fail2banClient

JAIL = "blocklist-import"
NOW = 1_800_000_000


class FakeFail2ban:
    """One jail's ban set; every banip records the archive's import_bans at that moment."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self.jail_names = [JAIL, "sshd"]
        self.banned_now: set[str] = set()
        self.ignored: list[str] = []
        self.bans: list[list[str]] = []
        self.unbans: list[list[str]] = []
        self.intents_at_ban: list[dict[str, str]] = []
        self.fail_ban_call: int | None = None  # 1-based banip call that fails
        self.banned_before_failing = False  # that call times out after fail2ban banned

    async def jails(self) -> list[str]:
        return list(self.jail_names)

    async def ignoreip(self, jail: str) -> list[str]:
        assert jail == JAIL
        return list(self.ignored)

    async def banned(self, jail: str) -> list[str]:
        assert jail == JAIL
        return sorted(self.banned_now)

    # the timeout keyword mirrors Fail2banClient's; a fake answers at once
    async def ban(self, jail: str, ips: list[str], *, timeout: float | None = None) -> int:  # noqa: ASYNC109
        assert jail == JAIL
        rows = await self.archive.fetchall("SELECT entry, state FROM import_bans")
        self.intents_at_ban.append({str(r[0]): str(r[1]) for r in rows})
        self.bans.append(list(ips))
        failing = self.fail_ban_call == len(self.bans)
        if failing and not self.banned_before_failing:
            raise Fail2banUnavailable("fail2ban is not running (socket is down)")
        new = set(ips) - self.banned_now
        self.banned_now |= new
        if failing:
            raise Fail2banUnavailable("fail2ban did not answer within 10 s")
        return len(new)

    async def unban(self, jail: str, ips: list[str], *, timeout: float | None = None) -> int:  # noqa: ASYNC109
        assert jail == JAIL
        self.unbans.append(list(ips))
        gone = set(ips) & self.banned_now
        self.banned_now -= gone
        return len(gone)

    def sent(self) -> list[str]:
        return sorted(ip for call in self.bans for ip in call)


class FixedHost(HostAddresses):
    """This host's addresses, fixed for the test."""

    def __init__(self) -> None:
        super().__init__(set())

    def current(self) -> list[str]:
        return ["45.113.99.250"]


class World:
    def __init__(self, archive: Archive, lists: Path) -> None:
        self.archive = archive
        self.lists = lists
        self.f2b = FakeFail2ban(archive)
        self.events: list[Event] = []
        hub = EventHub()
        hub.subscribe(self.events.append)
        self.config = BlocklistConfig(jail=JAIL, file_dir=str(lists), batch_size=2)
        self.importer = Importer(
            archive,
            cast(Fail2banClient, self.f2b),
            hub,
            lambda: self.config,
            lambda: 10.0,
            SafetyPolicy(lambda: self.config, cast(Fail2banClient, self.f2b), FixedHost()),
            clock=lambda: NOW,
        )

    def write(self, name: str, *lines: str) -> str:
        path = self.lists / f"{name}.txt"
        path.write_text("".join(f"{line}\n" for line in lines))
        return f"file://{path}"

    async def source(self, name: str, *lines: str, max_entries: int = 0) -> SourceRow:
        url = self.write(name, *lines)
        sid = await self.importer.sources.add(name, url, True, NOW, max_entries=max_entries)
        return await self.row(sid)

    async def row(self, source_id: int) -> SourceRow:
        row = await self.importer.sources.get(source_id)
        assert row is not None
        return row

    async def run(self, source: SourceRow) -> ImportOutcome:
        return await self.importer.import_source(await self.row(source.id))

    async def import_bans(self) -> dict[str, str]:
        return await self.importer.listings.import_bans()


@pytest.fixture
def w(archive: Archive, tmp_path: Path) -> World:
    lists = tmp_path / "lists"
    lists.mkdir()
    return World(archive, lists)


A = ["45.113.0.1", "45.113.0.2", "45.113.0.3", "45.113.0.4", "45.113.0.5"]


async def test_an_import_bans_the_list_and_records_it(w: World) -> None:
    src = await w.source("a", *A, "# a comment", "not-an-address", "127.0.0.1")
    outcome = await w.run(src)
    assert outcome.status == COMPLETED
    assert (outcome.entries, outcome.added, outcome.invalid, outcome.refused) == (6, 5, 1, 1)
    assert w.f2b.sent() == A  # the loopback entry was refused, never sent
    assert [len(c) for c in w.f2b.bans] == [2, 2, 1]  # batch_size
    assert await w.importer.listings.entries(src.id) == set(A)
    assert await w.import_bans() == dict.fromkeys(A, "banned")
    run = await w.importer.runs.get(outcome.run_id)
    assert run is not None
    assert (run.status, run.imported) == (COMPLETED, 5)
    assert [type(e) for e in w.events if isinstance(e, ImportStarted | ImportFinished)] == [
        ImportStarted,
        ImportFinished,
    ]


async def test_the_intent_is_durable_before_each_banip(w: World) -> None:
    src = await w.source("a", *A)
    await w.run(src)
    assert len(w.f2b.bans) == 3
    for sent, intents in zip(w.f2b.bans, w.f2b.intents_at_ban, strict=True):
        assert {ip: intents.get(ip) for ip in sent} == dict.fromkeys(sent, "pending")
    # and what an earlier call banned was booked as banned by the time of a later one
    assert w.f2b.intents_at_ban[2]["45.113.0.1"] == "banned"


async def test_the_same_content_is_imported_exactly_once(w: World) -> None:
    src = await w.source("a", *A)
    first = await w.run(src)
    calls = len(w.f2b.bans)
    again = await w.run(src)  # the same file: its ETag matches
    assert again.status == UNCHANGED
    assert again.run_id == first.run_id
    assert again.entries == 5
    # other bytes, the same entries (reordered, a comment): the content hash decides
    w.write("a", "# refreshed", *reversed(A))
    third = await w.run(src)
    assert third.status == UNCHANGED
    assert third.run_id == first.run_id
    assert len(w.f2b.bans) == calls  # nothing was sent to fail2ban again
    assert w.f2b.unbans == []
    _, total = await w.importer.runs.page(src.id, 0, 10)
    assert total == 1  # one run for one content


async def test_two_sources_share_entries_by_reference(w: World) -> None:
    x, y, z, v = "45.113.0.10", "45.113.0.11", "45.113.0.12", "45.113.0.13"
    a = await w.source("a", x, y)
    b = await w.source("b", y, z)
    assert (await w.run(a)).added == 2
    outcome_b = await w.run(b)
    assert outcome_b.added == 1  # y is banned already
    assert w.f2b.bans[-1] == [z]

    w.write("a", x, v)  # a drops y, which b still lists
    outcome_a = await w.run(a)
    assert (outcome_a.added, outcome_a.removed) == (1, 0)
    assert w.f2b.unbans == []
    assert w.f2b.banned_now == {x, y, z, v}

    w.write("b", z)  # now nobody lists y: it goes
    outcome_b = await w.run(b)
    assert (outcome_b.added, outcome_b.removed) == (0, 1)
    assert w.f2b.unbans == [[y]]
    assert y not in await w.import_bans()

    removed = await w.importer.remove_source(await w.row(a.id))  # unbans what only a had
    assert removed == 2
    assert w.f2b.banned_now == {z}
    assert await w.importer.sources.get(a.id) is None


async def test_an_address_the_import_did_not_ban_is_never_unbanned(w: World) -> None:
    mine, theirs = "45.113.0.20", "45.113.0.21"
    w.f2b.banned_now.add(theirs)  # banned by an admin before any import
    src = await w.source("a", mine, theirs)
    assert (await w.run(src)).added == 1
    assert w.f2b.sent() == [mine]
    w.write("a", "45.113.0.22")
    outcome = await w.run(src)
    assert outcome.removed == 1
    assert w.f2b.unbans == [[mine]]
    assert theirs in w.f2b.banned_now


async def test_unchanged_content_bans_again_what_fail2ban_lifted(w: World) -> None:
    src = await w.source("a", *A)
    await w.run(src)
    w.f2b.banned_now -= {A[0], A[3]}  # bantime ended, or an admin unbanned by hand
    w.f2b.bans.clear()
    w.f2b.intents_at_ban.clear()
    outcome = await w.run(src)
    assert outcome.status == UNCHANGED
    assert outcome.reapplied == 2
    assert w.f2b.sent() == [A[0], A[3]]
    for sent, intents in zip(w.f2b.bans, w.f2b.intents_at_ban, strict=True):
        assert all(ip in intents for ip in sent)  # the intent still precedes the banip
    assert w.f2b.banned_now == set(A)
    assert (await w.run(src)).reapplied == 0  # nothing lifted: nothing sent
    assert len(w.f2b.bans) == 1


async def test_a_lifted_ban_now_allow_listed_stays_lifted(w: World) -> None:
    src = await w.source("a", *A)
    await w.run(src)
    w.f2b.banned_now.discard(A[1])
    w.config = BlocklistConfig(jail=JAIL, file_dir=str(w.lists), batch_size=2, allowlist=(A[1],))
    outcome = await w.run(src)
    assert outcome.reapplied == 0
    assert A[1] not in w.f2b.banned_now


async def test_a_list_over_the_cap_fails_naming_its_size_and_the_key(w: World) -> None:
    w.config = BlocklistConfig(jail=JAIL, file_dir=str(w.lists), max_entries=3)
    src = await w.source("a", *A)
    outcome = await w.run(src)
    assert outcome.status == FAILED
    assert "more than 3 entries (5 lines)" in outcome.error
    assert "raise blocklist.max_entries" in outcome.error
    assert w.f2b.bans == []
    row = await w.row(src.id)
    assert (row.last_status, row.last_error) == (FAILED, outcome.error)


async def test_a_source_cap_is_named_as_the_sources_own(w: World) -> None:
    src = await w.source("big", *A, max_entries=4)
    outcome = await w.run(src)
    assert outcome.status == FAILED
    assert "more than 4 entries" in outcome.error
    assert "the source's max_entries (source 'big')" in outcome.error
    assert w.f2b.bans == []


async def test_a_missing_jail_fails_the_import_by_name(w: World) -> None:
    w.f2b.jail_names = ["sshd"]
    src = await w.source("a", *A)
    outcome = await w.run(src)
    assert outcome.status == FAILED
    assert "'blocklist-import' is not configured in fail2ban" in outcome.error
    assert w.f2b.bans == []


@pytest.mark.parametrize("banned_before_failing", [False, True])
async def test_a_retry_after_fail2ban_failed_mid_import_sends_nothing_twice(
    w: World, banned_before_failing: bool
) -> None:
    src = await w.source("a", *A)
    w.f2b.fail_ban_call = 2  # the second batch fails: before or after fail2ban banned it
    w.f2b.banned_before_failing = banned_before_failing
    failed = await w.run(src)
    assert failed.status == FAILED
    assert "fail2ban" in failed.error
    first_batch, failing_batch = w.f2b.bans
    assert (await w.import_bans())[failing_batch[0]] == "pending"
    w.f2b.fail_ban_call = None
    w.f2b.bans.clear()
    done = await w.run(src)
    assert done.status == COMPLETED
    assert done.run_id == failed.run_id  # the same run, taken up again
    resent = set(w.f2b.sent())
    assert not resent & set(first_batch)
    assert bool(resent & set(failing_batch)) is not banned_before_failing
    assert w.f2b.banned_now == set(A)
    # what fail2ban banned before the failure is claimed as the import's own ban
    assert await w.import_bans() == dict.fromkeys(A, "banned")


async def test_removing_a_source_unbans_only_what_it_alone_banned(w: World) -> None:
    only_a, shared, theirs = "45.113.0.30", "45.113.0.31", "45.113.0.32"
    w.f2b.banned_now.add(theirs)  # banned by an admin, then listed by a
    a = await w.source("a", only_a, shared, theirs)
    b = await w.source("b", shared)
    await w.run(a)
    await w.run(b)
    assert await w.importer.remove_source(await w.row(a.id)) == 1
    assert w.f2b.unbans == [[only_a]]
    assert w.f2b.banned_now == {shared, theirs}
    assert await w.importer.listings.entries(b.id) == {shared}


async def test_entries_in_the_jails_ignoreip_are_refused(w: World) -> None:
    w.f2b.ignored = ["45.113.0.0/30"]
    src = await w.source("a", *A)
    outcome = await w.run(src)
    assert outcome.refused == 3  # .1 .2 .3 (the /30's .0 is not listed)
    assert w.f2b.sent() == A[3:]
