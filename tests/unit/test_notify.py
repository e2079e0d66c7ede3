"""Notifier against a real NOTIFY_SOCKET: a bound AF_UNIX datagram socket, as systemd."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from bangui_daemon import app
from bangui_daemon.archive.db import Migration
from bangui_daemon.config import Config
from bangui_daemon.notify import SD_NOTIFY_FAILED, Notifier, watchdog_interval


class FakeSystemd:
    """The receiving end of $NOTIFY_SOCKET, checking the sender like systemd does."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def receive(self) -> str:
        data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        for level, kind, cdata in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                # NotifyAccess=main: only the main pid's messages count.
                assert int.from_bytes(cdata[0:4], "little") == os.getpid()
        return data.decode("utf-8")

    def pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return False
        finally:
            self.sock.setblocking(True)
        return True


def _bind(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    return sock


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    path = str(tmp_path / "notify.sock")
    assert len(path) < 100, "AF_UNIX paths are limited to 108 bytes"
    sock = _bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield FakeSystemd(sock)
    finally:
        sock.close()


def test_ready_status_watchdog_stopping(systemd: FakeSystemd) -> None:
    with contextlib.closing(Notifier()) as notifier:
        assert notifier.enabled
        notifier.status("migrating archive")
        notifier.ready("serving org.bangui.Daemon1")
        notifier.watchdog()
        notifier.status("last sync 2 min ago, 3 jails, 41 bans")
        notifier.stopping()
    assert systemd.receive() == "STATUS=migrating archive"
    assert systemd.receive().split("\n") == ["READY=1", "STATUS=serving org.bangui.Daemon1"]
    assert systemd.receive() == "WATCHDOG=1"
    assert systemd.receive() == "STATUS=last sync 2 min ago, 3 jails, 41 bans"
    assert systemd.receive() == "STOPPING=1"


def test_reloading_carries_monotonic_usec(systemd: FakeSystemd) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    with contextlib.closing(Notifier()) as notifier:
        notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading, monotonic = systemd.receive().split("\n")
    assert reloading == "RELOADING=1"
    key, _, value = monotonic.partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_extend_startup_asks_for_time_and_says_why(systemd: FakeSystemd) -> None:
    with contextlib.closing(Notifier()) as notifier:
        notifier.extend_startup(3600, "migrating the archive\nto schema 4")
    assert systemd.receive().split("\n") == [
        "EXTEND_TIMEOUT_USEC=3600000000",
        "STATUS=migrating the archive to schema 4",
    ]


def test_status_is_one_line_and_utf8(systemd: FakeSystemd) -> None:
    """A newline in a status (e.g. from a jail name) must not inject READY=1."""
    with contextlib.closing(Notifier()) as notifier:
        notifier.status("jail x\nREADY=1 — ünïcode")
    assert systemd.receive() == "STATUS=jail x READY=1 — ünïcode"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"bangui-test-notify-{os.getpid()}"
    sock = _bind("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        with contextlib.closing(Notifier()) as notifier:
            notifier.watchdog()
        assert FakeSystemd(sock).receive() == "WATCHDOG=1"
    finally:
        sock.close()


def test_without_notify_socket_everything_is_a_silent_no_op(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("serving")
    notifier.status("x")
    notifier.watchdog()
    notifier.reloading()
    notifier.stopping()
    assert notifier.watchdog_interval() is None


def test_unreachable_socket_is_logged_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent.sock"))
    with structlog.testing.capture_logs() as logs:
        notifier = Notifier()
        notifier.ready("serving")
    assert not notifier.enabled
    assert [entry["event"] for entry in logs] == [SD_NOTIFY_FAILED]
    assert logs[0]["log_level"] == "warning"


def test_socket_gone_after_start_is_logged_once(systemd: FakeSystemd, tmp_path: Path) -> None:
    with contextlib.closing(Notifier()) as notifier:
        notifier.watchdog()
        assert systemd.receive() == "WATCHDOG=1"
        systemd.sock.close()
        (tmp_path / "notify.sock").unlink()
        with structlog.testing.capture_logs() as logs:
            notifier.watchdog()
            notifier.watchdog()
            notifier.status("still running")
    assert [entry["event"] for entry in logs] == [SD_NOTIFY_FAILED]
    notifier.watchdog()  # closed: a no-op


def test_watchdog_interval_is_half_of_watchdog_usec(
    systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    with contextlib.closing(Notifier()) as notifier:
        assert notifier.watchdog_interval() is None
        monkeypatch.setenv("WATCHDOG_USEC", "30000000")
        assert notifier.watchdog_interval() == 15.0
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
        assert notifier.watchdog_interval() == 15.0
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
        assert notifier.watchdog_interval() is None
    assert not systemd.pending()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "200000"}, 0.1),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "30s"}, None),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "abc"}, None),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": ""}, 0.1),
    ],
)
def test_watchdog_interval_from_environment(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(environ) == expected


def test_watchdog_interval_for_our_pid() -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(env) == 1.0


async def test_a_running_migration_keeps_extending_the_start_timeout(
    systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "EXTEND_EVERY", 0.01)
    daemon = app.Daemon(Config(), None)
    try:
        daemon._migrating(Migration(4, "0004_x.sql", ""))
        extending = daemon._extending
        assert extending is not None
        systemd.sock.settimeout(5)  # each receive waits for the loop's next datagram
        got = [await asyncio.to_thread(systemd.receive) for _ in range(3)]
        assert got == ["EXTEND_TIMEOUT_USEC=30000000\nSTATUS=migrating the archive to schema 4"] * 3
        extending.cancel()  # what run() does once the archive is open
        with contextlib.suppress(asyncio.CancelledError):
            await extending
        await asyncio.sleep(0.05)
        assert not systemd.pending()
    finally:
        daemon.notifier.close()
