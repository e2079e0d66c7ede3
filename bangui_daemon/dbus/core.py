"""org.bangui.Daemon1: status, jails, bans, ban/unban, tasks, and the ban signals."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from dbus_fast import Variant
from dbus_fast.service import ServiceInterface

from bangui_daemon.dbus.auth import Authorizer
from bangui_daemon.dbus.names import CORE_INTERFACE, INTERFACE_VERSION
from bangui_daemon.dbus.shim import dbus_method, dbus_read_property, dbus_signal
from bangui_daemon.dbus.signals import SignalPump
from bangui_daemon.dbus.validate import OFFSET, PAGE_SIZE
from bangui_daemon.dbus.variants import variant_dict
from bangui_daemon.errors import Fail2banUnavailable
from bangui_daemon.events import (
    BanAdded,
    BanRemoved,
    BansChanged,
    PropertiesChanged,
    TaskFinished,
)
from bangui_daemon.models import NO_GEO, ActiveBan, GeoFields
from bangui_daemon.services.bans import BanService
from bangui_daemon.services.daemon_state import DaemonState
from bangui_daemon.services.status import StatusService
from bangui_daemon.services.tasks import TaskService

T = TypeVar("T")
GeoLookup = Callable[[str], GeoFields]

# A slow fail2ban must never hold a D-Bus caller for long.
FAIL2BAN_CALL_BOUND = 15.0


async def bounded(call: Awaitable[T], seconds: float = FAIL2BAN_CALL_BOUND) -> T:
    """Await `call`, turning a hang into Fail2banUnavailable."""
    try:
        return await asyncio.wait_for(call, seconds)
    except TimeoutError:
        raise Fail2banUnavailable(f"fail2ban did not answer within {seconds:g} s") from None


def ban_record(ban: ActiveBan, origin: str, geo: GeoFields) -> dict[str, Variant]:
    """One ListBans entry with the contract's field types."""
    return {
        "jail": Variant("s", ban.jail),
        "ip": Variant("s", ban.ip),
        "timeofban": Variant("x", ban.timeofban),
        "bantime": Variant("x", ban.bantime),
        "expires": Variant("x", ban.expires),
        "bancount": Variant("u", 1),
        "origin": Variant("s", origin),
        "country_code": Variant("s", geo.country_code),
        "asn": Variant("s", geo.asn),
        "org": Variant("s", geo.org),
    }


class CoreInterface(ServiceInterface):
    """The core interface; thin: validate, call a service, shape the answer."""

    def __init__(
        self,
        state: DaemonState,
        bans: BanService,
        tasks: TaskService,
        status: StatusService,
        auth: Authorizer,
        geo: GeoLookup = lambda _ip: NO_GEO,
    ) -> None:
        super().__init__(CORE_INTERFACE)
        self._state = state
        self._bans = bans
        self._tasks = tasks
        self._status = status
        self._auth = auth
        self._geo = geo

    def connect_signals(self, pump: SignalPump) -> None:
        """Route the events this interface announces through the paced pump."""
        pump.on(BanAdded, lambda e: self.ban_added(e.jail, e.ip, e.timeofban, e.bantime))
        pump.on(BanRemoved, lambda e: self.ban_removed(e.jail, e.ip))
        pump.on(BansChanged, lambda e: self.bans_changed(e.added, e.removed))
        pump.on(TaskFinished, lambda e: self.task_finished(e.name, e.status, e.details))
        pump.on(PropertiesChanged, self._properties_changed)

    def _properties_changed(self, event: PropertiesChanged) -> None:
        if event.interface == "core":
            self.emit_properties_changed(dict(event.values))

    # ---- properties -------------------------------------------------------

    @dbus_read_property("Version", "s")
    def version(self) -> str:
        return self._state.version

    @dbus_read_property("InterfaceVersion", "s")
    def interface_version(self) -> str:
        return INTERFACE_VERSION

    @dbus_read_property("State", "s")
    def state(self) -> str:
        return self._state.state

    @dbus_read_property("Fail2banConnected", "b")
    def fail2ban_connected(self) -> bool:
        return self._state.fail2ban_connected

    @dbus_read_property("Fail2banVersion", "s")
    def fail2ban_version(self) -> str:
        return self._state.fail2ban_version

    @dbus_read_property("StartedAt", "x")
    def started_at(self) -> int:
        return self._state.started_at

    # ---- methods ----------------------------------------------------------

    @dbus_method("GetStatus", returns="a{sv}")
    async def get_status(self) -> dict[str, Variant]:
        s = await self._status.status()
        return {
            "version": Variant("s", s.version),
            "state": Variant("s", s.state),
            "fail2ban_connected": Variant("b", s.fail2ban_connected),
            "fail2ban_version": Variant("s", s.fail2ban_version),
            "jails": Variant("as", s.jails),
            "active_bans": Variant("u", s.active_bans),
            "archived_events": Variant("x", s.archived_events),
            "last_history_sync": Variant("x", s.last_history_sync),
            "geo_cache_entries": Variant("x", s.geo_cache_entries),
            "started_at": Variant("x", s.started_at),
            "uptime": Variant("x", s.uptime),
        }

    @dbus_method("ListJails", returns="aa{sv}")
    async def list_jails(self) -> list[dict[str, Variant]]:
        return [
            {
                "name": Variant("s", j.name),
                "currently_banned": Variant("u", j.currently_banned),
                "total_banned": Variant("u", j.total_banned),
                "currently_failed": Variant("u", j.currently_failed),
                "total_failed": Variant("u", j.total_failed),
            }
            for j in self._bans.jails()
        ]

    @dbus_method(
        "ListBans",
        args=("s", "u", "u"),
        returns="aa{sv}u",
        ranges={"offset": OFFSET, "limit": PAGE_SIZE},
    )
    async def list_bans(self, jail: str, offset: int, limit: int) -> list[Any]:
        page, total = self._bans.list_bans(jail, offset, limit)
        records = [ban_record(b, self._bans.origin(b.jail), self._geo(b.ip)) for b in page]
        return [records, total]

    @dbus_method("BanIp", args=("s", "s"), returns="b")
    async def ban_ip(self, jail: str, ip: str) -> bool:
        await self._auth.require_admin("BanIp")
        return await bounded(self._bans.ban_ip(jail, ip))

    @dbus_method("UnbanIp", args=("s", "s"), returns="u")
    async def unban_ip(self, jail: str, ip: str) -> int:
        await self._auth.require_admin("UnbanIp")
        return len(await bounded(self._bans.unban_ip(jail, ip)))

    @dbus_method("ListTasks", returns="aa{sv}")
    async def list_tasks(self) -> list[dict[str, Variant]]:
        return [
            {
                "name": Variant("s", t.name),
                "interval": Variant("x", max(1, round(t.interval))),
                "interval_seconds": Variant("d", float(t.interval)),
                "running": Variant("b", t.running),
                "last_run": Variant("x", t.last_run),
                "last_status": Variant("s", t.last_status),
                "next_run": Variant("x", t.next_run),
                "runs": Variant("x", t.runs),
                "failures": Variant("x", t.failures),
            }
            for t in self._tasks.list_tasks()
        ]

    @dbus_method("RunTask", args=("s",), returns="a{sv}")
    async def run_task(self, name: str) -> dict[str, Variant]:
        await self._auth.require_admin("RunTask")
        status, result = await self._tasks.run_task(name)
        return variant_dict({"name": name, "status": status, **result})

    # ---- signals ----------------------------------------------------------

    @dbus_signal("BanAdded", "ssxx")
    def ban_added(self, jail: str, ip: str, timeofban: int, bantime: int) -> list[Any]:
        return [jail, ip, timeofban, bantime]

    @dbus_signal("BanRemoved", "ss")
    def ban_removed(self, jail: str, ip: str) -> list[Any]:
        return [jail, ip]

    @dbus_signal("BansChanged", "uu")
    def bans_changed(self, added: int, removed: int) -> list[Any]:
        return [added, removed]

    @dbus_signal("TaskFinished", "ssa{sv}")
    def task_finished(self, name: str, status: str, details: Any) -> list[Any]:
        return [name, status, variant_dict(details)]
