"""banguictl's bash completion asks the running daemon for jail and task names."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from scripts.docgen.completion import bash_completion
from tests.harness.bus import PrivateSystemBus
from tests.harness.completion import complete
from tests.harness.daemon import DaemonProcess
from tests.harness.fail2ban import F2bSandbox
from tests.harness.util import REPO_ROOT

TASKS = {"ban_watch", "history_sync", "history_purge", "blocklist_import", "geo_resolve"}


def test_completion_offers_the_daemons_jails_and_tasks(
    f2b: F2bSandbox, daemon: DaemonProcess, system_bus: PrivateSystemBus, tmp_path: Path
) -> None:
    # the real client, as the package installs it on PATH
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ctl = bin_dir / "banguictl"
    ctl.write_text(f'#!/bin/sh\nexec {sys.executable} -m bangui_daemon.cli.banguictl "$@"\n')
    ctl.chmod(0o755)
    script = tmp_path / "completion"
    script.write_text(bash_completion())
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PYTHONPATH": str(REPO_ROOT),
        "DBUS_SYSTEM_BUS_ADDRESS": system_bus.address,
        "HOME": os.environ.get("HOME", "/root"),
    }

    assert sorted(complete(script, "_banguictl", "banguictl ban ", env)) == sorted(f2b.jails)
    assert complete(script, "_banguictl", "banguictl bans --jail ss", env) == ["sshd"]
    assert set(complete(script, "_banguictl", "banguictl run ", env)) >= TASKS
    # the bus given on the line is the one asked
    other = f"banguictl --bus unix:path={tmp_path}/absent ban "
    assert complete(script, "_banguictl", other, env) == []
