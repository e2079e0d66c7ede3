"""The daemon on the bus: connect, export every interface, own the well-known name."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, cast

import structlog
from dbus_fast import BusType, NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus

from bangui_daemon.dbus.auth import Authorizer, remember_message
from bangui_daemon.dbus.blocklists import BlocklistsInterface
from bangui_daemon.dbus.core import CoreInterface
from bangui_daemon.dbus.geo import GeoInterface
from bangui_daemon.dbus.history import HistoryInterface
from bangui_daemon.dbus.names import BUS_NAME, OBJECT_PATH
from bangui_daemon.dbus.signals import SignalPump
from bangui_daemon.dbus.transport import tolerate_full_send_buffer, write_utf8_right
from bangui_daemon.errors import BanguiError
from bangui_daemon.events import EventHub
from bangui_daemon.services.bans import BanService
from bangui_daemon.services.blocklists import BlocklistService
from bangui_daemon.services.daemon_state import DaemonState
from bangui_daemon.services.geo import GeoService
from bangui_daemon.services.history import HistoryService
from bangui_daemon.services.status import StatusService
from bangui_daemon.services.tasks import TaskService

log = structlog.get_logger(__name__)


class BusUnavailable(BanguiError):
    """The bus cannot be reached, or another process owns our name."""


class Services(Protocol):
    """The services the four interfaces call (the daemon's wiring provides them)."""

    bans: BanService
    tasks: TaskService
    status: StatusService
    history: HistoryService
    blocklists: BlocklistService
    geo: GeoService


def _bus_for(where: str) -> MessageBus:
    if where == "system":  # honours DBUS_SYSTEM_BUS_ADDRESS
        return MessageBus(bus_type=BusType.SYSTEM)
    if where == "session":
        return MessageBus(bus_type=BusType.SESSION)
    return MessageBus(bus_address=where)


class DbusServer:
    """Owns the bus connection and the paced signal pump."""

    def __init__(self, bus: MessageBus, pump: SignalPump) -> None:
        self._bus = bus
        self._pump = pump

    @classmethod
    async def start(
        cls,
        where: str,
        admin_group: Callable[[], str],
        hub: EventHub,
        state: DaemonState,
        parts: Services,
    ) -> DbusServer:
        """Connect, export the four interfaces and own `org.bangui.Daemon1`."""
        bus = _bus_for(where)
        try:
            await bus.connect()
        except Exception as exc:
            raise BusUnavailable(f"cannot connect to the {where} D-Bus: {exc}") from exc
        tolerate_full_send_buffer(bus)  # large replies must not cost the connection
        write_utf8_right(bus)  # nor non-ASCII text on dbus-fast 1.84
        bus.add_message_handler(remember_message)
        # polkit only where its name is protected: see dbus/auth.py
        auth = Authorizer(bus, admin_group, use_polkit=where == "system")
        pump = SignalPump(bus)
        interfaces = (
            CoreInterface(state, parts.bans, parts.tasks, parts.status, auth, parts.geo.fields),
            HistoryInterface(parts.history),
            BlocklistsInterface(parts.blocklists, auth),
            GeoInterface(parts.geo),
        )
        for iface in interfaces:
            iface.connect_signals(pump)
            bus.export(OBJECT_PATH, iface)
        hub.subscribe(pump.publish)
        reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            bus.disconnect()
            raise BusUnavailable(f"{BUS_NAME} is already owned on the bus by another process")
        pump.start()
        return cls(bus, pump)

    async def wait_for_disconnect(self) -> None:
        """Return when the bus connection is gone (dbus-daemon died or dropped us)."""
        # Untyped in dbus-fast; a coroutine function in 5.x, a future-returning one in 1.84.
        waiter = cast(Callable[[], Awaitable[None]], self._bus.wait_for_disconnect)
        try:
            await waiter()
        except Exception:
            log.exception("dbus_connection_error")

    async def stop(self, flush_within: float, connected: bool = True) -> None:
        """Send what is queued (bounded), then leave the bus."""
        if connected:
            await self._pump.flush(flush_within)
        await self._pump.stop()
        if connected:
            self._bus.disconnect()
