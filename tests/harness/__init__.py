"""Test harness: real fail2ban, a private system-like D-Bus and polkitd, throw-away users,
the daemon.

Plain classes and functions with no pytest dependency, so that ``tests/conftest.py``
wraps them in fixtures and scripts (the demo) can drive the same pieces:

    with F2bSandbox() as f2b, PrivateSystemBus() as bus:
        with DaemonProcess.from_sandbox(f2b, bus) as daemon:
            ...

Only the standard library is imported here; the stub daemon (``stub_daemon``) is the
one module that needs dbus-fast.
"""

from __future__ import annotations

from tests.harness.bus import (
    BUS_NAME,
    OBJECT_PATH,
    PrivateSystemBus,
    SignalMonitor,
    busctl,
    gdbus,
)
from tests.harness.daemon import (
    DaemonProcess,
    DaemonStartError,
    Notification,
    build_config,
    dump_toml,
)
from tests.harness.fail2ban import F2bClient, F2bError, F2bSandbox
from tests.harness.polkit import PrivatePolkit
from tests.harness.users import (
    ADMIN_GROUP,
    ADMIN_USER,
    OPERATOR_USER,
    READER_USER,
    AccountLease,
    NotRootError,
    TestUser,
    run_as,
)
from tests.harness.util import REPO_ROOT, HarnessError, wait_until

__all__ = [
    "ADMIN_GROUP",
    "ADMIN_USER",
    "BUS_NAME",
    "OBJECT_PATH",
    "OPERATOR_USER",
    "READER_USER",
    "REPO_ROOT",
    "AccountLease",
    "DaemonProcess",
    "DaemonStartError",
    "F2bClient",
    "F2bError",
    "F2bSandbox",
    "HarnessError",
    "NotRootError",
    "Notification",
    "PrivatePolkit",
    "PrivateSystemBus",
    "SignalMonitor",
    "TestUser",
    "build_config",
    "busctl",
    "dump_toml",
    "gdbus",
    "run_as",
    "wait_until",
]
