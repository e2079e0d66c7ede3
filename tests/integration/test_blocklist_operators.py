"""Blocklists as an operator runs them (issue 11): sources in the config file, banguictl
source commands, bans kept while listed, per-source schedules, a full-size ipsum list.

Real daemon, real fail2ban, real bus; lists are files below the daemon's file_dir.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.bus import PrivateSystemBus
from tests.harness.daemon import DaemonProcess, dump_toml
from tests.harness.fail2ban import F2bSandbox
from tests.harness.users import TestUser, run_as
from tests.harness.util import REPO_ROOT, wait_until
from tests.integration.blocklist_server import addresses
from tests.integration.dbus_calls import BLOCKLISTS, Runner, call, error_name

JAIL = "blocklist-import"
FAST = "fast-blocklist"  # a jail without actions: 120,000 bans in seconds

DaemonStarter = Callable[..., DaemonProcess]


def write_list(daemon_dir: Path, name: str, entries: list[str]) -> str:
    path = daemon_dir / name
    path.write_text("# test list\n" + "".join(f"{e}\n" for e in entries))
    return f"file://{path}"


def sources(busctl: Runner) -> dict[str, dict[str, Any]]:
    [found] = call(busctl, BLOCKLISTS, "ListSources")
    return {s["name"]: s for s in found}


def lists_dir(tmp_path: Path) -> Path:
    path = tmp_path / "lists"
    path.mkdir(exist_ok=True)
    return path


def rewrite_config(daemon: DaemonProcess, **blocklist: Any) -> None:
    assert daemon.config is not None
    daemon.config["blocklist"].update(blocklist)
    daemon.config_path.write_text(dump_toml(daemon.config))


# ------------------------------------------------------------ config-managed sources
def test_config_sources_appear_change_on_sighup_and_go_with_their_bans(
    f2b: F2bSandbox, start_daemon: DaemonStarter, busctl: Runner, gdbus: Runner, tmp_path: Path
) -> None:
    folder = lists_dir(tmp_path)
    a_url = write_list(folder, "a.txt", addresses(1, 5))
    b_url = write_list(folder, "b.txt", addresses(2, 5))
    daemon = start_daemon(
        blocklist={
            "file_dir": str(folder),
            "source": [{"name": "a", "url": a_url}, {"name": "b", "url": b_url}],
        }
    )
    found = sources(busctl)
    assert {"a", "b"} <= set(found)
    assert found["a"]["managed"] == "config"
    # the start-up import bans both lists
    wait_until(lambda: set(addresses(1, 5) + addresses(2, 5)) <= set(f2b.banned(JAIL)), 20, "bans")

    sid = f"uint32 {found['a']['id']}"
    name = error_name(gdbus, BLOCKLISTS, "UpdateSource", sid, "{'enabled': <false>}")
    assert name.endswith(".InvalidArgument")
    assert error_name(gdbus, BLOCKLISTS, "RemoveSource", sid).endswith(".InvalidArgument")

    # SIGHUP: b is gone from the config (its bans with it), a changes, c is new
    c_url = write_list(folder, "c.txt", addresses(3, 3))
    rewrite_config(
        daemon,
        source=[{"name": "a", "url": a_url, "interval": 3600}, {"name": "c", "url": c_url}],
    )
    daemon.reload()
    wait_until(lambda: "b" not in sources(busctl) and "c" in sources(busctl), 20, "reconciled")
    assert sources(busctl)["a"]["interval"] == 3600
    wait_until(lambda: not set(addresses(2, 5)) & set(f2b.banned(JAIL)), 20, "b's bans lifted")
    assert set(addresses(1, 5)) <= set(f2b.banned(JAIL))


# ------------------------------------------------------------------ banguictl source
def _ctl(system_bus: PrivateSystemBus, user: TestUser | None, *args: str) -> Any:
    python = sys.executable if user is None else "/usr/bin/python3"
    env = {"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    argv = [python, "-m", "bangui_daemon.cli.banguictl", "--bus", system_bus.address, "--json"]
    return run_as(user, [*argv, *args], env=env, timeout=60)


def test_banguictl_manages_sources_as_admin_only(
    f2b: F2bSandbox,
    daemon: DaemonProcess,
    system_bus: PrivateSystemBus,
    test_users: dict[str, TestUser],
    busctl: Runner,
) -> None:
    reader = test_users["bgt-reader"]
    url = "https://lists.example/one.txt"
    denied = _ctl(system_bus, reader, "source", "add", "one", url)
    assert denied.returncode == 1
    assert "access denied" in denied.stderr

    added = _ctl(system_bus, None, "source", "add", "one", url, "--disabled", "--interval", "6h")
    assert added.returncode == 0, added.stderr
    source_id = json.loads(added.stdout)["id"]
    found = sources(busctl)["one"]
    assert (found["enabled"], found["interval"]) == (False, 6 * 3600)

    for action, enabled in (("enable", True), ("disable", False)):
        done = _ctl(system_bus, None, "source", action, str(source_id))
        assert done.returncode == 0, done.stderr
        assert sources(busctl)["one"]["enabled"] is enabled
    renamed = _ctl(
        system_bus, None, "source", "update", str(source_id), "--name", "two",
        "--max-entries", "5000",
    )  # fmt: skip
    assert renamed.returncode == 0, renamed.stderr
    assert sources(busctl)["two"]["max_entries"] == 5000
    assert _ctl(system_bus, reader, "source", "remove", str(source_id)).returncode == 1
    assert _ctl(system_bus, None, "source", "remove", str(source_id)).returncode == 0
    assert "two" not in sources(busctl)
    listed = _ctl(system_bus, reader, "sources")
    assert listed.returncode == 0, listed.stderr


# ------------------------------------------------------------- bans stay enforced
@pytest.mark.f2b_options(extra_jails={FAST: {"action": "", "bantime": "3"}})
def test_lifted_bans_of_an_unchanged_list_are_reapplied(
    f2b: F2bSandbox, start_daemon: DaemonStarter, busctl: Runner, tmp_path: Path
) -> None:
    folder = lists_dir(tmp_path)
    entries = addresses(4, 6)
    url = write_list(folder, "l.txt", entries)
    start_daemon(blocklist={"file_dir": str(folder), "jail": FAST, "allowlist": ["45.4.0.6"]})
    entries.remove("45.4.0.6")  # allow-listed: never banned
    (source_id,) = call(busctl, BLOCKLISTS, "AddSource", "ssb", "l", url, "false")
    (first,) = call(busctl, BLOCKLISTS, "ImportSource", "u", str(source_id))
    assert first["status"] == "completed"
    assert set(f2b.banned(FAST)) == set(entries)

    # fail2ban lifts them all (bantime 3 s), and an admin unbans one by hand earlier
    f2b.client("set", FAST, "unbanip", entries[0])
    wait_until(lambda: not f2b.banned(FAST), 15, "the bans expired")
    (again,) = call(busctl, BLOCKLISTS, "ImportSource", "u", str(source_id))
    assert again["status"] == "unchanged"
    assert again["reapplied"] == len(entries)
    assert set(f2b.banned(FAST)) == set(entries)


# ------------------------------------------------------------- per-source schedule
def test_each_source_is_imported_on_its_own_interval(
    f2b: F2bSandbox, start_daemon: DaemonStarter, busctl: Runner, tmp_path: Path
) -> None:
    folder = lists_dir(tmp_path)
    quick = write_list(folder, "quick.txt", addresses(5, 2))
    slow = write_list(folder, "slow.txt", addresses(6, 2))
    daemon = start_daemon(
        blocklist={
            "file_dir": str(folder),
            "source": [
                {"name": "quick", "url": quick, "interval": 2},
                {"name": "slow", "url": slow, "interval": 6},
            ],
        }
    )
    by_name = sources(busctl)
    ids = {name: s["id"] for name, s in by_name.items()}

    def imports(name: str) -> int:
        return sum(
            1
            for r in daemon.log_records()
            if r.get("source_id") == ids[name]
            and r.get("event", "").startswith("blocklist_import_")
            and r.get("event") != "blocklist_import_lost_race"
        )

    [tasks] = call(busctl, "org.bangui.Daemon1", "ListTasks")
    task = next(t for t in tasks if t["name"] == "blocklist_import")
    assert task["interval"] == 2  # as often as the shortest source needs
    started = time.monotonic()
    wait_until(lambda: imports("quick") >= 4, 20, "four imports of the quick source")
    elapsed = time.monotonic() - started
    assert imports("slow") <= 1 + int(elapsed / 6) + 1, (imports("quick"), imports("slow"))
    assert imports("slow") < imports("quick")


# --------------------------------------------------------------- large real lists
@pytest.mark.f2b_options(extra_jails={FAST: {"action": "", "bantime": "1d"}})
def test_a_full_size_ipsum_list_imports_with_the_default_cap(
    f2b: F2bSandbox, start_daemon: DaemonStarter, busctl: Runner, tmp_path: Path
) -> None:
    folder = lists_dir(tmp_path)
    n = 120_000  # ipsum.txt's size today; the old default cap of 100,000 refused it all
    lines = [f"{45 + i // 60_000}.{i // 240 % 250}.{i % 240 + 1}.7\t{1 + i % 9}" for i in range(n)]
    path = folder / "ipsum.txt"
    path.write_text("# IPsum Threat Intelligence Feed\n" + "\n".join(lines) + "\n")
    start_daemon(blocklist={"file_dir": str(folder), "jail": FAST, "batch_size": 2000})
    (preview,) = call(busctl, BLOCKLISTS, "PreviewSource", "s", f"file://{path}")
    assert (preview["entries"], preview["over_limit"]) == (n, False)
    (source_id,) = call(busctl, BLOCKLISTS, "AddSource", "ssb", "ipsum", f"file://{path}", "false")

    def slow_busctl(*args: str, user: Any = None) -> Any:
        return busctl("--timeout=600", *args, user=user, timeout=600)

    (result,) = call(slow_busctl, BLOCKLISTS, "ImportSource", "u", str(source_id))
    assert (result["status"], result["entries"], result["added"]) == ("completed", n, n)
    assert len(f2b.banned(FAST)) == n


def test_an_oversized_list_names_its_size_and_the_key_to_raise(
    f2b: F2bSandbox, start_daemon: DaemonStarter, busctl: Runner, tmp_path: Path
) -> None:
    folder = lists_dir(tmp_path)
    url = write_list(folder, "big.txt", addresses(7, 30))
    start_daemon(blocklist={"file_dir": str(folder), "max_entries": 10})
    (preview,) = call(busctl, BLOCKLISTS, "PreviewSource", "s", url)
    assert (preview["entries"], preview["max_entries"], preview["over_limit"]) == (30, 10, True)
    (source_id,) = call(busctl, BLOCKLISTS, "AddSource", "ssb", "big", url, "false")
    (result,) = call(busctl, BLOCKLISTS, "ImportSource", "u", str(source_id))
    assert result["status"] == "failed"
    assert "more than 10 entries (31 lines)" in result["error"]
    assert "blocklist.max_entries" in result["error"]
    assert not f2b.banned(JAIL)


def test_a_preview_shows_which_lines_were_not_kept(
    f2b: F2bSandbox,
    start_daemon: DaemonStarter,
    busctl: Runner,
    system_bus: PrivateSystemBus,
    tmp_path: Path,
) -> None:
    folder = lists_dir(tmp_path)
    path = folder / "mixed.txt"
    kept = ["45.1.2.3\t3", "45.1.2.4\t2"]
    below = ["45.1.2.5\t1"]  # counted once: under ipsum_min_count = 2
    garbage = ["not-an-address", "45.1.2.300", "\x1b[31mred"]
    path.write_text("# ipsum-like\n" + "\n".join(kept + below + garbage) + "\n")
    start_daemon(blocklist={"file_dir": str(folder), "ipsum_min_count": 2})
    (preview,) = call(busctl, BLOCKLISTS, "PreviewSource", "s", f"file://{path}")
    assert (preview["entries"], preview["invalid"], preview["below_min_count"]) == (2, 3, 1)
    assert preview["invalid_sample"] == ["not-an-address", "45.1.2.300", "\\x1b[31mred"]
    argv = [sys.executable, "-m", "bangui_daemon.cli.banguictl", "--bus", system_bus.address]
    shown = run_as(None, [*argv, "preview", f"file://{path}"], timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "invalid:\n  not-an-address\n  45.1.2.300\n" in shown.stdout
