"""banguictl: argument parsing, error mapping, JSON shapes and DaemonClient end to end.

The end-to-end tests run a private dbus-daemon in a temp dir and a tiny fake
`org.bangui.Daemon1` on it (a low-level message handler, so it works with dbus-fast
1.84 and 5.x alike); the real DaemonClient and CLI talk to it over the socket.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from bangui_daemon.cli import banguictl, render
from bangui_daemon.cli.bus_client import (
    IFACE_PROPERTIES,
    DaemonClient,
    DaemonError,
    to_variant,
    unwrap,
)
from bangui_daemon.cli.ctl_args import build_parser, parse_since
from bangui_daemon.cli.ctl_context import Context, describe_error, exit_code_for
from bangui_daemon.cli.ctl_watch import watch_line, watched
from bangui_daemon.dbus.names import (
    BLOCKLISTS_INTERFACE,
    BUS_NAME,
    CORE_INTERFACE,
    GEO_INTERFACE,
    HISTORY_INTERFACE,
    OBJECT_PATH,
)

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_700_000_000


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


# --- argument parsing ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status"], {"command": "status", "json": False, "bus": None}),
        (["jails"], {"command": "jails"}),
        (["bans"], {"jail": "", "limit": 100, "offset": 0}),
        (["bans", "--jail", "sshd", "--limit", "5", "--offset", "10"], {"jail": "sshd"}),
        (["ban", "sshd", "203.0.113.5"], {"jail": "sshd", "ip": "203.0.113.5"}),
        (["ban", "sshd", "2001:DB8::1"], {"ip": "2001:db8::1"}),
        (["unban", "203.0.113.5"], {"ip": "203.0.113.5", "jail": ""}),
        (["unban", "203.0.113.5", "--jail", "sshd"], {"jail": "sshd"}),
        (["tasks"], {"command": "tasks"}),
        (["run", "history_sync"], {"task": "history_sync"}),
        (["watch"], {"count": None, "filter": None}),
        (["watch", "--count", "2", "--filter", "BanAdded,BanRemoved"], {"count": 2}),
        (["history"], {"since": None, "jail": None, "ip": None, "page": 1, "page_size": 50}),
        (["history", "--ip", "192.0.2.0/24", "--page", "3", "--page-size", "10"], {"page": 3}),
        (["ip", "203.0.113.5"], {"address": "203.0.113.5"}),
        (["top", "country"], {"dimension": "country", "since": 0, "limit": 10}),
        (["top", "ip", "--since", "1700000000", "--limit", "3"], {"since": NOW, "limit": 3}),
        (["timeline"], {"since": None, "bucket": None}),
        (["timeline", "--since", "1700000000", "--bucket", "15m"], {"bucket": 900}),
        (["sources"], {"command": "sources"}),
        (["import", "4"], {"source_id": 4, "all": False}),
        (["import", "--all"], {"source_id": None, "all": True}),
        (["preview", "https://example.org/list.txt"], {"url": "https://example.org/list.txt"}),
        (["runs"], {"source": 0, "page": 1, "page_size": 50}),
        (["runs", "--source", "2"], {"source": 2}),
        (["lookup", "192.0.2.1", "198.51.100.2"], {"ips": ["192.0.2.1", "198.51.100.2"]}),
    ],
)
def test_every_command_parses(argv: list[str], expected: dict[str, object]) -> None:
    args = vars(parse(*argv))
    for key, value in expected.items():
        assert args[key] == value, key
    assert args["command"] in banguictl.COMMANDS


def test_watch_filter_and_history_ip_are_normalised() -> None:
    assert parse("watch", "--filter", "BanAdded, PropertiesChanged").filter == [
        "BanAdded",
        "PropertiesChanged",
    ]
    assert parse("history", "--ip", "192.0.2.7/24").ip == "192.0.2.0/24"


def test_global_options_before_or_after_the_command() -> None:
    before = parse("--bus", "unix:path=/x", "--json", "bans")
    after = parse("bans", "--json", "--bus", "unix:path=/x")
    for args in (before, after):
        assert args.json is True
        assert args.bus == "unix:path=/x"
    assert parse("--timeout", "2.5", "status").timeout == 2.5


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["bans", "--limit", "0"],
        ["bans", "--limit", "1001"],
        ["bans", "--limit", "ten"],
        ["bans", "--offset", "-1"],
        ["ban", "sshd"],
        ["ban", "sshd", "not-an-ip"],
        ["ban", "sshd", "192.0.2.0/24"],
        ["unban"],
        ["unban", "999.1.1.1"],
        ["run"],
        ["watch", "--count", "0"],
        ["watch", "--filter", "Bogus"],
        ["watch", "--filter", ","],
        ["history", "--since", "yesterday"],
        ["history", "--since", "2024-13-45"],
        ["history", "--page", "0"],
        ["history", "--page-size", "5000"],
        ["history", "--ip", "10.0.0.0/33"],
        ["history", "--action", "maybe"],
        ["ip"],
        ["top"],
        ["top", "planet"],
        ["timeline", "--bucket", "0"],
        ["timeline", "--bucket", "soon"],
        ["import"],
        ["import", "3", "--all"],
        ["import", "zero"],
        ["import", "0"],
        ["preview"],
        ["runs", "--source", "x"],
        ["lookup"],
        ["lookup", "192.0.2.1", "nope"],
        ["--timeout", "0", "status"],
    ],
)
def test_bad_usage_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        banguictl.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "banguictl" in err
    assert "error:" in err


def test_since_forms() -> None:
    now = float(NOW)
    assert parse_since("1700000000", now) == NOW
    assert parse_since("0", now) == 0
    assert parse_since("24h", now) == NOW - 86400
    assert parse_since("7d", now) == NOW - 7 * 86400
    assert parse_since("-1h30m", now) == NOW - 5400
    assert parse_since("2023-11-14T22:13:20+00:00", now) == NOW
    assert parse_since("2023-11-14T22:13:20Z", now) == NOW
    local_midnight = datetime(2024, 5, 1).astimezone()  # naive: local time, on purpose
    assert parse_since("2024-05-01", now) == int(local_midnight.timestamp())
    assert parse_since("2024-05-01 12:30", now) == int(local_midnight.timestamp()) + 45000
    for bad in ("", "soon", "12x", "2024-02-30"):
        with pytest.raises(ValueError, match="not a time"):
            parse_since(bad, now)


# --- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "message", "code", "line"),
    [
        ("org.freedesktop.DBus.Error.ServiceUnknown", "x", 3, "daemon not running: "),
        ("org.freedesktop.DBus.Error.NameHasNoOwner", "x", 3, "daemon not running: "),
        ("org.freedesktop.DBus.Error.NoServer", "cannot connect", 3, "bus unavailable: "),
        ("org.freedesktop.DBus.Error.AccessDenied", "BanIp needs admin", 1, "access denied: "),
        ("org.bangui.Daemon1.Error.Refused", "192.168.1.1 is private", 1, "refused: 192.168"),
        ("org.bangui.Daemon1.Error.InvalidArgument", "bad ip", 1, "invalid argument: bad ip"),
        ("org.bangui.Daemon1.Error.NotFound", "no source 9", 1, "not found: no source 9"),
        ("org.bangui.Daemon1.Error.Fail2banUnavailable", "", 1, "fail2ban unavailable"),
        ("org.bangui.Daemon1.Error.Busy", "import running", 1, "busy: import running"),
        ("org.freedesktop.DBus.Error.Timeout", "no answer", 1, "timeout: no answer"),
    ],
)
def test_error_mapping(name: str, message: str, code: int, line: str) -> None:
    error = DaemonError(name, message)
    assert exit_code_for(error) == code
    text = describe_error(error)
    assert text.startswith(line)
    assert "\n" not in text
    if code == 3:
        assert "--bus" in text  # the hint
    if "AccessDenied" in name:
        assert "bangui-admin" in text


class _FailingClient(DaemonClient):
    def __init__(self, error: DaemonError) -> None:
        super().__init__()
        self.error = error

    async def list_jails(self) -> list[dict[str, object]]:
        raise self.error


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("org.freedesktop.DBus.Error.AccessDenied", 1),
        ("org.freedesktop.DBus.Error.ServiceUnknown", 3),
    ],
)
async def test_execute_maps_errors_to_one_line_and_code(name: str, code: int) -> None:
    out, err = io.StringIO(), io.StringIO()
    ctx = Context(_FailingClient(DaemonError(name, "nope")), parse("jails"), out, err)
    assert await banguictl.execute(ctx) == code
    assert out.getvalue() == ""
    lines = err.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("banguictl: ")


def test_daemon_error_fields() -> None:
    error = DaemonError("org.bangui.Daemon1.Error.Refused", "private address")
    assert (error.name, error.message, error.short_name) == (
        "org.bangui.Daemon1.Error.Refused",
        "private address",
        "Refused",
    )
    assert str(error) == "org.bangui.Daemon1.Error.Refused: private address"
    assert not error.daemon_absent


# --- Variant unwrapping -------------------------------------------------------------------------
def test_unwrap_nested_variants() -> None:
    value = {
        "version": Variant("s", "0.1.0"),
        "jails": Variant("as", ["sshd"]),
        "nested": Variant("a{sv}", {"n": Variant("u", 3), "v": Variant("v", Variant("b", True))}),
        "records": Variant("aa{sv}", [{"ip": Variant("s", "192.0.2.1")}]),
        "pair": Variant("(su)", ["x", 1]),
    }
    assert unwrap(value) == {
        "version": "0.1.0",
        "jails": ["sshd"],
        "nested": {"n": 3, "v": True},
        "records": [{"ip": "192.0.2.1"}],
        "pair": ["x", 1],
    }
    assert unwrap([("a", Variant("x", -1))]) == [("a", -1)]
    json.dumps(unwrap(value))  # plain values only


def test_to_variant() -> None:
    assert to_variant(True).signature == "b"
    assert to_variant(5).signature == "x"
    assert to_variant("sshd").signature == "s"
    assert to_variant(["a", "b"]).signature == "as"
    with pytest.raises(TypeError):
        to_variant(1.5)


# --- a private bus and a fake daemon ----------------------------------------
BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def start_bus(tmp: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """Start a private dbus-daemon in `tmp`; its address and process."""
    config = tmp / "bus.conf"
    config.write_text(BUS_CONFIG.format(socket=tmp / "socket"))
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [
            "dbus-daemon",
            f"--config-file={config}",
            "--nofork",
            "--nosyslog",
            f"--print-address={write_fd}",
        ],
        pass_fds=(write_fd,),
        stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        address = pipe.readline().strip()  # returns once the bus listens
    assert address.startswith("unix:")
    return address, proc


@pytest.fixture(scope="module")
def bus_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private dbus-daemon for this module; its address."""
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed")
    address, proc = start_bus(tmp_path_factory.mktemp("bus"))
    yield address
    proc.terminate()
    proc.wait(10)


def _status() -> dict[str, Variant]:
    return {
        "version": Variant("s", "0.1.0"),
        "fail2ban_connected": Variant("b", True),
        "fail2ban_version": Variant("s", "1.0.2"),
        "jails": Variant("as", ["sshd", "recidive"]),
        "active_bans": Variant("u", 2),
        "archived_events": Variant("x", 42),
        "last_history_sync": Variant("x", NOW - 60),
        "geo_cache_entries": Variant("x", 7),
        "extra_key": Variant("s", "kept"),
    }


def _ban(jail: str, ip: str, bantime: int) -> dict[str, Variant]:
    return {
        "jail": Variant("s", jail),
        "ip": Variant("s", ip),
        "timeofban": Variant("x", NOW),
        "bantime": Variant("x", bantime),
        "expires": Variant("x", -1 if bantime < 0 else NOW + bantime),
        "bancount": Variant("u", 1),
        "origin": Variant("s", "selfblock"),
        "country_code": Variant("s", "DE"),
        "asn": Variant("s", "AS3320"),
        "org": Variant("s", "Deutsche Telekom AG"),
    }


def _import_result() -> dict[str, Variant]:
    return {
        "status": Variant("s", "completed"),
        "run_id": Variant("u", 11),
        "content_hash": Variant("s", "ab" * 32),
        "entries": Variant("u", 1000),
        "added": Variant("u", 990),
        "removed": Variant("u", 3),
        "invalid": Variant("u", 2),
        "refused": Variant("u", 8),
        "error": Variant("s", ""),
    }


Reply = tuple[str, list[Any]]


class FakeDaemon:
    """Answers the contract's methods with canned data; records every call."""

    def __init__(self, bus: MessageBus) -> None:
        self.bus = bus
        self.calls: list[tuple[str, str, list[Any]]] = []

    def emit(self, interface: str, member: str, signature: str, body: list[Any]) -> None:
        self.bus.send(Message.new_signal(OBJECT_PATH, interface, member, signature, body))

    def handle(self, msg: Message) -> Message | bool | None:
        if msg.message_type is not MessageType.METHOD_CALL or msg.path != OBJECT_PATH:
            return None
        assert msg.interface is not None
        assert msg.member is not None
        self.calls.append((msg.interface, msg.member, list(msg.body)))
        if msg.member == "RunTask" and msg.body == ["hang"]:
            return True  # never answer: the client's timeout must fire
        try:
            signature, body = self.answer(msg.interface, msg.member, list(msg.body))
        except DaemonError as error:
            return Message.new_error(msg, error.name, error.message)
        return Message.new_method_return(msg, signature, body)

    def answer(self, interface: str, member: str, args: list[Any]) -> Reply:
        replies: dict[tuple[str, str], Reply] = {
            (CORE_INTERFACE, "GetStatus"): ("a{sv}", [_status()]),
            (CORE_INTERFACE, "ListJails"): (
                "aa{sv}",
                [
                    [
                        {
                            "name": Variant("s", "sshd"),
                            "currently_banned": Variant("u", 2),
                            "total_banned": Variant("u", 10),
                            "currently_failed": Variant("u", 1),
                            "total_failed": Variant("u", 99),
                        }
                    ]
                ],
            ),
            (CORE_INTERFACE, "ListBans"): (
                "aa{sv}u",
                [[_ban("sshd", "192.0.2.1", 600), _ban("recidive", "198.51.100.7", -1)], 12],
            ),
            (CORE_INTERFACE, "ListTasks"): (
                "aa{sv}",
                [
                    [
                        {
                            "name": Variant("s", "history_sync"),
                            "interval": Variant("x", 300),
                            "running": Variant("b", False),
                            "last_run": Variant("x", NOW - 120),
                            "last_status": Variant("s", "ok"),
                            "next_run": Variant("x", NOW + 180),
                        }
                    ]
                ],
            ),
            (CORE_INTERFACE, "RunTask"): ("a{sv}", [{"status": Variant("s", "ok")}]),
            (HISTORY_INTERFACE, "GetHistory"): (
                "aa{sv}u",
                [
                    [
                        {
                            "action": Variant("s", "ban"),
                            "jail": Variant("s", "sshd"),
                            "ip": Variant("s", "192.0.2.1"),
                            "timeofban": Variant("x", NOW),
                            "bancount": Variant("u", 2),
                            "bantime": Variant("x", 3600),
                            "matches": Variant("as", ["line 1"]),
                        }
                    ],
                    1,
                ],
            ),
            (HISTORY_INTERFACE, "GetIpHistory"): (
                "a{sv}",
                [
                    {
                        "ip": Variant("s", str(args[0]) if args else ""),
                        "total_bans": Variant("u", 0),
                        "first_seen": Variant("x", 0),
                        "last_seen": Variant("x", 0),
                        "jails": Variant("as", []),
                        "events": Variant("aa{sv}", []),
                    }
                ],
            ),
            (HISTORY_INTERFACE, "GetTimeline"): ("a(xu)", [[[NOW, 3], [NOW + 3600, 0]]]),
            (HISTORY_INTERFACE, "GetTop"): ("a(su)", [[("sshd", 10), ("recidive", 4)]]),
            (BLOCKLISTS_INTERFACE, "ListSources"): (
                "aa{sv}",
                [
                    [
                        {
                            "id": Variant("u", 1),
                            "name": Variant("s", "ipsum"),
                            "url": Variant("s", "https://example.org/ipsum.txt"),
                            "enabled": Variant("b", True),
                            "last_run": Variant("x", 0),
                            "last_status": Variant("s", ""),
                            "last_imported": Variant("u", 0),
                        }
                    ]
                ],
            ),
            (BLOCKLISTS_INTERFACE, "AddSource"): ("u", [5]),
            (BLOCKLISTS_INTERFACE, "UpdateSource"): ("", []),
            (BLOCKLISTS_INTERFACE, "RemoveSource"): ("", []),
            (BLOCKLISTS_INTERFACE, "ImportAll"): ("aa{sv}", [[_import_result()]]),
            (BLOCKLISTS_INTERFACE, "ListImportRuns"): ("aa{sv}u", [[], 0]),
            (BLOCKLISTS_INTERFACE, "PreviewSource"): (
                "a{sv}",
                [
                    {
                        "entries": Variant("u", 2),
                        "invalid": Variant("u", 0),
                        "refused": Variant("u", 1),
                        "sample": Variant("as", ["203.0.113.0/24"]),
                        "refused_sample": Variant("as", ["10.0.0.1"]),
                    }
                ],
            ),
            (GEO_INTERFACE, "LookupIp"): (
                "a{sv}",
                [
                    {
                        "ip": Variant("s", "192.0.2.1"),
                        "country_code": Variant("s", "DE"),
                        "source": Variant("s", "cache"),
                    }
                ],
            ),
            (IFACE_PROPERTIES, "GetAll"): (
                "a{sv}",
                [
                    {
                        "Version": Variant("s", "0.1.0"),
                        "InterfaceVersion": Variant("s", "1.0"),
                        "State": Variant("s", "running"),
                        "StartedAt": Variant("x", NOW - 3600),
                        "Fail2banConnected": Variant("b", True),
                        "Fail2banVersion": Variant("s", "1.0.2"),
                    }
                ],
            ),
            (IFACE_PROPERTIES, "Get"): ("v", [Variant("s", "running")]),
        }
        if (interface, member) == (CORE_INTERFACE, "BanIp"):
            if args[1].startswith("192.168."):
                raise DaemonError("org.bangui.Daemon1.Error.Refused", f"{args[1]} is private")
            return "b", [True]
        if (interface, member) == (CORE_INTERFACE, "UnbanIp"):
            return "u", [0 if args[0] else 2]
        if (interface, member) == (GEO_INTERFACE, "LookupIps"):
            answers = [{"ip": Variant("s", ip), "country_code": Variant("s", "")} for ip in args[0]]
            return "aa{sv}", [answers]
        if (interface, member) == (BLOCKLISTS_INTERFACE, "ImportSource"):
            if args[0] == 9:
                raise DaemonError("org.bangui.Daemon1.Error.NotFound", "no source with id 9")
            if args[0] == 7:
                failed = {"status": Variant("s", "failed"), "error": Variant("s", "HTTP 404")}
                return "a{sv}", [failed]
            for done in (500, 1000):
                self.emit(BLOCKLISTS_INTERFACE, "ImportProgress", "uuu", [args[0], done, 1000])
            return "a{sv}", [_import_result()]
        if (interface, member) not in replies:
            raise DaemonError("org.freedesktop.DBus.Error.UnknownMethod", f"no {member}")
        return replies[(interface, member)]


@pytest.fixture
async def fake(bus_address: str) -> AsyncIterator[FakeDaemon]:
    """The fake daemon, owning org.bangui.Daemon1 for one test."""
    bus = await MessageBus(bus_address=bus_address).connect()
    daemon = FakeDaemon(bus)
    bus.add_message_handler(daemon.handle)
    await bus.request_name(BUS_NAME)
    yield daemon
    bus.disconnect()


@pytest.fixture
async def client(bus_address: str) -> AsyncIterator[DaemonClient]:
    c = await DaemonClient(timeout=5).connect(bus_address)
    yield c
    c.close()


# --- DaemonClient end to end --------------------------------------------------------------------
async def test_client_unwraps_every_reply(fake: FakeDaemon, client: DaemonClient) -> None:
    status = await client.get_status()
    assert status["jails"] == ["sshd", "recidive"]
    assert status["fail2ban_connected"] is True
    assert status["extra_key"] == "kept"
    bans, total = await client.list_bans("", 0, 2)
    assert total == 12
    assert bans[1]["expires"] == -1
    assert await client.get_timeline(NOW, 3600) == [(NOW, 3), (NOW + 3600, 0)]
    assert await client.get_top("jail", 0, 2) == [("sshd", 10), ("recidive", 4)]
    assert (await client.get_all_properties())["StartedAt"] == NOW - 3600
    assert await client.ban_ip("sshd", "203.0.113.5") is True
    assert await client.unban_ip("", "203.0.113.5") == 2
    assert await client.add_source("x", "https://example.org/x", True) == 5
    await client.update_source(5, {"enabled": False, "name": "y"})
    await client.remove_source(5)
    assert (await client.import_source(1))["added"] == 990
    assert len(await client.import_all()) == 1
    assert await client.list_import_runs() == ([], 0)
    assert (await client.preview_source("https://example.org/x"))["sample"] == ["203.0.113.0/24"]
    assert (await client.lookup_ip("192.0.2.1"))["source"] == "cache"
    assert [a["ip"] for a in await client.lookup_ips(["192.0.2.1", "192.0.2.2"])] == [
        "192.0.2.1",
        "192.0.2.2",
    ]
    assert (await client.list_tasks())[0]["interval"] == 300
    assert (await client.run_task("history_sync"))["status"] == "ok"
    assert (await client.get_ip_history("192.0.2.9"))["events"] == []
    assert await client.daemon_running() is True
    # arguments went out with the contract's signatures
    await client.get_history({"since": NOW, "jail": "sshd"}, 2, 10)
    _, _, sent = next(c for c in fake.calls if c[1] == "GetHistory")
    assert sent[1:] == [2, 10]
    assert {k: (v.signature, v.value) for k, v in sent[0].items()} == {
        "since": ("x", NOW),
        "jail": ("s", "sshd"),
    }
    _, _, changes = next(c for c in fake.calls if c[1] == "UpdateSource")
    assert changes[1]["enabled"].signature == "b"


async def test_client_raises_daemon_error(fake: FakeDaemon, client: DaemonClient) -> None:
    with pytest.raises(DaemonError) as exc:
        await client.ban_ip("sshd", "192.168.1.1")
    assert exc.value.name == "org.bangui.Daemon1.Error.Refused"
    assert exc.value.message == "192.168.1.1 is private"


async def test_client_timeout(fake: FakeDaemon, bus_address: str) -> None:
    c = await DaemonClient(timeout=5, long_timeout=0.3).connect(bus_address)
    try:
        with pytest.raises(DaemonError) as exc:
            await c.run_task("hang")
        assert exc.value.short_name == "Timeout"
    finally:
        c.close()


async def test_daemon_absent(bus_address: str) -> None:
    c = await DaemonClient(timeout=5).connect(bus_address)
    try:
        assert await c.daemon_running() is False
        with pytest.raises(DaemonError) as exc:
            await c.get_status()
        assert exc.value.daemon_absent
    finally:
        c.close()


async def test_connect_failure_is_no_server(tmp_path: Path) -> None:
    with pytest.raises(DaemonError) as exc:
        await DaemonClient().connect(f"unix:path={tmp_path}/missing")
    assert exc.value.short_name == "NoServer"
    assert exc.value.daemon_absent


async def test_system_bus_honours_env(
    fake: FakeDaemon, bus_address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus_address)
    c = await DaemonClient(timeout=5).connect(None)
    try:
        assert (await c.get_status())["version"] == "0.1.0"
        assert bus_address in c.address_label
    finally:
        c.close()


async def test_subscribe_delivers_signals(fake: FakeDaemon, client: DaemonClient) -> None:
    got: asyncio.Queue[tuple[str, str, list[object]]] = asyncio.Queue()
    await client.subscribe(lambda i, m, a: got.put_nowait((i, m, a)))
    await client.get_status()  # a round trip: AddMatch is in place before we emit
    fake.emit(CORE_INTERFACE, "BanAdded", "ssxx", ["sshd", "203.0.113.5", NOW, 600])
    fake.emit(
        CORE_INTERFACE, "TaskFinished", "ssa{sv}", ["geo_resolve", "ok", {"n": Variant("u", 4)}]
    )
    fake.emit(
        IFACE_PROPERTIES,
        "PropertiesChanged",
        "sa{sv}as",
        [CORE_INTERFACE, {"State": Variant("s", "degraded")}, []],
    )
    received = [await asyncio.wait_for(got.get(), 5) for _ in range(3)]
    assert received == [
        (CORE_INTERFACE, "BanAdded", ["sshd", "203.0.113.5", NOW, 600]),
        (CORE_INTERFACE, "TaskFinished", ["geo_resolve", "ok", {"n": 4}]),
        (IFACE_PROPERTIES, "PropertiesChanged", [CORE_INTERFACE, {"State": "degraded"}, []]),
    ]


# --- CLI end to end: JSON shapes and human output -------------------------------------------------
async def cli(*argv: str, progress: bool = False) -> tuple[int, str, str]:
    args = parse(*argv)
    out, err = io.StringIO(), io.StringIO()
    client = await DaemonClient(timeout=5).connect(args.bus)
    ctx = Context(client, args, out, err, now=float(NOW), width=60, tz=UTC, progress=progress)
    try:
        code = await banguictl.execute(ctx)
    finally:
        client.close()
    return code, out.getvalue(), err.getvalue()


async def test_json_shapes(fake: FakeDaemon, bus_address: str) -> None:
    async def doc(*argv: str) -> Any:
        code, out, err = await cli("--bus", bus_address, "--json", *argv)
        assert (code, err) == (0, "")
        return json.loads(out)

    status = await doc("status")
    assert status["status"]["active_bans"] == 2
    assert status["properties"]["State"] == "running"
    assert (await doc("jails"))[0]["name"] == "sshd"
    bans = await doc("bans", "--limit", "2")
    assert (bans["total"], bans["offset"], bans["limit"]) == (12, 0, 2)
    assert bans["bans"][0]["ip"] == "192.0.2.1"
    assert await doc("ban", "sshd", "203.0.113.5") == {
        "jail": "sshd",
        "ip": "203.0.113.5",
        "newly_banned": True,
    }
    assert (await doc("unban", "203.0.113.5"))["jails_removed"] == 2
    assert (await doc("tasks"))[0]["last_status"] == "ok"
    assert (await doc("run", "history_sync")) == {
        "task": "history_sync",
        "result": {"status": "ok"},
    }
    history = await doc("history", "--since", "1700000000", "--jail", "sshd", "--ip", "192.0.2.1")
    assert history["total"] == 1
    assert history["filter"] == {"since": NOW, "jail": "sshd", "ip": "192.0.2.1"}
    assert history["events"][0]["matches"] == ["line 1"]
    assert set(await doc("ip", "192.0.2.1")) == {"history", "geo"}
    assert (await doc("top", "jail"))["top"] == [
        {"key": "sshd", "count": 10},
        {"key": "recidive", "count": 4},
    ]
    timeline = await doc("timeline", "--since", "1700000000", "--bucket", "1h")
    assert timeline["buckets"] == [{"start": NOW, "count": 3}, {"start": NOW + 3600, "count": 0}]
    assert timeline["bucket_seconds"] == 3600
    assert (await doc("sources"))[0]["enabled"] is True
    assert (await doc("import", "1"))["status"] == "completed"
    assert (await doc("import", "--all"))[0]["added"] == 990
    assert (await doc("preview", "https://example.org/x"))["refused_sample"] == ["10.0.0.1"]
    assert await doc("runs") == {"runs": [], "total": 0, "page": 1, "page_size": 50}
    assert [a["ip"] for a in await doc("lookup", "192.0.2.1", "192.0.2.2")] == [
        "192.0.2.1",
        "192.0.2.2",
    ]


async def test_human_output(fake: FakeDaemon, bus_address: str) -> None:
    code, out, _ = await cli("--bus", bus_address, "bans", "--limit", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["JAIL", "IP", "BANNED", "AT"]
    assert "2023-11-14 22:13:20" in lines[1]
    assert "10m" in lines[1]
    assert "in 10 min" in lines[1]
    assert "permanent" in lines[2]
    assert "never" in lines[2]
    assert lines[-1] == "1-2 of 12 (--offset 2 for more)"

    code, out, _ = await cli("--bus", bus_address, "status")
    assert "fail2ban:          connected, 1.0.2" in out
    assert "last history sync: 2023-11-14 22:12:20 (1 min ago)" in out
    assert "extra key:         kept" in out

    code, out, _ = await cli("--bus", bus_address, "top", "jail")
    title, first, second = out.splitlines()
    assert title == "top jail by bans, all time"
    assert len(first) == 60
    assert first.count("█") > second.count("█") > 0

    code, out, _ = await cli("--bus", bus_address, "tasks")
    assert "2 min ago" in out
    assert "in 3 min" in out
    assert "5m" in out

    code, out, _ = await cli("--bus", bus_address, "ip", "192.0.2.9")
    assert "no events recorded" in out
    assert "first seen: never" in out

    code, out, _ = await cli("--bus", bus_address, "timeline", "--since", str(NOW))
    title, first, second = out.splitlines()
    assert title.startswith("bans per 1h, since 2023-11-14 22:13:20")
    assert first.startswith("2023-11-14 22:13  █")
    assert first.endswith("3")
    assert second.startswith("2023-11-14 23:13  ")
    assert "█" not in second

    code, out, _ = await cli("--bus", bus_address, "runs")
    assert out == "no import runs\n"

    code, out, _ = await cli("--bus", bus_address, "unban", "203.0.113.5", "--jail", "sshd")
    assert out == "203.0.113.5 was not banned in sshd\n"


async def test_cli_daemon_errors(fake: FakeDaemon, bus_address: str) -> None:
    code, out, err = await cli("--bus", bus_address, "ban", "sshd", "192.168.1.1")
    assert (code, out) == (1, "")
    assert err == "banguictl: refused: 192.168.1.1 is private\n"
    code, _, err = await cli("--bus", bus_address, "import", "9")
    assert code == 1
    assert err == "banguictl: not found: no source with id 9\n"
    code, out, err = await cli("--bus", bus_address, "import", "7")
    assert code == 1  # the call worked, the import did not: scripts must see it
    assert "status:    failed" in out
    assert err == "banguictl: import of source 7 failed: HTTP 404\n"


async def test_import_progress_bar(fake: FakeDaemon, bus_address: str) -> None:
    code, out, err = await cli("--bus", bus_address, "import", "1", progress=True)
    assert code == 0
    assert "\ripsum [" in err
    assert "50%  500/1000" in err
    assert "100%  1000/1000" in err
    assert err.endswith("\n")
    assert "status:       completed" in out


async def test_run_reports_daemon_absent_with_exit_3(bus_address: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = await banguictl.run(parse("--bus", bus_address, "status"), out, err)
    assert code == 3
    assert err.getvalue().startswith("banguictl: daemon not running: nothing owns org.bangui")
    assert out.getvalue() == ""


# --- watch ------------------------------------------------------------
async def test_watch_prints_filtered_lines_and_stops_after_count(
    fake: FakeDaemon, bus_address: str
) -> None:
    for json_mode in (False, True):
        argv = ["--bus", bus_address, "watch", "--count", "3"]
        argv += ["--filter", "BanAdded,PropertiesChanged,ImportProgress"]
        args = parse(*(["--json"] if json_mode else []), *argv)
        out, err = io.StringIO(), io.StringIO()
        client = await DaemonClient(timeout=5).connect(bus_address)
        ready = asyncio.Event()
        ctx = Context(client, args, out, err, tz=UTC, ready=ready)
        task = asyncio.ensure_future(banguictl.execute(ctx))
        await asyncio.wait_for(ready.wait(), 5)
        fake.emit(CORE_INTERFACE, "BanAdded", "ssxx", ["sshd", "203.0.113.5", NOW, 3600])
        fake.emit(CORE_INTERFACE, "BansChanged", "uu", [1, 0])  # filtered out
        fake.emit(
            IFACE_PROPERTIES,
            "PropertiesChanged",
            "sa{sv}as",
            [GEO_INTERFACE, {"CacheEntries": Variant("x", 5)}, []],
        )
        fake.emit(
            IFACE_PROPERTIES,
            "PropertiesChanged",
            "sa{sv}as",
            [CORE_INTERFACE, {"State": Variant("s", "degraded"), "Version": Variant("s", "x")}, []],
        )
        fake.emit(BLOCKLISTS_INTERFACE, "ImportProgress", "uuu", [1, 250, 1000])
        fake.emit(
            CORE_INTERFACE, "BanAdded", "ssxx", ["sshd", "203.0.113.6", NOW, 60]
        )  # after count
        try:
            assert await asyncio.wait_for(task, 5) == 0
        finally:
            client.close()
        lines = out.getvalue().splitlines()
        assert len(lines) == 3
        if json_mode:
            docs = [json.loads(line) for line in lines]
            assert [d["signal"] for d in docs] == [
                "BanAdded",
                "PropertiesChanged",
                "ImportProgress",
            ]
            assert docs[0]["args"] == {
                "jail": "sshd",
                "ip": "203.0.113.5",
                "timeofban": NOW,
                "bantime": 3600,
            }
            assert docs[1]["args"] == {
                "interface": CORE_INTERFACE,
                "changed": {"State": "degraded"},
            }
            assert isinstance(docs[0]["time"], float)
        else:
            assert "BanAdded" in lines[0]
            assert lines[0].endswith("sshd 203.0.113.5 banned for 1h")
            assert lines[1].endswith("state: degraded")
            assert lines[2].endswith("source 1: 250/1000 (25%)")
            assert lines[0][:19] == render.format_timestamp(int(time.time()), UTC)[:19]


def test_watch_line_for_every_signal() -> None:
    ts = "2023-11-14 22:13:20"
    cases: list[tuple[str, str, list[object], str]] = [
        (CORE_INTERFACE, "BanRemoved", ["sshd", "192.0.2.1"], "sshd 192.0.2.1 unbanned"),
        (CORE_INTERFACE, "BansChanged", [120, 3], "+120 -3 bans"),
        (CORE_INTERFACE, "TaskFinished", ["history_sync", "ok", {"new": 3}], "ok (new=3)"),
        (HISTORY_INTERFACE, "HistorySynced", [12], "12 new events archived"),
        (BLOCKLISTS_INTERFACE, "ImportStarted", [1, 7], "source 1 run 7"),
        (
            BLOCKLISTS_INTERFACE,
            "ImportFinished",
            [1, "completed", 5, 2],
            "source 1: completed, +5 -2",
        ),
        (
            IFACE_PROPERTIES,
            "PropertiesChanged",
            [CORE_INTERFACE, {"Fail2banConnected": False}, []],
            "fail2ban connected: no",
        ),
    ]
    for interface, member, args, detail in cases:
        named = watched(interface, member, args)
        assert named is not None, member
        line = watch_line(member, named, ts)
        assert line.startswith(ts + "  " + member)
        assert line.endswith(detail), line
    assert watched(CORE_INTERFACE, "Unknown", []) is None
    assert watched(IFACE_PROPERTIES, "PropertiesChanged", [CORE_INTERFACE, {}, []]) is None


async def test_watch_subprocess_exits_0_on_sigterm(fake: FakeDaemon, bus_address: str) -> None:
    """The real entry point: flushed lines through a pipe, then SIGTERM -> exit 0."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bangui_daemon.cli.banguictl",
        "--bus",
        bus_address,
        "watch",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    line = b""
    for _ in range(100):  # emit until the watcher (started asynchronously) reports one
        fake.emit(HISTORY_INTERFACE, "HistorySynced", "u", [4])
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), 0.2)
            break
        except TimeoutError:
            continue
    assert b"HistorySynced" in line
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, err


async def test_watch_exits_3_when_the_bus_goes_away(tmp_path: Path) -> None:
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed")
    address, proc = start_bus(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    client = await DaemonClient(timeout=5).connect(address)
    ready = asyncio.Event()
    ctx = Context(client, parse("--bus", address, "watch"), out, err, ready=ready)
    task = asyncio.ensure_future(banguictl.execute(ctx))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        assert "is not on the bus yet" in err.getvalue()
        proc.terminate()
        assert await asyncio.wait_for(task, 10) == 3
        assert "lost the connection" in err.getvalue()
    finally:
        client.close()
        proc.kill()
        proc.wait(10)
