"""pytest fixtures over ``tests/harness``: real fail2ban, private system bus, users, daemon.

Fixtures
    system_bus (session)      PrivateSystemBus; sets DBUS_SYSTEM_BUS_ADDRESS
    test_users (session)      {"bgt-reader", "bgt-admin", "bgt-operator": TestUser}; skips if
                              not root; removed at the end when this session created them
    polkit                    a real polkitd on the bus with the project's actions and rules;
                              options: @pytest.mark.polkit_rules({"10-x.rules": "js"})
    f2b                       F2bSandbox, started; options: @pytest.mark.f2b_options(...)
    make_f2b                  factory: make_f2b(**F2bSandbox options) -> started sandbox
    start_daemon              factory: start_daemon(overrides=None, *, module=..., env=...,
                              ready_timeout=30, f2b=None, **sections) -> DaemonProcess
    daemon                    start_daemon() with @pytest.mark.daemon_config({...}) overrides
    busctl / gdbus            busctl(*args, user=None) / gdbus(cmd, *args, user=None) on the bus
    signal_monitor            factory: signal_monitor(user=None) -> started SignalMonitor
                              (dbus-monitor on /org/bangui/Daemon1; .wait_for(pred, timeout))

Everything started is stopped in teardown, also when the test failed; on failure the
tails of fail2ban's log and the daemon's output are printed ("Captured stdout teardown").
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

from tests.harness import bus as harness_bus
from tests.harness.bus import PrivateSystemBus, SignalMonitor
from tests.harness.daemon import DAEMON_MODULE, DaemonProcess, DaemonStopTimeoutError
from tests.harness.fail2ban import F2bSandbox
from tests.harness.polkit import PrivatePolkit
from tests.harness.users import AccountLease, TestUser
from tests.harness.util import tail

if TYPE_CHECKING:
    from pluggy import Result

_failed_key = pytest.StashKey[bool]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "f2b_options(**kwargs): options for the f2b fixture's F2bSandbox"
    )
    config.addinivalue_line(
        "markers", "daemon_config(overrides): config overrides for the daemon fixture"
    )
    config.addinivalue_line(
        "markers", "polkit_rules(rules): extra polkit rules files {name: js} for polkit"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Result[pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        item.stash[_failed_key] = True


def _test_failed(request: pytest.FixtureRequest) -> bool:
    return bool(request.node.stash.get(_failed_key, False))


# ---------------------------------------------------------------------- accounts
@pytest.fixture(scope="session")
def suite_accounts() -> Iterator[dict[str, TestUser] | None]:
    """The suite's users and group, held for the session (None when not root)."""
    if os.geteuid() != 0:
        yield None
        return
    lease = AccountLease()
    try:
        users = lease.acquire()
        yield users
    finally:
        lease.release()  # the last session on the machine removes what leases created


# ------------------------------------------------------------------------- bus
@pytest.fixture(scope="session")
def system_bus(suite_accounts: dict[str, TestUser] | None) -> Iterator[PrivateSystemBus]:
    """A private system-like dbus-daemon with the project's policy (session-wide).

    Depends on the accounts so that ``bangui-admin`` exists before the bus reads the
    policy's ``group="bangui-admin"``.
    """
    bus = PrivateSystemBus()
    try:
        bus.start()  # raises when the policy file was rejected ("Encountered error")
    except BaseException:
        bus.close()
        raise
    old = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
    try:
        yield bus
        bus.check_log()
    finally:
        if old is None:
            os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
        else:
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = old
        bus.close()


BusCli = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def busctl(system_bus: PrivateSystemBus) -> BusCli:
    """``busctl(*args, user=None, timeout=15)`` on the private bus (CompletedProcess)."""

    def run(
        *args: str, user: str | TestUser | None = None, timeout: float = 15.0
    ) -> subprocess.CompletedProcess[str]:
        return harness_bus.busctl(*args, user=user, address=system_bus.address, timeout=timeout)

    return run


@pytest.fixture
def gdbus(system_bus: PrivateSystemBus) -> BusCli:
    """``gdbus(command, *args, user=None, timeout=15)`` on the private bus."""

    def run(
        command: str, *args: str, user: str | TestUser | None = None, timeout: float = 15.0
    ) -> subprocess.CompletedProcess[str]:
        return harness_bus.gdbus(
            command, *args, user=user, address=system_bus.address, timeout=timeout
        )

    return run


@pytest.fixture
def signal_monitor(
    request: pytest.FixtureRequest, system_bus: PrivateSystemBus
) -> Iterator[Callable[..., SignalMonitor]]:
    """Factory for started ``SignalMonitor``s on the daemon's object; all stopped after."""
    monitors: list[SignalMonitor] = []

    def make(user: str | TestUser | None = None, **kwargs: Any) -> SignalMonitor:
        mon = SignalMonitor(system_bus.address, user=user, **kwargs)
        monitors.append(mon)
        mon.start()
        return mon

    yield make
    for mon in monitors:
        mon.stop()
    if _test_failed(request):
        print(f"--- dbus-daemon log:\n{tail(system_bus.log_path)}")


# ----------------------------------------------------------------------- users
@pytest.fixture(scope="session")
def test_users(suite_accounts: dict[str, TestUser] | None) -> dict[str, TestUser]:
    """``bgt-reader``, ``bgt-operator`` (no admin) and ``bgt-admin`` (in bangui-admin)."""
    if suite_accounts is None:
        pytest.skip("needs root to create the throw-away users bgt-reader/bgt-admin")
    return suite_accounts


# ---------------------------------------------------------------------- polkit
@pytest.fixture
def polkit(
    request: pytest.FixtureRequest, system_bus: PrivateSystemBus, test_users: dict[str, TestUser]
) -> Iterator[PrivatePolkit]:
    """polkitd on the private bus with polkit/ and the marker's rules; stopped after."""
    marker = request.node.get_closest_marker("polkit_rules")
    pk = PrivatePolkit(system_bus, dict(marker.args[0]) if marker else {})
    try:
        pk.start()
        yield pk
    finally:
        if _test_failed(request):
            print(f"--- polkitd log:\n{tail(pk.log_path)}")
        pk.close()


# -------------------------------------------------------------------- fail2ban
@pytest.fixture
def make_f2b(request: pytest.FixtureRequest) -> Iterator[Callable[..., F2bSandbox]]:
    """Factory: ``make_f2b(dbpurgeage=..., extra_jails=..., blocklist_ignoreip=...)``."""
    sandboxes: list[F2bSandbox] = []

    def make(**options: Any) -> F2bSandbox:
        sandbox = F2bSandbox(**options)
        sandboxes.append(sandbox)
        sandbox.start()
        return sandbox

    yield make
    failed = _test_failed(request)
    for sandbox in sandboxes:
        if failed:
            print(f"--- fail2ban.log ({sandbox.root}):\n{tail(sandbox.server_log)}")
        sandbox.close()


@pytest.fixture
def f2b(request: pytest.FixtureRequest, make_f2b: Callable[..., F2bSandbox]) -> F2bSandbox:
    """A started fail2ban sandbox (jails sshd + blocklist-import)."""
    marker = request.node.get_closest_marker("f2b_options")
    options = dict(marker.kwargs) if marker else {}
    return make_f2b(**options)


# ---------------------------------------------------------------------- daemon
class DaemonFactory:
    """``start_daemon(overrides=None, *, module, env, ready_timeout, f2b, **sections)``."""

    def __init__(self, f2b: F2bSandbox, bus: PrivateSystemBus) -> None:
        self.f2b = f2b
        self.bus = bus
        self.started: list[DaemonProcess] = []

    def __call__(
        self,
        overrides: Mapping[str, Any] | None = None,
        *,
        module: str = DAEMON_MODULE,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 30.0,
        f2b: F2bSandbox | None = None,
        **sections: Mapping[str, Any] | None,
    ) -> DaemonProcess:
        merged: dict[str, Any] = dict(overrides or {})
        merged.update(sections)
        daemon = DaemonProcess.from_sandbox(
            f2b or self.f2b, self.bus, merged, module=module, env=env
        )
        self.started.append(daemon)
        return daemon.start(ready_timeout)

    def close(self, failed: bool) -> None:
        errors: list[str] = []
        for daemon in self.started:
            if failed:
                print(
                    f"--- daemon output ({daemon.work_dir}):\n"
                    + "\n".join(daemon.output_lines[-60:])
                )
            try:
                if daemon.running:
                    daemon.stop()
            except DaemonStopTimeoutError as exc:
                errors.append(str(exc))
            finally:
                daemon.close()
        if errors:
            pytest.fail("daemon did not stop on SIGTERM:\n" + "\n".join(errors), pytrace=False)


@pytest.fixture
def start_daemon(
    request: pytest.FixtureRequest, f2b: F2bSandbox, system_bus: PrivateSystemBus
) -> Iterator[DaemonFactory]:
    """Factory starting the daemon (``python -m bangui_daemon --config ...``) until READY=1."""
    if os.geteuid() != 0:
        pytest.skip("the bus policy lets only root (or user bangui) own org.bangui.Daemon1")
    factory = DaemonFactory(f2b, system_bus)
    yield factory
    factory.close(_test_failed(request))


@pytest.fixture
def daemon(request: pytest.FixtureRequest, start_daemon: DaemonFactory) -> DaemonProcess:
    """The daemon under test, READY on the private bus, wired to the ``f2b`` sandbox."""
    marker = request.node.get_closest_marker("daemon_config")
    overrides: dict[str, Any] = {}
    if marker is not None:
        if marker.args:
            overrides.update(marker.args[0])
        overrides.update(marker.kwargs)
    return start_daemon(overrides)
