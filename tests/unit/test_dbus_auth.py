"""The admin decision: root, else polkit's answer when it is on the bus, else the group.

The bus is a fake here so that polkit can be made to misbehave (error, garbage,
silence); tests/integration/test_polkit.py runs the same code against a real polkitd.
"""

from __future__ import annotations

import asyncio
import grp
import os
import threading
from collections.abc import Callable
from typing import cast

import pytest
from dbus_fast import Message, MessageFlag, Variant
from dbus_fast.aio import MessageBus

from bangui_daemon.dbus import auth
from bangui_daemon.dbus.auth import Authorizer, remember_message
from bangui_daemon.errors import AccessDenied

SENDER = ":1.42"
# A group that exists wherever the tests run: our own primary group.
GROUP = grp.getgrgid(os.getgid()).gr_name
GID = os.getgid()
OTHER_GID = 4_000_123

Answer = Callable[[Message], Message | None]


def yes(request: Message) -> Message:
    return Message.new_method_return(request, "(bba{ss})", [[True, False, {}]])


def no_needs_password(request: Message) -> Message:
    return Message.new_method_return(
        request, "(bba{ss})", [[False, True, {"polkit.retains_authorization_after_challenge": "1"}]]
    )


def error(name: str) -> Answer:
    return lambda request: Message.new_error(request, name, "it went wrong")


class FakeBus:
    """Answers GetConnectionCredentials from `uid`/`gids` and polkit with `polkit`."""

    def __init__(self, uid: int, gids: set[int], polkit: Answer | None) -> None:
        self.uid = uid
        self.gids = gids
        self.polkit = polkit
        self.polkit_requests: list[Message] = []

    async def call(self, msg: Message) -> Message | None:
        msg.serial = len(self.polkit_requests) + 1  # as the real bus assigns one on send
        if msg.member == "GetConnectionCredentials":
            assert msg.body == [SENDER]
            creds = {
                "UnixUserID": Variant("u", self.uid),
                "UnixGroupIDs": Variant("au", sorted(self.gids)),
                "ProcessID": Variant("u", 4242),
            }
            return Message.new_method_return(msg, "a{sv}", [creds])
        assert msg.destination == "org.freedesktop.PolicyKit1"
        self.polkit_requests.append(msg)
        if self.polkit is None:  # never answers
            await asyncio.Event().wait()
        return self.polkit(msg) if self.polkit else None


def authorizer(bus: FakeBus, *, use_polkit: bool = True, timeout: float = 5.0) -> Authorizer:
    return Authorizer(
        cast(MessageBus, bus),
        lambda: GROUP,
        use_polkit=use_polkit,
        polkit_timeout=timeout,
        polkit_interactive_timeout=timeout,
    )


def incoming(flags: MessageFlag = MessageFlag.NONE) -> None:
    """Make this task's current method call one from SENDER (as the bus handler does)."""
    remember_message(
        Message(
            destination="org.bangui.Daemon1",
            path="/org/bangui/Daemon1",
            interface="org.bangui.Daemon1",
            member="BanIp",
            signature="ss",
            body=["sshd", "192.0.2.1"],
            sender=SENDER,
            flags=flags,
        )
    )


async def test_root_is_allowed_without_asking_polkit() -> None:
    bus = FakeBus(0, {0}, error("org.freedesktop.PolicyKit1.Error.Failed"))
    incoming()
    assert (await authorizer(bus).require_admin("BanIp")).uid == 0
    assert bus.polkit_requests == []


async def test_polkit_yes_allows_a_user_outside_the_group() -> None:
    bus = FakeBus(1500, {OTHER_GID}, yes)
    incoming()
    caller = await authorizer(bus).require_admin("UnbanIp")
    assert (caller.uid, caller.sender) == (1500, SENDER)
    [request] = bus.polkit_requests
    assert request.member == "CheckAuthorization"
    assert request.signature == "(sa{sv})sa{ss}us"
    subject, action, details, flags, cancellation = request.body
    assert subject[0] == "system-bus-name"
    assert subject[1]["name"].value == SENDER
    assert action == "org.bangui.Daemon1.manage-bans"
    assert details == {"admin_group": GROUP}
    assert flags == 0  # the caller did not allow interaction: polkit must not prompt
    assert cancellation == ""


async def test_interaction_is_allowed_only_when_the_caller_allows_it() -> None:
    bus = FakeBus(1500, {OTHER_GID}, yes)
    incoming(MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)
    await authorizer(bus).require_admin("RunTask")
    [request] = bus.polkit_requests
    assert request.body[1] == "org.bangui.Daemon1.run-tasks"
    assert request.body[3] == 1


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(no_needs_password, id="needs-a-password"),
        pytest.param(
            lambda r: Message.new_method_return(r, "(bba{ss})", [[False, False, {}]]), id="no"
        ),
        pytest.param(error("org.freedesktop.PolicyKit1.Error.Failed"), id="polkit-error"),
        pytest.param(error("org.freedesktop.DBus.Error.NoReply"), id="no-reply"),
        pytest.param(error("org.freedesktop.DBus.Error.Spawn.ChildExited"), id="spawn-failed"),
        pytest.param(lambda r: Message.new_method_return(r, "b", [True]), id="wrong-signature"),
        pytest.param(
            lambda r: Message.new_method_return(r, "(bba{ss})", [[1, False, {}]]), id="not-bool"
        ),
    ],
)
async def test_anything_but_polkit_yes_denies_even_a_group_member(answer: Answer) -> None:
    bus = FakeBus(1500, {GID}, answer)  # the group check alone would allow
    incoming()
    with pytest.raises(AccessDenied, match="not authorized by polkit"):
        await authorizer(bus).require_admin("AddSource")
    assert bus.polkit_requests[0].body[1] == "org.bangui.Daemon1.manage-blocklists"


async def test_a_silent_polkit_denies_after_the_timeout() -> None:
    bus = FakeBus(1500, {GID}, None)
    incoming()
    with pytest.raises(AccessDenied):
        await asyncio.wait_for(authorizer(bus, timeout=0.05).require_admin("BanIp"), 5)


async def test_a_broken_connection_to_polkit_denies() -> None:
    def broken(request: Message) -> Message:
        raise ConnectionResetError("bus gone")

    bus = FakeBus(1500, {GID}, broken)
    incoming()
    with pytest.raises(AccessDenied):
        await authorizer(bus).require_admin("BanIp")


@pytest.mark.parametrize(
    "absent",
    ["org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner"],
)
async def test_without_polkit_on_the_bus_the_group_decides(absent: str) -> None:
    member = FakeBus(1500, {OTHER_GID, GID}, error(absent))
    incoming()
    assert (await authorizer(member).require_admin("ImportAll")).uid == 1500
    stranger = FakeBus(1501, {OTHER_GID}, error(absent))
    with pytest.raises(AccessDenied, match=f"membership in group {GROUP}"):
        await authorizer(stranger).require_admin("ImportAll")


async def test_polkit_is_not_asked_off_the_system_bus() -> None:
    """On a session bus anyone could own org.freedesktop.PolicyKit1 and say yes."""
    bus = FakeBus(1500, {OTHER_GID}, yes)
    incoming()
    with pytest.raises(AccessDenied, match="membership in group"):
        await authorizer(bus, use_polkit=False).require_admin("BanIp")
    assert bus.polkit_requests == []


async def test_the_group_is_looked_up_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """NSS (LDAP, sssd) may block: getgrnam must not run on the loop's thread."""
    threads: list[int] = []
    real = grp.getgrnam

    def recording(name: str) -> grp.struct_group:
        threads.append(threading.get_ident())
        return real(name)

    monkeypatch.setattr(grp, "getgrnam", recording)
    bus = FakeBus(1500, {GID}, None)
    incoming()
    await authorizer(bus, use_polkit=False).require_admin("BanIp")
    assert threads
    assert threading.get_ident() not in threads


async def test_a_call_without_a_known_sender_is_denied() -> None:
    bus = FakeBus(0, {0}, yes)
    with pytest.raises(AccessDenied, match="could not be identified"):
        await authorizer(bus).require_admin("BanIp")


async def test_signals_do_not_replace_the_remembered_call() -> None:
    incoming()
    remember_message(Message.new_signal("/x", "org.example.X", "Changed"))
    assert auth.current_sender() == SENDER
