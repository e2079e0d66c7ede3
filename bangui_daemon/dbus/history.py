"""org.bangui.Daemon1.History: the archive's events, per address, over time, ranked."""

from __future__ import annotations

from typing import Any

from dbus_fast import Variant
from dbus_fast.service import ServiceInterface

from bangui_daemon.dbus.names import HISTORY_INTERFACE
from bangui_daemon.dbus.shim import dbus_method, dbus_signal
from bangui_daemon.dbus.signals import SignalPump
from bangui_daemon.dbus.validate import BUCKET, PAGE, PAGE_SIZE, TIME
from bangui_daemon.events import HistorySynced
from bangui_daemon.services.history import HistoryEvent, HistoryService


def event_record(e: HistoryEvent) -> dict[str, Variant]:
    """One history event with the contract's field types."""
    return {
        "action": Variant("s", e.action),
        "jail": Variant("s", e.jail),
        "ip": Variant("s", e.ip),
        "timeofban": Variant("x", e.timeofban),
        "bancount": Variant("u", max(e.bancount, 0)),
        "bantime": Variant("x", e.bantime),
        "origin": Variant("s", e.origin),
        "country_code": Variant("s", e.country_code),
        "asn": Variant("s", e.asn),
        "org": Variant("s", e.org),
        "failures": Variant("u", max(e.failures, 0)),
        "matches": Variant("as", e.matches),
    }


class HistoryInterface(ServiceInterface):
    """Read-only queries of the archive."""

    def __init__(self, history: HistoryService) -> None:
        super().__init__(HISTORY_INTERFACE)
        self._history = history

    def connect_signals(self, pump: SignalPump) -> None:
        pump.on(HistorySynced, lambda e: self.history_synced(e.new_events))

    @dbus_method(
        "GetHistory",
        args=("a{sv}", "u", "u"),
        returns="aa{sv}u",
        ranges={"filter_": {"since": TIME, "until": TIME}, "page": PAGE, "page_size": PAGE_SIZE},
    )
    async def get_history(
        self, filter_: dict[str, Variant], page: int, page_size: int
    ) -> list[Any]:
        typed = {key: (value.signature, value.value) for key, value in filter_.items()}
        events, total = await self._history.history(typed, page, page_size)
        return [[event_record(e) for e in events], total]

    @dbus_method("GetIpHistory", args=("s",), returns="a{sv}")
    async def get_ip_history(self, ip: str) -> dict[str, Variant]:
        h = await self._history.ip_history(ip)
        return {
            "ip": Variant("s", h.ip),
            "total_bans": Variant("u", h.total_bans),
            "first_seen": Variant("x", h.first_seen),
            "last_seen": Variant("x", h.last_seen),
            "jails": Variant("as", h.jails),
            "country_code": Variant("s", h.country_code),
            "asn": Variant("s", h.asn),
            "org": Variant("s", h.org),
            "events": Variant("aa{sv}", [event_record(e) for e in h.events]),
        }

    @dbus_method(
        "GetTimeline",
        args=("x", "x"),
        returns="a(xu)",
        ranges={"since": TIME, "bucket_seconds": BUCKET},
    )
    async def get_timeline(self, since: int, bucket_seconds: int) -> list[list[int]]:
        return [
            [start, count] for start, count in await self._history.timeline(since, bucket_seconds)
        ]

    @dbus_method(
        "GetTop", args=("s", "x", "u"), returns="a(su)", ranges={"since": TIME, "limit": PAGE_SIZE}
    )
    async def get_top(self, dimension: str, since: int, limit: int) -> list[list[object]]:
        return [[key, count] for key, count in await self._history.top(dimension, since, limit)]

    @dbus_signal("HistorySynced", "u")
    def history_synced(self, new_events: int) -> int:
        return new_events
