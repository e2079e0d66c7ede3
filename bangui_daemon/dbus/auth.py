"""Who is calling: the admin check done by the daemon itself, behind the bus policy.

dbus-fast does not hand the incoming Message to method handlers, so a message
handler stores it in a ContextVar before dispatch (tasks copy the context, so each
handler sees its own call). The sender's uid and groups come from the bus
(`GetConnectionCredentials`), never from anything the caller says about itself.
"""

from __future__ import annotations

import contextvars
import grp
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from bangui_daemon.errors import AccessDenied

log = structlog.get_logger(__name__)

_current_message: contextvars.ContextVar[Message | None] = contextvars.ContextVar(
    "bangui_current_message", default=None
)


def remember_message(message: Message) -> None:
    """Message handler: remember the method call being dispatched (returns None)."""
    if message.message_type == MessageType.METHOD_CALL:
        _current_message.set(message)


def current_sender() -> str | None:
    """Unique bus name of the caller of the method now running."""
    message = _current_message.get()
    return None if message is None else message.sender


@dataclass(frozen=True)
class Caller:
    sender: str
    uid: int
    gids: frozenset[int]
    pid: int | None


class Authorizer:
    """Checks callers against root and the configured admin group."""

    def __init__(self, bus: MessageBus, admin_group: Callable[[], str]) -> None:
        self._bus = bus
        self._admin_group = admin_group
        # Unique names are never reused on a bus and credentials are fixed at connect.
        self._cache: dict[str, Caller] = {}

    async def caller(self) -> Caller:
        """Return the identity of the current caller as the bus daemon knows it."""
        sender = current_sender()
        if not sender:
            raise AccessDenied("the caller could not be identified")
        cached = self._cache.get(sender)
        if cached is not None:
            return cached
        reply = await self._bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="GetConnectionCredentials",
                signature="s",
                body=[sender],
            )
        )
        if reply is None or reply.message_type == MessageType.ERROR:
            raise AccessDenied("the caller's credentials could not be read from the bus")
        creds = reply.body[0]
        uid = int(creds["UnixUserID"].value)
        gids = (
            frozenset(int(g) for g in creds["UnixGroupIDs"].value)
            if "UnixGroupIDs" in creds
            else frozenset()
        )
        pid = int(creds["ProcessID"].value) if "ProcessID" in creds else None
        caller = Caller(sender, uid, gids, pid)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[sender] = caller
        return caller

    async def require_admin(self, action: str) -> Caller:
        """Raise AccessDenied unless the caller is root or in the admin group."""
        caller = await self.caller()
        if caller.uid == 0:
            return caller
        group = self._admin_group()
        try:
            admin_gid = grp.getgrnam(group).gr_gid
        except KeyError:
            admin_gid = None
        if admin_gid is not None and admin_gid in caller.gids:
            return caller
        log.warning("access_denied", action=action, uid=caller.uid, pid=caller.pid)
        raise AccessDenied(f"{action} needs root or membership in group {group}")
