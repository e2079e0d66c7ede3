"""Desktop and panel clients against the real daemon, bus and fail2ban (issue 15).

The panel formats and the GJS example run as an ordinary user (``bgt-reader``), so
the shipped bus policy is what lets a desktop user receive signals and read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.bus import PrivateSystemBus
from tests.harness.daemon import DaemonProcess
from tests.harness.desktop import DesktopSession, missing_tools
from tests.harness.fail2ban import F2bSandbox
from tests.harness.live import LiveProcess
from tests.harness.users import TestUser
from tests.harness.util import REPO_ROOT, wait_until

GEOIP = REPO_ROOT / "tests" / "data" / "geoip"
MODULE = "bangui_daemon.cli.banguictl"
SYSTEM_PYTHON = "/usr/bin/python3"  # the venv's python is not readable by other users
GJS_EXAMPLE = REPO_ROOT / "examples" / "gjs" / "bangui-bans.js"
GEO_IP = "89.160.20.112"  # SE, AS29518 in MaxMind's test databases

DaemonStarter = Callable[..., DaemonProcess]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1", **extra}


def _as_user(user: TestUser | None, argv: list[str]) -> list[str]:
    return argv if user is None else ["runuser", "-u", user.name, "--", *argv]


@pytest.fixture
def geo_daemon(start_daemon: DaemonStarter, tmp_path: Path) -> DaemonProcess:
    geo = tmp_path / "geoip"
    geo.mkdir()
    for name in ("GeoLite2-Country-Test.mmdb", "GeoLite2-ASN-Test.mmdb"):
        shutil.copyfile(GEOIP / name, geo / name)
    return start_daemon(
        geo={
            "country_db": str(geo / "GeoLite2-Country-Test.mmdb"),
            "asn_db": str(geo / "GeoLite2-ASN-Test.mmdb"),
        }
    )


@pytest.fixture
def reader(test_users: dict[str, TestUser]) -> TestUser:
    return test_users["bgt-reader"]


# ------------------------------------------------------------------------ panel bars
def _state(fmt: str, line: str) -> dict[str, Any]:
    """Parse one panel line into {cls, count, detail}."""
    if fmt == "waybar":
        doc = json.loads(line)
        assert {"text", "tooltip", "class", "alt"} <= set(doc), doc
        count = int(doc["text"]) if doc["text"].isdigit() else None
        return {"cls": doc["class"], "count": count, "detail": doc["tooltip"]}
    if fmt == "i3blocks":
        doc = json.loads(line)
        assert {"full_text", "short_text", "color"} <= set(doc), doc
        m = re.match(r"bans: (\d+)", doc["full_text"])
        cls = "offline" if doc["full_text"] == "bans: offline" else "online"
        return {"cls": cls, "count": int(m.group(1)) if m else None, "detail": doc["full_text"]}
    m = re.match(r"bans: (\d+)", line)
    cls = "offline" if line == "bans: offline" else "online"
    return {"cls": cls, "count": int(m.group(1)) if m else None, "detail": line}


def _count_line(fmt: str, count: int) -> str:
    """A pattern for the line that shows `count` active bans."""
    if fmt == "waybar":
        return rf'"text": "{count}"'
    return rf"bans: {count} "


@pytest.mark.parametrize("fmt", ["waybar", "polybar", "i3blocks"])
def test_panel_line_follows_bans_and_the_daemon_coming_and_going(
    fmt: str,
    f2b: F2bSandbox,
    geo_daemon: DaemonProcess,
    system_bus: PrivateSystemBus,
    reader: TestUser,
) -> None:
    argv = [SYSTEM_PYTHON, "-m", MODULE, "--bus", system_bus.address, "watch", "--format", fmt]
    started = time.monotonic()
    panel = LiveProcess(_as_user(reader, argv), env=_env())
    try:
        line, at = panel.wait_line("out", r".", 3)
        assert at - started < 3
        first = _state(fmt, line)
        assert first["count"] == 0, line
        if fmt == "waybar":
            assert first["cls"] == "idle"

        mark = panel.mark()
        banned = time.monotonic()
        f2b.client("set", "sshd", "banip", GEO_IP)
        line, at = panel.wait_line("out", _count_line(fmt, 1), 3, since=mark)
        assert at - banned < 3
        after = _state(fmt, line)
        assert after["count"] == 1, line
        if fmt == "waybar":
            assert after["cls"] == "active"
            assert f"sshd {GEO_IP} SE" in after["detail"], after
        elif fmt == "polybar":
            assert GEO_IP in line

        mark = panel.mark()
        stopped = time.monotonic()
        geo_daemon.stop()
        line, at = panel.wait_line("out", 'offline|"off"', 5, since=mark)
        assert at - stopped < 5
        assert _state(fmt, line)["cls"] == "offline"

        mark = panel.mark()
        back = time.monotonic()
        geo_daemon.start()
        line, at = panel.wait_line("out", _count_line(fmt, 1), 15, since=mark)
        assert at - back < 15
        assert _state(fmt, line)["count"] == 1
        assert panel.proc.poll() is None  # the same process throughout
    finally:
        panel.close()


# ---------------------------------------------------------------------- notifications
@pytest.fixture
def desktop() -> Iterator[DesktopSession]:
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/install-deps.sh installs them)")
    session = DesktopSession().start()
    try:
        yield session
    finally:
        session.close()


@pytest.fixture
def notify_agent(
    geo_daemon: DaemonProcess, system_bus: PrivateSystemBus, desktop: DesktopSession
) -> Iterator[LiveProcess]:
    argv = [sys.executable, "-m", MODULE, "--bus", system_bus.address]
    argv += ["notify", "--session-bus", desktop.address]
    agent = LiveProcess(argv, env=_env())
    try:
        agent.wait_line("err", "notifying new bans", 15)  # said once subscribed
        yield agent
    finally:
        agent.close()


def test_notify_shows_one_ban_with_its_address_and_country(
    f2b: F2bSandbox, desktop: DesktopSession, notify_agent: LiveProcess
) -> None:
    monitor = desktop.monitor()
    try:
        banned = time.monotonic()
        f2b.client("set", "sshd", "banip", GEO_IP)
        calls = wait_until(monitor.snapshot, 5, "a Notify call")
        assert time.monotonic() - banned < 5
        (call,) = calls
        assert call.summary == "Ban in sshd"
        assert GEO_IP in call.body
        assert "SE" in call.body
        assert "AS29518" in call.body
        assert call.replaces_id == 0
    finally:
        monitor.close()


@pytest.mark.f2b_options(extra_jails={"storm": {"action": ""}})  # no action: 300 bans in 2 s
def test_notify_merges_a_storm_into_a_few_replacing_notifications(
    f2b: F2bSandbox, desktop: DesktopSession, notify_agent: LiveProcess
) -> None:
    monitor = desktop.monitor()
    try:
        ips = [f"45.{i // 250}.{i % 250}.{7 + i % 3}" for i in range(300)]
        started = time.monotonic()
        for start in range(0, 300, 20):  # 300 bans in about 2 s, 20 per command
            f2b.client("set", "storm", "banip", *ips[start : start + 20])
            time.sleep(max(0.0, started + (start + 20) / 150 - time.monotonic()))
        assert time.monotonic() - started < 3
        # every ban is counted once the daemon has seen them all
        wait_until(
            lambda: any(c.summary.startswith("300 new bans in storm") for c in monitor.snapshot()),
            10,
            "a summary of all 300 bans",
        )
        window_end = started + 10
        time.sleep(max(0.0, window_end - time.monotonic()))  # the whole 10 s window
        calls = monitor.snapshot()
        assert 1 <= len(calls) <= 6, [c.summary for c in calls]
        first_id = calls[0].notification_id
        assert first_id is not None
        assert first_id > 0
        assert calls[0].replaces_id == 0
        assert all(c.replaces_id == first_id for c in calls[1:]), calls
        assert re.search(r"\d+ more$", calls[-1].body), calls[-1].body
    finally:
        monitor.close()


# ----------------------------------------------------------------------------- GJS
def test_gjs_example_prints_a_ban_as_an_ordinary_user(
    f2b: F2bSandbox,
    geo_daemon: DaemonProcess,
    system_bus: PrivateSystemBus,
    reader: TestUser,
) -> None:
    gjs = shutil.which("gjs")
    if gjs is None:
        pytest.skip("needs gjs (scripts/install-deps.sh installs it)")
    client = LiveProcess(
        _as_user(reader, [gjs, str(GJS_EXAMPLE), "1"]),
        env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": system_bus.address},
    )
    try:
        line, _ = client.wait_line("out", "^bangui-daemon .*active bans", 15)
        assert " 0 active bans in 2 jails" in line, line
        client.wait_line("out", "^watching for bans", 5)
        f2b.client("set", "sshd", "banip", GEO_IP)
        line, _ = client.wait_line("out", "^ban ", 10)
        assert line == f"ban sshd {GEO_IP} (SE AS29518) for 3600 s", line
        assert client.proc.wait(10) == 0
    finally:
        client.close()
