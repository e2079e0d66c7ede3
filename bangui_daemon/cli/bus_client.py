"""A typed asyncio client of the `org.bangui.Daemon1` D-Bus contract.

Low-level `Message` calls instead of dbus-fast's dynamic proxy objects: the proxies
need introspection at run time and defeat `mypy --strict`. Every reply is unwrapped
into plain Python values (`Variant`s removed, structs as tuples), so callers such as
`banguictl` never see a dbus-fast type. Works with dbus-fast 1.84 (Debian bookworm)
and 5.x (PyPI).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, cast

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from bangui_daemon.dbus.names import (
    BLOCKLISTS_INTERFACE,
    BUS_NAME,
    CORE_INTERFACE,
    GEO_INTERFACE,
    HISTORY_INTERFACE,
    OBJECT_PATH,
)
from bangui_daemon.dbus.transport import tolerate_full_send_buffer
from bangui_daemon.dbus.variants import simple_variant
from bangui_daemon.errors import BanguiError

IFACE_PROPERTIES: Final = "org.freedesktop.DBus.Properties"
INTERFACES: Final = (CORE_INTERFACE, HISTORY_INTERFACE, BLOCKLISTS_INTERFACE, GEO_INTERFACE)

ERROR_SERVICE_UNKNOWN: Final = "org.freedesktop.DBus.Error.ServiceUnknown"
ERROR_NAME_HAS_NO_OWNER: Final = "org.freedesktop.DBus.Error.NameHasNoOwner"
ERROR_NO_SERVER: Final = "org.freedesktop.DBus.Error.NoServer"
ERROR_TIMEOUT: Final = "org.freedesktop.DBus.Error.Timeout"
ERROR_DISCONNECTED: Final = "org.freedesktop.DBus.Error.Disconnected"
ERROR_FAILED: Final = "org.freedesktop.DBus.Error.Failed"

DEFAULT_TIMEOUT: Final = 30.0
"""Seconds to wait for an ordinary reply: every read method answers from sqlite/cache."""
LONG_TIMEOUT: Final = 900.0
"""Seconds for RunTask and imports, which download and ban in batches before replying."""

MATCH_RULE: Final = f"type='signal',sender='{BUS_NAME}',path='{OBJECT_PATH}'"
DBUS_NAME: Final = "org.freedesktop.DBus"
OWNER_MATCH_RULE: Final = (
    f"type='signal',sender='{DBUS_NAME}',interface='{DBUS_NAME}',"
    f"member='NameOwnerChanged',arg0='{BUS_NAME}'"
)

Record = dict[str, object]
SignalCallback = Callable[[str, str, list[object]], None]
"""Called as `callback(interface, member, args)` with args already unwrapped."""
OwnerCallback = Callable[[bool], None]
"""Called as `callback(present)` when `org.bangui.Daemon1` gains or loses its owner."""


class DaemonError(BanguiError):
    """A D-Bus error reply, or a client-side failure given a D-Bus error name.

    `name` is the full D-Bus error name (e.g. `org.bangui.Daemon1.Error.Refused`);
    client-side failures use the standard names NoServer, Timeout and Disconnected.
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}" if message else name)
        self.name = name
        self.message = message
        self.dbus_name = name

    @property
    def short_name(self) -> str:
        """The last component of the error name, e.g. `AccessDenied`."""
        return self.name.rsplit(".", 1)[-1]

    @property
    def daemon_absent(self) -> bool:
        """True when nobody owns `org.bangui.Daemon1` (or the bus is unreachable)."""
        return self.name in (ERROR_SERVICE_UNKNOWN, ERROR_NAME_HAS_NO_OWNER, ERROR_NO_SERVER)


def unwrap(value: object) -> object:
    """Return `value` with every `Variant` replaced by its plain Python content.

    Dicts stay dicts, arrays become lists and structs become tuples, recursively, so
    results can go straight to `json.dumps` (except `ay`, which stays `bytes`).
    """
    if isinstance(value, Variant):
        return unwrap(value.value)
    if isinstance(value, dict):
        return {unwrap(k): unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    if isinstance(value, tuple):
        return tuple(unwrap(v) for v in value)
    return value


def to_variant(value: object) -> Variant:
    """Wrap a plain value for an `a{sv}` argument (filters, source changes): the
    types of `simple_variant`; anything else is a programming error."""
    if isinstance(value, Variant):
        return value
    wrapped = simple_variant(value)
    if wrapped is None:
        raise TypeError(f"cannot send a {type(value).__name__} in an a{{sv}} argument")
    return wrapped


def _as_record(value: object) -> Record:
    unwrapped = unwrap(value)
    if not isinstance(unwrapped, dict):
        raise DaemonError(ERROR_FAILED, f"expected a dictionary, got {type(value).__name__}")
    return {str(k): v for k, v in unwrapped.items()}


def _as_records(value: object) -> list[Record]:
    if not isinstance(value, list):
        raise DaemonError(ERROR_FAILED, f"expected a list, got {type(value).__name__}")
    return [_as_record(item) for item in value]


def _as_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DaemonError(ERROR_FAILED, f"expected an integer, got {type(value).__name__}")
    return value


def _pairs(value: object) -> list[tuple[object, int]]:
    """Turn `a(xu)`/`a(su)` (lists or tuples, depending on the dbus-fast version) into pairs."""
    if not isinstance(value, list):
        raise DaemonError(ERROR_FAILED, f"expected a list, got {type(value).__name__}")
    pairs: list[tuple[object, int]] = []
    for item in value:
        if not isinstance(item, list | tuple) or len(item) != 2:
            raise DaemonError(ERROR_FAILED, "expected a list of (key, count) structs")
        pairs.append((unwrap(item[0]), _as_int(item[1])))
    return pairs


def _error_text(body: Sequence[object]) -> str:
    if body and isinstance(body[0], str):
        return body[0]
    return ""


class DaemonClient:
    """One connection to the bus and typed wrappers of every contract method.

    Use as `client = await DaemonClient().connect(address)` or
    `async with DaemonClient() as client:`; `close()` disconnects.
    """

    def __init__(
        self, *, timeout: float = DEFAULT_TIMEOUT, long_timeout: float = LONG_TIMEOUT
    ) -> None:
        self.timeout = timeout
        self.long_timeout = long_timeout
        self._bus: MessageBus | None = None
        self._address_label = "the system bus"
        self._callbacks: list[SignalCallback] = []
        self._owner_callbacks: list[OwnerCallback] = []
        self._match_added = False

    # --- connection -------------------------------------------------------------
    async def connect(self, address: str | None = None) -> DaemonClient:
        """Connect to the bus: None = system bus, "session", "system", or an address.

        None honours DBUS_SYSTEM_BUS_ADDRESS (as every D-Bus client does). Raises
        DaemonError(NoServer) when the bus cannot be reached.
        """
        kwargs: dict[str, Any]
        if address is None or address == "system":
            kwargs = {"bus_type": BusType.SYSTEM}
            env = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
            self._address_label = f"the system bus ({env})" if env else "the system bus"
        elif address == "session":
            kwargs = {"bus_type": BusType.SESSION}
            self._address_label = "the session bus"
        else:
            kwargs = {"bus_address": address}
            self._address_label = address
        try:
            # dbus-fast 1.84 opens the socket in the constructor, 5.x in connect():
            # both are inside this try.
            bus = MessageBus(**kwargs)
            self._bus = await asyncio.wait_for(bus.connect(), self.timeout)
        except TimeoutError as exc:
            raise DaemonError(
                ERROR_NO_SERVER, f"timed out connecting to {self._address_label}"
            ) from exc
        except Exception as exc:  # OSError, dbus-fast's InvalidAddressError, AuthError, ...
            raise DaemonError(
                ERROR_NO_SERVER, f"cannot connect to {self._address_label}: {exc}"
            ) from exc
        tolerate_full_send_buffer(self._bus)  # big requests (LookupIps) must not drop it
        self._bus.add_message_handler(self._on_message)
        return self

    @property
    def address_label(self) -> str:
        """A readable name of the bus this client is connected to, for messages."""
        return self._address_label

    def close(self) -> None:
        """Disconnect from the bus; safe to call twice or before connect()."""
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.remove_message_handler(self._on_message)
            bus.disconnect()

    async def wait_closed(self) -> None:
        """Return once the bus connection has ended (bus gone, or close() called)."""
        if self._bus is None:
            return
        # untyped in dbus-fast 5.2 (and 1.84): give it its real type here
        waiter = cast(Callable[[], Awaitable[None]], self._bus.wait_for_disconnect)
        # it re-raises the cause of an unexpected disconnect: ended is ended either way
        with contextlib.suppress(Exception):
            await waiter()

    async def __aenter__(self) -> DaemonClient:
        if self._bus is None:
            await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- low level ----------------------------------------------------------------
    async def call(
        self,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[object] = (),
        *,
        destination: str = BUS_NAME,
        path: str = OBJECT_PATH,
        reply_timeout: float | None = None,
    ) -> list[object]:
        """Call one method and return its unwrapped out-args as a list.

        An error reply, a timeout or a lost connection raises DaemonError.
        """
        if self._bus is None:
            raise DaemonError(ERROR_DISCONNECTED, "not connected (call connect() first)")
        message = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
        )
        wait = self.timeout if reply_timeout is None else reply_timeout
        try:
            reply = await asyncio.wait_for(self._bus.call(message), wait)
        except TimeoutError as exc:
            raise DaemonError(
                ERROR_TIMEOUT, f"{member} did not answer within {wait:g} seconds"
            ) from exc
        except DaemonError:
            raise
        except Exception as exc:  # the connection dropped (EOFError, OSError, ...)
            raise DaemonError(ERROR_DISCONNECTED, f"{member} failed: {exc}") from exc
        if reply is None:  # dbus-fast 1.84 types call() as Optional
            raise DaemonError(ERROR_FAILED, f"{member} got no reply")
        if reply.message_type is MessageType.ERROR:
            raise DaemonError(reply.error_name or ERROR_FAILED, _error_text(reply.body))
        return [unwrap(arg) for arg in reply.body]

    async def _call1(
        self,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[object] = (),
        reply_timeout: float | None = None,
    ) -> object:
        out = await self.call(interface, member, signature, body, reply_timeout=reply_timeout)
        if len(out) != 1:
            raise DaemonError(ERROR_FAILED, f"{member} returned {len(out)} values, expected 1")
        return out[0]

    async def _call_page(
        self, interface: str, member: str, signature: str, body: Sequence[object]
    ) -> tuple[list[Record], int]:
        out = await self.call(interface, member, signature, body)
        if len(out) != 2:
            raise DaemonError(ERROR_FAILED, f"{member} returned {len(out)} values, expected 2")
        return _as_records(out[0]), _as_int(out[1])

    # --- properties -----------------------------------------------------------------
    async def get_all_properties(self, interface: str = CORE_INTERFACE) -> Record:
        """org.freedesktop.DBus.Properties.GetAll, unwrapped."""
        return _as_record(await self._call1(IFACE_PROPERTIES, "GetAll", "s", [interface]))

    # --- bus helpers ------------------------------------------------------------------
    async def daemon_running(self) -> bool:
        """True when some connection owns `org.bangui.Daemon1` on this bus."""
        owned = await self._bus_call1("NameHasOwner", "s", [BUS_NAME])
        return bool(owned)

    async def _bus_call1(self, member: str, signature: str, body: Sequence[object]) -> object:
        out = await self.call(
            DBUS_NAME,
            member,
            signature,
            body,
            destination=DBUS_NAME,
            path="/org/freedesktop/DBus",
        )
        return out[0] if out else None

    # --- signals ------------------------------------------------------------------------
    async def subscribe(self, callback: SignalCallback) -> None:
        """Deliver every signal of the daemon's object to `callback(iface, member, args)`.

        One AddMatch (sender + path) covers all four interfaces and PropertiesChanged;
        the bus resolves the well-known sender name, so signals of a restarted daemon
        keep arriving.
        """
        if self._bus is None:
            raise DaemonError(ERROR_DISCONNECTED, "not connected (call connect() first)")
        self._callbacks.append(callback)
        if not self._match_added:
            await self.call(
                "org.freedesktop.DBus",
                "AddMatch",
                "s",
                [MATCH_RULE],
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
            )
            self._match_added = True

    async def unsubscribe(self, callback: SignalCallback) -> None:
        """Stop delivering signals to `callback`; drop the match rule after the last one."""
        if callback in self._callbacks:
            self._callbacks.remove(callback)
        if not self._callbacks and self._match_added and self._bus is not None:
            self._match_added = False
            await self.call(
                "org.freedesktop.DBus",
                "RemoveMatch",
                "s",
                [MATCH_RULE],
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
            )

    async def watch_owner(self, callback: OwnerCallback) -> None:
        """Call `callback(present)` whenever the daemon joins or leaves the bus.

        A panel or a notification agent shows "offline" at once this way, instead of
        finding out at its next call.
        """
        if self._bus is None:
            raise DaemonError(ERROR_DISCONNECTED, "not connected (call connect() first)")
        if not self._owner_callbacks:
            await self._bus_call1("AddMatch", "s", [OWNER_MATCH_RULE])
        self._owner_callbacks.append(callback)

    def _on_message(self, msg: Message) -> bool | None:
        """Route the daemon's signals to subscribers; never claims the message."""
        if (
            msg.message_type is MessageType.SIGNAL
            and msg.member == "NameOwnerChanged"
            and msg.sender == DBUS_NAME
            and len(msg.body) == 3
            and msg.body[0] == BUS_NAME
        ):
            for owner_callback in list(self._owner_callbacks):
                owner_callback(bool(msg.body[2]))
            return None
        if (
            msg.message_type is MessageType.SIGNAL
            and msg.path == OBJECT_PATH
            and msg.interface is not None
            and msg.member is not None
            and (msg.interface in INTERFACES or msg.interface == IFACE_PROPERTIES)
        ):
            args = [unwrap(arg) for arg in msg.body]
            for callback in list(self._callbacks):
                callback(msg.interface, msg.member, args)
        return None

    # --- org.bangui.Daemon1 ---------------------------------------------------------------
    async def get_status(self) -> Record:
        """GetStatus: version, fail2ban state, jails, counters."""
        return _as_record(await self._call1(CORE_INTERFACE, "GetStatus"))

    async def list_jails(self) -> list[Record]:
        """ListJails: one record per fail2ban jail with its counters."""
        return _as_records(await self._call1(CORE_INTERFACE, "ListJails"))

    async def list_bans(
        self, jail: str = "", offset: int = 0, limit: int = 100
    ) -> tuple[list[Record], int]:
        """ListBans: one page of current bans ("" = every jail) and the total."""
        return await self._call_page(CORE_INTERFACE, "ListBans", "suu", [jail, offset, limit])

    async def ban_ip(self, jail: str, ip: str) -> bool:
        """BanIp (admin): True when the address was newly banned."""
        return bool(await self._call1(CORE_INTERFACE, "BanIp", "ss", [jail, ip]))

    async def unban_ip(self, jail: str, ip: str) -> int:
        """UnbanIp (admin, jail "" = every jail): the number of jails it left."""
        return _as_int(await self._call1(CORE_INTERFACE, "UnbanIp", "ss", [jail, ip]))

    async def list_tasks(self) -> list[Record]:
        """ListTasks: the scheduler's jobs with their last and next runs."""
        return _as_records(await self._call1(CORE_INTERFACE, "ListTasks"))

    async def run_task(self, name: str) -> Record:
        """RunTask (admin): run a task now and return its result once it finished."""
        return _as_record(
            await self._call1(
                CORE_INTERFACE, "RunTask", "s", [name], reply_timeout=self.long_timeout
            )
        )

    # --- org.bangui.Daemon1.History ---------------------------------------------------------
    async def get_history(
        self, filters: Mapping[str, object] | None = None, page: int = 1, page_size: int = 50
    ) -> tuple[list[Record], int]:
        """GetHistory: one page of archived events (newest first) and the total.

        `filters` keys: since/until (int), jail, ip, origin, country_code, action (str).
        """
        wrapped = {key: to_variant(value) for key, value in (filters or {}).items()}
        return await self._call_page(
            HISTORY_INTERFACE, "GetHistory", "a{sv}uu", [wrapped, page, page_size]
        )

    async def get_ip_history(self, ip: str) -> Record:
        """GetIpHistory: everything the archive knows about one address."""
        return _as_record(await self._call1(HISTORY_INTERFACE, "GetIpHistory", "s", [ip]))

    async def get_timeline(self, since: int, bucket_seconds: int) -> list[tuple[int, int]]:
        """GetTimeline: (bucket start, ban count) pairs, oldest first."""
        raw = await self._call1(HISTORY_INTERFACE, "GetTimeline", "xx", [since, bucket_seconds])
        return [(_as_int(start), count) for start, count in _pairs(raw)]

    async def get_top(
        self, dimension: str, since: int = 0, limit: int = 10
    ) -> list[tuple[str, int]]:
        """GetTop: (key, count) pairs for jail/country/asn/ip, largest first."""
        raw = await self._call1(HISTORY_INTERFACE, "GetTop", "sxu", [dimension, since, limit])
        return [(str(key), count) for key, count in _pairs(raw)]

    # --- org.bangui.Daemon1.Blocklists ------------------------------------------------------
    async def list_sources(self) -> list[Record]:
        """ListSources: the configured blocklist sources."""
        return _as_records(await self._call1(BLOCKLISTS_INTERFACE, "ListSources"))

    async def add_source(self, name: str, url: str, enabled: bool = True) -> int:
        """AddSource (admin): the new source's id."""
        return _as_int(
            await self._call1(BLOCKLISTS_INTERFACE, "AddSource", "ssb", [name, url, enabled])
        )

    async def update_source(self, source_id: int, changes: Mapping[str, str | bool | int]) -> None:
        """UpdateSource (admin): change name, url, enabled, interval, max_entries."""
        wrapped = {key: to_variant(value) for key, value in changes.items()}
        await self.call(BLOCKLISTS_INTERFACE, "UpdateSource", "ua{sv}", [source_id, wrapped])

    async def remove_source(self, source_id: int) -> None:
        """RemoveSource (admin): also unbans what only this source listed."""
        await self.call(
            BLOCKLISTS_INTERFACE,
            "RemoveSource",
            "u",
            [source_id],
            reply_timeout=self.long_timeout,  # unbans a whole list, one address at a time
        )

    async def import_source(self, source_id: int) -> Record:
        """ImportSource (admin): download and apply one source; the run's result."""
        return _as_record(
            await self._call1(
                BLOCKLISTS_INTERFACE,
                "ImportSource",
                "u",
                [source_id],
                reply_timeout=self.long_timeout,
            )
        )

    async def import_all(self) -> list[Record]:
        """ImportAll (admin): one result per enabled source."""
        return _as_records(
            await self._call1(BLOCKLISTS_INTERFACE, "ImportAll", reply_timeout=self.long_timeout)
        )

    async def list_import_runs(
        self, source_id: int = 0, page: int = 1, page_size: int = 50
    ) -> tuple[list[Record], int]:
        """ListImportRuns: one page of import runs (source 0 = all) and the total."""
        return await self._call_page(
            BLOCKLISTS_INTERFACE, "ListImportRuns", "uuu", [source_id, page, page_size]
        )

    async def preview_source(self, url: str) -> Record:
        """PreviewSource (admin): a dry run of a list; nothing is banned or stored."""
        return _as_record(
            await self._call1(
                BLOCKLISTS_INTERFACE, "PreviewSource", "s", [url], reply_timeout=self.long_timeout
            )
        )

    # --- org.bangui.Daemon1.Geo ---------------------------------------------------------------
    async def lookup_ip(self, ip: str) -> Record:
        """LookupIp: country, ASN and organisation of one address."""
        return _as_record(await self._call1(GEO_INTERFACE, "LookupIp", "s", [ip]))

    async def lookup_ips(self, ips: Sequence[str]) -> list[Record]:
        """LookupIps: one answer per address, in the order asked."""
        return _as_records(await self._call1(GEO_INTERFACE, "LookupIps", "as", [list(ips)]))
