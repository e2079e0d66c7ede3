"""Non-ASCII text in replies under Debian bookworm's dbus-fast 1.84 (issue 9 fuzzing).

dbus-fast 1.84 writes a string's length in characters: a reply carrying "é" was
malformed and the bus dropped the daemon, which then exited. Any local user could do
it with Properties.Get (dbus-fast's own error quotes the name asked for). The daemon
here runs under /usr/bin/python3 whatever interpreter runs the tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.harness.bus import PrivateSystemBus
from tests.harness.daemon import DaemonProcess
from tests.harness.fail2ban import F2bSandbox
from tests.integration.dbus_calls import BLOCKLISTS, CORE
from tests.integration.fast_client import FastClient

INVALID = "org.bangui.Daemon1.Error.InvalidArgument"
DEBIAN_PYTHON = "/usr/bin/python3"


def sources(client: FastClient) -> list[dict[str, Any]]:
    reply = client.call(BLOCKLISTS, "ListSources")
    assert reply.error is None, reply
    return [{k: v.value for k, v in s.items()} for s in reply.body[0]]


def test_non_ascii_replies_keep_the_daemon_on_the_bus_under_debian_python(
    f2b: F2bSandbox, system_bus: PrivateSystemBus, fast_client: FastClient
) -> None:
    if not Path(DEBIAN_PYTHON).exists():
        pytest.skip(f"no {DEBIAN_PYTHON}")
    daemon = DaemonProcess.from_sandbox(f2b, system_bus, python=DEBIAN_PYTHON)
    try:
        daemon.start()
        reply = fast_client.call("org.freedesktop.DBus.Properties", "Get", "ss", CORE, "Vérsion")
        assert reply.error == "org.freedesktop.DBus.Error.UnknownProperty", reply
        assert "Vérsion" in reply.message
        reply = fast_client.call(
            BLOCKLISTS, "AddSource", "ssb", "Liste für Tests ✓", "file:///x", False
        )
        assert reply.error == INVALID, reply
        inside = f"file://{daemon.work_dir}/lists/straße.txt"
        reply = fast_client.call(BLOCKLISTS, "AddSource", "ssb", "Liste für Tests ✓", inside, False)
        assert reply.error is None, reply
        names = [s["name"] for s in sources(fast_client)]
        assert "Liste für Tests ✓" in names
        assert fast_client.ping()
        assert daemon.running
    finally:
        daemon.close()
