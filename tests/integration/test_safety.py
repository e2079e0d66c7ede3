"""BanIp keeps every never-ban rule, as they stand at the moment of the ban (issue 9).

fail2ban's own ``banip`` does not consult ``ignoreip``; the daemon must. And the
host's addresses are the ones it has now, not at start: the daemon runs in a network
namespace of its own (``unshare --net``; the bus, fail2ban and the notify socket are
path-based unix sockets, reachable from there), and the test gives that namespace a
new address while the daemon runs. The host's real interfaces are never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.bus import PrivateSystemBus
from tests.harness.daemon import DaemonProcess
from tests.harness.fail2ban import F2bSandbox
from tests.harness.util import wait_until
from tests.integration.dbus_calls import CORE, DEST, PATH, Runner, call

REFUSED = "org.bangui.Daemon1.Error.Refused"


def refusal(gdbus: Runner, jail: str, ip: str) -> str:
    """BanIp's error as ``NAME: message`` (fails when the ban went through)."""
    result = gdbus(
        "call", "--dest", DEST, "--object-path", PATH, "--method", f"{CORE}.BanIp", jail, ip
    )
    assert result.returncode != 0, f"BanIp {ip} went through: {result.stdout}"
    return result.stderr.split("GDBus.Error:", 1)[-1].strip()


@pytest.mark.f2b_options(ignoreip="45.98.0.0/24")
def test_banip_refuses_what_the_jails_ignoreip_protects(
    f2b: F2bSandbox, daemon: DaemonProcess, busctl: Runner, gdbus: Runner
) -> None:
    assert refusal(gdbus, "sshd", "45.98.0.7").startswith(f"{REFUSED}: ")
    assert "ignoreip" in refusal(gdbus, "sshd", "45.98.0.7")
    # An ignoreip changed at run time counts from the next ban on.
    f2b.cli("set", "sshd", "addignoreip", "45.97.0.5")
    assert "ignoreip" in refusal(gdbus, "sshd", "45.97.0.5")
    assert call(busctl, CORE, "BanIp", "ss", "sshd", "45.97.0.6") == [True]
    wait_until(lambda: f2b.dummy_actions("sshd") == ["+45.97.0.6"], 10, "the one ban")
    assert f2b.banned("sshd") == ["45.97.0.6"]


def _netns_usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a network namespace"
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(
        ["unshare", "--net", "ip", "link", "add", "bgt0", "type", "veth", "peer", "bgt1"],
        capture_output=True,
        check=False,
    )
    return None if probe.returncode == 0 else "cannot create a network namespace here"


def test_banip_refuses_an_address_the_host_gains_while_running(
    f2b: F2bSandbox, system_bus: PrivateSystemBus, busctl: Runner, gdbus: Runner, tmp_path: Path
) -> None:
    skip = _netns_usable()
    if skip:
        pytest.skip(skip)
    wrapper = tmp_path / "python-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec unshare --net -- {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    v4, v6 = "45.77.0.9", "2a01:4f8:77::9"
    with DaemonProcess.from_sandbox(f2b, system_bus, python=str(wrapper)) as daemon:
        # Not the host's yet: banned, then lifted again.
        assert call(busctl, CORE, "BanIp", "ss", "sshd", v4) == [True]
        assert call(busctl, CORE, "UnbanIp", "ss", "", v4) == [1]  # jails it left

        def in_daemon_netns(*argv: str) -> None:
            subprocess.run(["nsenter", "-t", str(daemon.pid), "-n", *argv], check=True)

        in_daemon_netns("ip", "link", "add", "bgt0", "type", "veth", "peer", "bgt1")
        in_daemon_netns("ip", "link", "set", "bgt0", "up")
        in_daemon_netns("ip", "addr", "add", f"{v4}/24", "dev", "bgt0")
        in_daemon_netns("ip", "-6", "addr", "add", f"{v6}/64", "dev", "bgt0", "nodad")

        assert "host_address" in refusal(gdbus, "sshd", v4)
        assert "host_address" in refusal(gdbus, "sshd", v6)
        assert call(busctl, CORE, "BanIp", "ss", "sshd", "45.77.1.9") == [True]
        wait_until(lambda: len(f2b.dummy_actions("sshd")) == 3, 10, "the three actions")
        assert f2b.dummy_actions("sshd") == [f"+{v4}", f"-{v4}", "+45.77.1.9"]
        assert f2b.banned("sshd") == ["45.77.1.9"]
