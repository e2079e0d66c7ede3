"""Who is calling, and may they: the admin check the daemon does behind the bus policy.

dbus-fast does not hand the incoming Message to method handlers, so a message
handler stores it in a ContextVar before dispatch (tasks copy the context, so each
handler sees its own call). The sender's uid and groups come from the bus
(`GetConnectionCredentials`), never from anything the caller says about itself.

How an admin method is decided, in this order:

1. uid 0 is allowed (polkit authorizes root for everything anyway; no round trip).
2. On the system bus, polkit is asked (`CheckAuthorization`, subject
   `system-bus-name`, interaction only if the caller set
   ALLOW_INTERACTIVE_AUTHORIZATION on its call) and its answer is final: yes allows;
   no, "needs authentication", an error, a malformed answer or no answer in time all
   deny. The configured admin group is passed as the detail `admin_group` for the
   shipped rules file.
3. Only when polkit is not on the bus at all (no owner, not activatable) does the
   group check decide: the caller's connection must carry the admin group's gid.

polkit is not asked on a session bus or an explicit address: nothing there stops
another process from owning `org.freedesktop.PolicyKit1` and answering yes.
"""

from __future__ import annotations

import asyncio
import contextvars
import grp
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import structlog
from dbus_fast import Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

from bangui_daemon.errors import AccessDenied

log = structlog.get_logger(__name__)

_current_message: contextvars.ContextVar[Message | None] = contextvars.ContextVar(
    "bangui_current_message", default=None
)

POLKIT_NAME: Final = "org.freedesktop.PolicyKit1"
_POLKIT_PATH: Final = "/org/freedesktop/PolicyKit1/Authority"
_POLKIT_INTERFACE: Final = "org.freedesktop.PolicyKit1.Authority"
# The bus's answers when nobody owns the name and it cannot be activated.
_POLKIT_ABSENT: Final = frozenset(
    {"org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"}
)
# A non-interactive check is answered in milliseconds; an interactive one waits for a
# person to type a password into their authentication agent.
POLKIT_TIMEOUT: Final = 10.0
POLKIT_INTERACTIVE_TIMEOUT: Final = 120.0

ACTION_PREFIX: Final = "org.bangui.Daemon1."
# Every admin method and the polkit action that guards it (polkit/org.bangui.Daemon1.policy).
ACTIONS: Final[dict[str, str]] = {
    "BanIp": ACTION_PREFIX + "manage-bans",
    "UnbanIp": ACTION_PREFIX + "manage-bans",
    "AddSource": ACTION_PREFIX + "manage-blocklists",
    "UpdateSource": ACTION_PREFIX + "manage-blocklists",
    "RemoveSource": ACTION_PREFIX + "manage-blocklists",
    "ImportSource": ACTION_PREFIX + "manage-blocklists",
    "PreviewSource": ACTION_PREFIX + "manage-blocklists",
    "ImportAll": ACTION_PREFIX + "manage-blocklists",
    "RunTask": ACTION_PREFIX + "run-tasks",
}


def remember_message(message: Message) -> None:
    """Message handler: remember the method call being dispatched (returns None)."""
    if message.message_type == MessageType.METHOD_CALL:
        _current_message.set(message)


def current_sender() -> str | None:
    """Unique bus name of the caller of the method now running."""
    message = _current_message.get()
    return None if message is None else message.sender


def _current_call_is_interactive() -> bool:
    message = _current_message.get()
    return message is not None and bool(message.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)


def _group_gid(name: str) -> int | None:
    """The gid of group *name*, None if there is none (NSS may block: run in a thread)."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


@dataclass(frozen=True)
class Caller:
    sender: str
    uid: int
    gids: frozenset[int]
    pid: int | None


class Authorizer:
    """Decides admin calls: root, else polkit when it is on the bus, else the admin group."""

    def __init__(
        self,
        bus: MessageBus,
        admin_group: Callable[[], str],
        *,
        use_polkit: bool,
        polkit_timeout: float = POLKIT_TIMEOUT,
        polkit_interactive_timeout: float = POLKIT_INTERACTIVE_TIMEOUT,
    ) -> None:
        self._bus = bus
        self._admin_group = admin_group
        self._use_polkit = use_polkit
        self._timeouts = (polkit_timeout, polkit_interactive_timeout)
        self._polkit_seen: bool | None = None  # for logging changes only
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

    async def require_admin(self, method: str) -> Caller:
        """Raise AccessDenied unless the caller may call the admin method *method*."""
        action = ACTIONS[method]
        caller = await self.caller()
        if caller.uid == 0:
            return caller
        group = self._admin_group()
        if self._use_polkit:
            verdict = await self._ask_polkit(caller, action, group)
            if verdict is not None:
                if verdict:
                    return caller
                self._deny(caller, method, "polkit")
                raise AccessDenied(f"{method} is not authorized by polkit (action {action})")
        admin_gid = await asyncio.to_thread(_group_gid, group)
        if admin_gid is not None and admin_gid in caller.gids:
            return caller
        self._deny(caller, method, "group")
        raise AccessDenied(f"{method} needs root or membership in group {group}")

    async def _ask_polkit(self, caller: Caller, action: str, group: str) -> bool | None:
        """polkit's answer; None only when polkit is not on the bus. Errors deny."""
        interactive = _current_call_is_interactive()
        subject = ["system-bus-name", {"name": Variant("s", caller.sender)}]
        request = Message(
            destination=POLKIT_NAME,
            path=_POLKIT_PATH,
            interface=_POLKIT_INTERFACE,
            member="CheckAuthorization",
            signature="(sa{sv})sa{ss}us",
            body=[subject, action, {"admin_group": group}, 1 if interactive else 0, ""],
        )
        timeout = self._timeouts[1] if interactive else self._timeouts[0]
        try:
            reply = await asyncio.wait_for(self._bus.call(request), timeout)
        except TimeoutError:
            log.warning("polkit_no_answer", action=action, timeout=timeout)
            return False
        except Exception as exc:  # noqa: BLE001 - a broken connection must deny, not crash
            log.warning("polkit_error", action=action, error=str(exc))
            return False
        return self._polkit_answer(reply, action)

    def _polkit_answer(self, reply: Message | None, action: str) -> bool | None:
        """What a CheckAuthorization reply says; anything but a clear yes denies."""
        if reply is None:
            return False
        if reply.message_type == MessageType.ERROR:
            if reply.error_name in _POLKIT_ABSENT:
                self._note_polkit(False)
                return None
            log.warning("polkit_error", action=action, error=reply.error_name)
            return False
        self._note_polkit(True)
        if reply.signature != "(bba{ss})":
            log.warning("polkit_bad_reply", action=action, signature=reply.signature)
            return False
        is_authorized = reply.body[0][0]
        return is_authorized is True

    def _note_polkit(self, present: bool) -> None:
        if self._polkit_seen is not present:
            self._polkit_seen = present
            if present:
                log.info("polkit_decides_admin_calls")
            else:
                log.info("polkit_absent_admin_group_decides", group=self._admin_group())

    @staticmethod
    def _deny(caller: Caller, method: str, by: str) -> None:
        log.warning("access_denied", method=method, by=by, uid=caller.uid, pid=caller.pid)
