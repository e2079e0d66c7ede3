"""org.bangui.Daemon1.Blocklists: sources, imports, previews, import runs."""

from __future__ import annotations

from typing import Any

from dbus_fast import Variant
from dbus_fast.service import ServiceInterface

from bangui_daemon.dbus.auth import Authorizer
from bangui_daemon.dbus.names import BLOCKLISTS_INTERFACE
from bangui_daemon.dbus.shim import dbus_method, dbus_signal
from bangui_daemon.dbus.signals import SignalPump
from bangui_daemon.dbus.validate import ID, PAGE, PAGE_SIZE
from bangui_daemon.events import ImportFinished, ImportProgress, ImportStarted
from bangui_daemon.services.blocklists import BlocklistService, ImportOutcome, RunRow


def outcome_record(o: ImportOutcome, source_id: int | None = None) -> dict[str, Variant]:
    record = {
        "status": Variant("s", o.status),
        "run_id": Variant("u", o.run_id),
        "content_hash": Variant("s", o.content_hash),
        "entries": Variant("u", o.entries),
        "added": Variant("u", o.added),
        "removed": Variant("u", o.removed),
        "invalid": Variant("u", o.invalid),
        "refused": Variant("u", o.refused),
        "error": Variant("s", o.error),
        "reapplied": Variant("u", o.reapplied),
    }
    if source_id is not None:
        record["source_id"] = Variant("u", source_id)
    return record


def run_record(r: RunRow) -> dict[str, Variant]:
    return {
        "run_id": Variant("u", r.id),
        "source_id": Variant("u", r.source_id),
        "content_hash": Variant("s", r.content_hash),
        "status": Variant("s", r.status),
        "started_at": Variant("x", r.started_at),
        "finished_at": Variant("x", r.finished_at),
        "entries": Variant("u", r.entries),
        "imported": Variant("u", r.imported),
        "removed": Variant("u", r.removed),
        "invalid": Variant("u", r.invalid),
        "refused": Variant("u", r.refused),
        "error": Variant("s", r.error),
    }


class BlocklistsInterface(ServiceInterface):
    def __init__(self, service: BlocklistService, auth: Authorizer) -> None:
        super().__init__(BLOCKLISTS_INTERFACE)
        self._service = service
        self._auth = auth

    def connect_signals(self, pump: SignalPump) -> None:
        pump.on(ImportStarted, lambda e: self.import_started(e.source_id, e.run_id))
        pump.on(ImportProgress, lambda e: self.import_progress(e.source_id, e.done, e.total))
        pump.on(
            ImportFinished,
            lambda e: self.import_finished(e.source_id, e.status, e.added, e.removed),
        )

    @dbus_method("ListSources", returns="aa{sv}")
    async def list_sources(self) -> list[dict[str, Variant]]:
        return [
            {
                "id": Variant("u", s.id),
                "name": Variant("s", s.name),
                "url": Variant("s", s.url),
                "enabled": Variant("b", s.enabled),
                "last_run": Variant("x", s.last_run),
                "last_status": Variant("s", s.last_status),
                "last_imported": Variant("u", s.last_imported),
                "last_error": Variant("s", s.last_error),
                "listed": Variant("u", s.listed),
                "managed": Variant("s", s.managed),
                "interval": Variant("x", s.interval),
                "max_entries": Variant("u", s.max_entries),
            }
            for s in await self._service.list_sources()
        ]

    @dbus_method("AddSource", args=("s", "s", "b"), returns="u")
    async def add_source(self, name: str, url: str, enabled: bool) -> int:
        await self._auth.require_admin("AddSource")
        return await self._service.add_source(name, url, enabled)

    @dbus_method("UpdateSource", args=("u", "a{sv}"), ranges={"source_id": ID})
    async def update_source(self, source_id: int, changes: dict[str, Variant]) -> None:
        await self._auth.require_admin("UpdateSource")
        typed = {k: (v.signature, v.value) for k, v in changes.items()}
        await self._service.update_source(source_id, typed)

    @dbus_method("RemoveSource", args=("u",), ranges={"source_id": ID})
    async def remove_source(self, source_id: int) -> None:
        await self._auth.require_admin("RemoveSource")
        await self._service.remove_source(source_id)

    @dbus_method("ImportSource", args=("u",), returns="a{sv}", ranges={"source_id": ID})
    async def import_source(self, source_id: int) -> dict[str, Variant]:
        await self._auth.require_admin("ImportSource")
        return outcome_record(await self._service.import_source(source_id))

    @dbus_method("PreviewSource", args=("s",), returns="a{sv}")
    async def preview_source(self, url: str) -> dict[str, Variant]:
        await self._auth.require_admin("PreviewSource")
        p = await self._service.preview(url)
        return {
            "entries": Variant("u", p.entries),
            "invalid": Variant("u", p.invalid),
            "refused": Variant("u", p.refused),
            "sample": Variant("as", p.sample),
            "refused_sample": Variant("as", p.refused_sample),
            "max_entries": Variant("u", p.max_entries),
            "over_limit": Variant("b", p.entries > p.max_entries),
            "invalid_sample": Variant("as", p.invalid_sample),
            "below_min_count": Variant("u", p.below_min_count),
        }

    @dbus_method("ImportAll", returns="aa{sv}")
    async def import_all(self) -> list[dict[str, Variant]]:
        await self._auth.require_admin("ImportAll")
        return [outcome_record(o, sid) for sid, o in await self._service.import_all()]

    @dbus_method(
        "ListImportRuns",
        args=("u", "u", "u"),
        returns="aa{sv}u",
        ranges={"source_id": ID, "page": PAGE, "page_size": PAGE_SIZE},
    )
    async def list_import_runs(self, source_id: int, page: int, page_size: int) -> list[Any]:
        runs, total = await self._service.runs(source_id, page, page_size)
        return [[run_record(r) for r in runs], total]

    @dbus_signal("ImportStarted", "uu")
    def import_started(self, source_id: int, run_id: int) -> list[Any]:
        return [source_id, run_id]

    @dbus_signal("ImportProgress", "uuu")
    def import_progress(self, source_id: int, done: int, total: int) -> list[Any]:
        return [source_id, done, total]

    @dbus_signal("ImportFinished", "usuu")
    def import_finished(self, source_id: int, status: str, added: int, removed: int) -> list[Any]:
        return [source_id, status, added, removed]
