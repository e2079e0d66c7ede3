"""BlocklistService on its own: the rules for sources, the config's sources, scheduling.

The importer is a fake over the real source and run repositories (a temp archive):
its imports wait for the test's word, so overlapping callers can be staged, and it
records what it was asked to import or remove.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

import pytest

from bangui_daemon.archive.db import Archive
from bangui_daemon.archive.import_runs_repo import ImportRunsRepository
from bangui_daemon.archive.listings_repo import ListingsRepository
from bangui_daemon.archive.sources_repo import SourceRow, SourcesRepository
from bangui_daemon.blocklist.fetch import check_url
from bangui_daemon.blocklist.importer import COMPLETED, FAILED, Importer, ImportOutcome
from bangui_daemon.config import BlocklistSource
from bangui_daemon.errors import InvalidArgument, NotFound
from bangui_daemon.services.blocklists import (
    MAX_INTERVAL,
    MAX_NAME,
    BlocklistService,
)

URL = "https://lists.example.org/drop.txt"
NOW = 1_800_000_000.0
DEADLINE = 5.0


class FakeImporter:
    """Real repositories; imports and removals are recorded and can be held open."""

    def check_url(self, url: str) -> None:
        """The fetcher's own rule, as the real importer applies it."""
        check_url(url, "/etc/bangui/lists")

    def __init__(self, archive: Archive) -> None:
        self.sources = SourcesRepository(archive)
        self.runs = ImportRunsRepository(archive)
        self.listings = ListingsRepository(archive)
        self.imports: list[tuple[int, Sequence[bytes] | None]] = []
        self.removed: list[int] = []
        self.gate: asyncio.Event | None = None  # when set up, imports wait for it
        self.entered = asyncio.Event()

    async def import_source(
        self, source: SourceRow, content: Sequence[bytes] | None = None
    ) -> ImportOutcome:
        self.imports.append((source.id, content))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        await self.sources.record_outcome(source.id, int(NOW), COMPLETED, 1)
        return ImportOutcome(COMPLETED, run_id=len(self.imports), added=1)

    async def remove_source(self, source: SourceRow) -> int:
        self.removed.append(source.id)
        await self.listings.remove_source(source.id, [])  # deletes the row, as the real one
        return 3


class World:
    def __init__(self, archive: Archive) -> None:
        self.importer = FakeImporter(archive)
        self.clock = [NOW]
        self.service = BlocklistService(
            cast(Importer, self.importer),
            self.importer.sources,
            self.importer.runs,
            lambda: self.clock[0],
        )
        self.told = 0
        self.service.on_sources_changed = self._told

    async def _told(self) -> None:
        self.told += 1

    async def row(self, source_id: int) -> SourceRow:
        row = await self.importer.sources.get(source_id)
        assert row is not None
        return row

    async def by_name(self) -> dict[str, SourceRow]:
        return {s.name: s for s in await self.service.list_sources()}


@pytest.fixture
def w(archive: Archive) -> World:
    return World(archive)


# ---- add / update / remove ------------------------------------------------------


async def test_add_source_stores_it_and_says_sources_changed(w: World) -> None:
    sid = await w.service.add_source("  drop  ", URL, True)
    row = await w.row(sid)
    assert (row.name, row.url, row.enabled, row.managed) == ("drop", URL, True, "")
    assert row.interval == 0  # the task's interval
    assert w.told == 1


# One archive for all cases: opening one per case costs more than the cases.
BAD_SOURCES = [
    ("", URL, "a source name is 1 to"),
    ("x" * (MAX_NAME + 1), URL, "a source name is 1 to"),
    ("tab\there", URL, "printable"),
    ("drop", "ftp://lists.example.org/x", "only http, https and file URLs"),
    ("drop", "https:///no-host", "must name a host"),
    ("drop", "file:relative/path", "must hold an absolute path"),
    ("drop", "https://example.org/" + "x" * 2048, "at most 2048"),
    ("drop", "http://\u0101@127.0.0.1:1/", "download URL must be ASCII"),
]


async def test_a_file_source_may_name_a_non_ascii_path(w: World) -> None:
    sid = await w.service.add_source("drop", "file:///etc/bangui/lists/stra\u00dfe.txt", True)
    assert (await w.row(sid)).url.endswith("stra\u00dfe.txt")


async def test_add_source_refuses_bad_input(w: World) -> None:
    for name, url, message in BAD_SOURCES:
        with pytest.raises(InvalidArgument, match=message):
            await w.service.add_source(name, url, True)
    assert await w.service.list_sources() == []
    assert w.told == 0


async def test_a_name_is_taken_once(w: World) -> None:
    await w.service.add_source("drop", URL, True)
    with pytest.raises(InvalidArgument, match="'drop' exists already"):
        await w.service.add_source("drop", URL + "?2", False)
    other = await w.service.add_source("edrop", URL, True)
    with pytest.raises(InvalidArgument, match="'drop' exists already"):
        await w.service.update_source(other, {"name": ("s", "drop")})
    assert (await w.row(other)).name == "edrop"


async def test_update_source_changes_what_it_is_given(w: World) -> None:
    sid = await w.service.add_source("drop", URL, True)
    await w.service.update_source(
        sid,
        {
            "url": ("s", "file:///etc/bangui/lists/drop.txt"),
            "enabled": ("b", False),
            "interval": ("u", 7200),
            "max_entries": ("t", 5000),
        },
    )
    row = await w.row(sid)
    assert (row.name, row.url, row.enabled) == ("drop", "file:///etc/bangui/lists/drop.txt", False)
    assert (row.interval, row.max_entries) == (7200, 5000)
    assert w.told == 2


BAD_CHANGES: list[tuple[dict[str, tuple[str, object]], str]] = [
    ({"colour": ("s", "red")}, "unknown change 'colour'"),
    ({"enabled": ("s", "yes")}, "enabled must have type b, got s"),
    ({"interval": ("x", -1)}, "interval must be 0"),
    ({"interval": ("x", MAX_INTERVAL + 1)}, "interval must be 0"),
    ({"max_entries": ("i", -5)}, "max_entries must be 0"),
    ({"name": ("s", "")}, "a source name is 1 to"),
    ({"url": ("s", "gopher://x")}, "only http, https and file URLs"),
    # a valid change beside a bad one: nothing of either is written
    ({"enabled": ("b", False), "url": ("s", "gopher://x")}, "only http, https and file URLs"),
]


async def test_update_source_refuses_bad_changes_and_changes_nothing(w: World) -> None:
    sid = await w.service.add_source("drop", URL, True)
    before = await w.row(sid)
    for changes, message in BAD_CHANGES:
        with pytest.raises(InvalidArgument, match=message):
            await w.service.update_source(sid, changes)
        assert await w.row(sid) == before, changes


async def test_unknown_ids_are_not_found(w: World) -> None:
    with pytest.raises(NotFound, match="no blocklist source with id 42"):
        await w.service.update_source(42, {"enabled": ("b", True)})
    with pytest.raises(NotFound):
        await w.service.remove_source(42)
    with pytest.raises(NotFound):
        await w.service.import_source(42)
    with pytest.raises(NotFound):
        await w.service.runs(42, 1, 10)
    assert w.importer.imports == []


async def test_remove_source_unbans_through_the_importer(w: World) -> None:
    sid = await w.service.add_source("drop", URL, True)
    assert await w.service.remove_source(sid) == 3
    assert w.importer.removed == [sid]
    assert await w.service.list_sources() == []


async def test_config_sources_are_refused_to_dbus_callers(w: World) -> None:
    await w.service.reconcile([BlocklistSource(name="spamhaus", url=URL)])
    sid = (await w.by_name())["spamhaus"].id
    with pytest.raises(InvalidArgument, match=r"managed by \[\[blocklist.source\]\]"):
        await w.service.update_source(sid, {"enabled": ("b", False)})
    with pytest.raises(InvalidArgument, match=r"managed by \[\[blocklist.source\]\]"):
        await w.service.remove_source(sid)
    assert w.importer.removed == []
    assert (await w.row(sid)).enabled


async def test_a_feed_is_refused_to_dbus_callers_and_its_name_reserved(w: World) -> None:
    sid = await w.service.register_feed("crowdsec", "https://lapi.example.org/", lambda: None)
    with pytest.raises(InvalidArgument, match=r"managed by \[crowdsec\]"):
        await w.service.update_source(sid, {"url": ("s", URL)})
    with pytest.raises(InvalidArgument, match=r"managed by \[crowdsec\]"):
        await w.service.remove_source(sid)
    with pytest.raises(InvalidArgument, match="reserved for its config section"):
        await w.service.add_source("crowdsec", URL, True)
    other = await w.service.add_source("mine", URL, True)
    with pytest.raises(InvalidArgument, match="reserved"):
        await w.service.update_source(other, {"name": ("s", "crowdsec")})


async def test_a_feed_never_takes_over_an_admins_source(w: World) -> None:
    await w.service.add_source("crowdsec", URL, True)
    with pytest.raises(InvalidArgument, match="exists already"):
        await w.service.register_feed("crowdsec", "https://lapi.example.org/", lambda: None)


async def test_a_feed_with_nothing_received_yet_imports_nothing(w: World) -> None:
    content: list[Sequence[bytes] | None] = [None]
    await w.service.register_feed("crowdsec", "https://lapi.example.org/", lambda: content[0])
    outcome = await w.service.import_feed("crowdsec")
    assert outcome.status == FAILED
    assert "nothing received yet" in outcome.error
    assert w.importer.imports == []  # an empty import would unban everything it listed
    content[0] = (b"203.0.113.1\n",)
    assert (await w.service.import_feed("crowdsec")).status == COMPLETED
    assert w.importer.imports[0][1] == (b"203.0.113.1\n",)


async def test_reconcile_adds_changes_and_removes(w: World) -> None:
    mine = await w.service.add_source("mine", URL, True)
    counts = await w.service.reconcile(
        [
            BlocklistSource(name="a", url=URL, interval=600),
            BlocklistSource(name="b", url=URL, enabled=False, max_entries=100),
        ]
    )
    assert counts == {"added": 2, "changed": 0, "removed": 0}
    rows = await w.by_name()
    b_id = rows["b"].id
    assert (rows["a"].managed, rows["a"].interval) == ("config", 600)
    assert (rows["b"].enabled, rows["b"].max_entries) == (False, 100)

    assert await w.service.reconcile(
        [
            BlocklistSource(name="a", url=URL, interval=600),
            BlocklistSource(name="b", url=URL, enabled=False, max_entries=100),
        ]
    ) == {"added": 0, "changed": 0, "removed": 0}  # the same config again: no writes

    counts = await w.service.reconcile(
        [BlocklistSource(name="a", url=URL + "?v2", interval=60)]  # a changed, b gone
    )
    assert counts == {"added": 0, "changed": 1, "removed": 1}
    rows = await w.by_name()
    assert (rows["a"].url, rows["a"].interval) == (URL + "?v2", 60)
    assert "b" not in rows
    assert w.importer.removed == [b_id]  # b's bans are lifted through the importer
    assert rows["mine"].id == mine  # a D-Bus source is never removed by the config


async def test_reconcile_takes_over_a_dbus_source_of_a_declared_name(w: World) -> None:
    sid = await w.service.add_source("drop", URL, True)
    counts = await w.service.reconcile([BlocklistSource(name="drop", url=URL)])
    assert counts["changed"] == 1
    assert (await w.row(sid)).managed == "config"


async def test_reconcile_leaves_a_feeds_source_alone(w: World) -> None:
    sid = await w.service.register_feed("crowdsec", "https://lapi.example.org/", lambda: None)
    counts = await w.service.reconcile([BlocklistSource(name="crowdsec", url=URL)])
    assert counts == {"added": 0, "changed": 0, "removed": 0}
    row = await w.row(sid)
    assert (row.managed, row.url) == ("crowdsec", "https://lapi.example.org/")


async def test_reconcile_refuses_a_bad_url_by_name(w: World) -> None:
    with pytest.raises(InvalidArgument, match="only http, https and file URLs are allowed"):
        await w.service.reconcile([BlocklistSource(name="a", url="gopher://x")])


# ---- scheduling --------------------------------------------------------------------


async def test_import_due_follows_each_sources_interval(w: World) -> None:
    hourly = await w.service.add_source("hourly", URL, True)
    default = await w.service.add_source("default", URL, True)
    off = await w.service.add_source("off", URL, False)
    await w.service.register_feed("crowdsec", "https://lapi.example.org/", lambda: [b""])
    await w.service.update_source(hourly, {"interval": ("x", 3600)})

    first = await w.service.import_due(86400)  # never run: all enabled ones are due
    assert sorted(sid for sid, _ in first) == [hourly, default]
    assert off not in [sid for sid, _ in w.importer.imports]

    w.clock[0] += 1800
    assert await w.service.import_due(86400) == []
    w.clock[0] += 1800
    assert [sid for sid, _ in await w.service.import_due(86400)] == [hourly]
    w.clock[0] += 86400
    assert sorted(sid for sid, _ in await w.service.import_due(86400)) == [hourly, default]


async def test_shortest_interval_is_the_smallest_enabled_own_interval(w: World) -> None:
    assert await w.service.shortest_interval() == 0
    a = await w.service.add_source("a", URL, True)
    b = await w.service.add_source("b", URL, False)
    await w.service.update_source(a, {"interval": ("x", 7200)})
    await w.service.update_source(b, {"interval": ("x", 60)})  # disabled: not counted
    assert await w.service.shortest_interval() == 7200


# ---- one import per source at a time ----------------------------------------------


async def test_a_concurrent_caller_gets_the_running_imports_result(w: World) -> None:
    sid = await w.service.add_source("drop", URL, True)
    other = await w.service.add_source("other", URL, True)
    w.importer.gate = asyncio.Event()
    async with asyncio.timeout(DEADLINE):
        first = asyncio.create_task(w.service.import_source(sid))
        await w.importer.entered.wait()
        second = asyncio.create_task(w.service.import_source(sid))
        third = asyncio.create_task(w.service.import_source(other))  # another source
        while len(w.importer.imports) < 2:
            w.importer.entered.clear()
            await w.importer.entered.wait()
        w.importer.gate.set()
        a, b, c = await asyncio.gather(first, second, third)
    assert a is b  # one run, one result for both callers
    assert c is not a
    assert [s for s, _ in w.importer.imports] == [sid, other]
    w.importer.gate = None
    again = await w.service.import_source(sid)  # finished: the next call imports anew
    assert again is not a
    assert [s for s, _ in w.importer.imports] == [sid, other, sid]


async def test_remove_source_waits_for_its_running_import(w: World) -> None:
    sid = await w.service.add_source("drop", URL, True)
    w.importer.gate = asyncio.Event()
    async with asyncio.timeout(DEADLINE):
        importing = asyncio.create_task(w.service.import_source(sid))
        await w.importer.entered.wait()
        removing = asyncio.create_task(w.service.remove_source(sid))
        for _ in range(20):
            await asyncio.sleep(0)
        assert w.importer.removed == []  # the import still holds the source
        w.importer.gate.set()
        await importing
        await removing
    assert w.importer.removed == [sid]


async def test_callers_arriving_together_share_one_import(w: World) -> None:
    sid = await w.service.add_source("drop", URL, True)
    async with asyncio.timeout(DEADLINE):
        # both look the source up before either has started the import
        results = await asyncio.gather(*(w.service.import_source(sid) for _ in range(3)))
    assert [s for s, _ in w.importer.imports] == [sid]
    assert results[0] is results[1] is results[2]
