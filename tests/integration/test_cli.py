"""`bangui-daemon`'s command line and start-up refusals (issue P1, config.md).

Runs ``python -m bangui_daemon`` (what the console script runs) as a process; the
start-up cases use the real bus and fail2ban so only the one thing under test is wrong.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from bangui_daemon import __version__
from bangui_daemon.archive.db import bundled_migrations
from tests.harness.bus import PrivateSystemBus
from tests.harness.daemon import DaemonProcess, DaemonStartError
from tests.integration.dbus_calls import CORE, Runner, call

REPO = Path(__file__).resolve().parents[2]
DaemonStarter = Callable[..., DaemonProcess]


def bangui_daemon(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bangui_daemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        check=False,
    )


def test_version() -> None:
    result = bangui_daemon("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"bangui-daemon {__version__}"


def test_check_config_prints_the_effective_config(tmp_path: Path) -> None:
    config = tmp_path / "bangui.toml"
    config.write_text(
        "[tasks]\ngeo_resolve = 30\n\n[geo]\nretention_days = 7\n\n"
        '[blocklist]\nallowlist = ["192.0.2.0/24", "2001:db8::1"]\n\n[log]\nlevel = "DEBUG"\n'
    )
    result = bangui_daemon("--check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    effective = tomllib.loads(result.stdout)
    assert set(effective) == {
        "fail2ban", "archive", "dbus", "tasks", "blocklist", "geo", "metrics", "crowdsec", "log"
    }  # fmt: skip
    assert effective["tasks"]["geo_resolve"] == 30
    assert effective["geo"]["retention_days"] == 7
    assert effective["blocklist"]["allowlist"] == ["192.0.2.0/24", "2001:db8::1/128"]
    assert effective["log"]["level"] == "debug"
    # the defaults of config.md for everything the file leaves out
    assert effective["fail2ban"]["socket"] == "/run/fail2ban/fail2ban.sock"
    assert effective["archive"] == {
        "path": "/var/lib/bangui/archive.sqlite3",
        "retention_days": 365,
    }
    assert effective["dbus"] == {"bus": "system", "admin_group": "bangui-admin"}
    assert effective["tasks"]["ban_watch"] == 2
    assert effective["geo"]["http_fallback"] is False

    # the printed config is itself a valid config with the same effect
    again = tmp_path / "effective.toml"
    again.write_text(result.stdout)
    second = bangui_daemon("--check-config", "--config", str(again))
    assert second.returncode == 0, second.stderr
    assert second.stdout == result.stdout


def test_check_config_names_every_bad_key(tmp_path: Path) -> None:
    config = tmp_path / "bangui.toml"
    config.write_text('[tasks]\nban_wach = 2\nhistory_sync = -5\n\n[geo]\nretention_days = "90"\n')
    result = bangui_daemon("--check-config", "--config", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    err = result.stderr
    assert "tasks.ban_wach" in err
    assert "did you mean tasks.ban_watch" in err
    assert "tasks.history_sync" in err
    assert "-5" in err
    assert "geo.retention_days" in err
    assert str(config) in err
    assert "Traceback" not in err


def test_check_config_of_a_missing_explicit_file_fails(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = bangui_daemon("--check-config", "--config", str(missing))
    assert result.returncode == 2
    assert f"{missing}: config file does not exist" in result.stderr


def test_daemon_refuses_to_start_with_a_bad_config(
    start_daemon: DaemonStarter, busctl: Runner
) -> None:
    with pytest.raises(DaemonStartError) as refused:
        start_daemon(tasks={"ban_watch": 0}, dbus={"admin_group": "bad group"}, ready_timeout=20)
    message = str(refused.value)
    assert "exit code 2" in message
    assert "tasks.ban_watch" in message
    assert "dbus.admin_group" in message
    assert "Traceback" not in message
    # it never reached the bus
    result = busctl("status", "org.bangui.Daemon1")
    assert result.returncode != 0


def test_second_daemon_on_the_same_bus_exits_and_the_first_keeps_running(
    start_daemon: DaemonStarter, busctl: Runner, system_bus: PrivateSystemBus
) -> None:
    first = start_daemon()
    with pytest.raises(DaemonStartError) as refused:
        start_daemon(ready_timeout=20)
    second = start_daemon.started[-1]  # type: ignore[attr-defined]
    assert second.returncode not in (0, None, -9)
    assert "org.bangui.Daemon1 is already owned" in str(refused.value)
    (record,) = [r for r in second.log_records() if r.get("event") == "daemon_start_failed"]
    assert record["level"] == "error"
    assert "already owned" in record["error"]

    assert first.running
    (status,) = call(busctl, CORE, "GetStatus")
    assert status["fail2ban_connected"] is True
    owner = busctl("--json=short", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                   "org.freedesktop.DBus", "GetConnectionUnixProcessID", "s",
                   "org.bangui.Daemon1")  # fmt: skip
    assert owner.returncode == 0, owner.stderr
    assert f"[{first.pid}]" in owner.stdout.replace(" ", "")


def test_archive_schema_newer_than_known_is_refused(
    start_daemon: DaemonStarter, tmp_path: Path
) -> None:
    archive = tmp_path / "archive.sqlite3"
    newer = bundled_migrations()[-1].version + 1
    with sqlite3.connect(archive) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (newer,))
    conn.close()
    with pytest.raises(DaemonStartError) as refused:
        start_daemon(archive={"path": str(archive)}, ready_timeout=20)
    message = str(refused.value)
    assert start_daemon.started[-1].returncode not in (0, None, -9)  # type: ignore[attr-defined]
    assert f"the archive schema is version {newer}, newer than" in message
    assert "upgrade bangui-daemon" in message
    assert "Traceback" not in message
    with sqlite3.connect(archive) as conn:  # untouched
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(newer,)]
    conn.close()


# ------------------------------------------------- paths that can never work (issue 9)
def test_check_config_names_every_impossible_path(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    under_file = tmp_path / "file" / "x"
    config = tmp_path / "bangui.toml"
    config.write_text(
        f'[fail2ban]\nsocket = "{under_file}"\ndatabase = "/proc/f2b.sqlite3"\n'
        f'[archive]\npath = "{under_file}"\n[blocklist]\nfile_dir = "{tmp_path / "file"}"\n'
        f'[geo]\ncountry_db = "/sys/c.mmdb"\nasn_db = "{tmp_path}"\n'
    )
    result = bangui_daemon("--check-config", "--config", str(config))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == "bangui-daemon: invalid configuration:"
    keys = [line.removeprefix(f"{config}: ").split(":")[0] for line in lines[1:]]
    assert keys == [
        "fail2ban.socket",
        "fail2ban.database",
        "archive.path",
        "blocklist.file_dir",
        "geo.country_db",
        "geo.asn_db",
    ]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("where", ["under_a_file", "proc", "name_too_long"])
def test_daemon_with_an_impossible_archive_path_exits_2_naming_it(
    start_daemon: DaemonStarter, busctl: Runner, tmp_path: Path, where: str
) -> None:
    (tmp_path / "file").write_text("")
    path, reason = {
        "under_a_file": (tmp_path / "file" / "archive.sqlite3", "is not a directory"),
        "proc": (Path("/proc/archive.sqlite3"), "must not be under /proc"),
        # stat() cannot judge it: the start finds it, and says so the same way
        "name_too_long": (tmp_path / ("x" * 300) / "a.sqlite3", "File name too long"),
    }[where]
    with pytest.raises(DaemonStartError) as refused:
        start_daemon(archive={"path": str(path)}, ready_timeout=20)
    message = str(refused.value)
    assert "exit code 2" in message
    output = start_daemon.started[-1].output_lines  # type: ignore[attr-defined]
    problems = [line for line in output if "archive.path: " in line]
    assert len(problems) == 1, output
    assert reason in problems[0]
    assert "invalid configuration" in message
    assert "Traceback" not in message
    assert busctl("status", "org.bangui.Daemon1").returncode != 0  # never reached the bus
