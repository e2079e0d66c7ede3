"""Fixtures shared by the integration tests that call the daemon many times cheaply.

module_daemon (module)   one fail2ban sandbox and one daemon for a whole test module:
                         for tests that only read, or write what no other test in the
                         module looks at (the fuzz tests, the D-Bus edge tests)
fast_client (module)     a dbus-fast `FastClient` on the private bus, one connection
lists                    a blocklist HTTP server on 127.0.0.1 (blocklist_server.py)
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.harness.bus import PrivateSystemBus
from tests.harness.daemon import DaemonProcess
from tests.harness.fail2ban import F2bSandbox
from tests.harness.util import tail
from tests.integration.blocklist_server import ListServer, serving
from tests.integration.fast_client import FastClient


@pytest.fixture(scope="module")
def module_daemon(system_bus: PrivateSystemBus) -> Iterator[DaemonProcess]:
    if os.geteuid() != 0:
        pytest.skip("the bus policy lets only root (or user bangui) own org.bangui.Daemon1")
    sandbox = F2bSandbox()
    try:
        sandbox.start()
        daemon = DaemonProcess.from_sandbox(sandbox, system_bus)
        try:
            yield daemon.start()
            if not daemon.running:  # died during the module: show why
                print("--- daemon output:\n" + "\n".join(daemon.output_lines[-60:]))
                print(f"--- fail2ban.log:\n{tail(sandbox.server_log)}")
        finally:
            daemon.close()
    finally:
        sandbox.close()


@pytest.fixture(scope="module")
def fast_client(system_bus: PrivateSystemBus) -> Iterator[FastClient]:
    client = FastClient(system_bus.address)
    yield client
    client.close()


@pytest.fixture
def lists() -> Iterator[ListServer]:
    with serving() as server:
        yield server
