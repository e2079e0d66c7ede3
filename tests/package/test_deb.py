"""The built .deb as a sysadmin gets it: upgrade, run under systemd, reinstall, purge.

Runs when scripts/check.sh points BANGUI_DEB_DIR at the packages scripts/build-deb.sh
built, as root, on a host where bangui-daemon is not installed. Service starts are
denied during the install (policy-rc.d); the *installed* unit then runs under a real
systemd in private namespaces (tests/harness/systemd_ns.py) against a sandboxed
fail2ban and a private system bus with the installed bus policy. Everything the
install created is gone after the purge, which the test checks path by path.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.bus import PrivateSystemBus, busctl
from tests.harness.daemon import dump_toml
from tests.harness.fail2ban import JAIL_SSHD, F2bSandbox
from tests.harness.systemd_ns import NamespacedSystemd, missing_tools
from tests.harness.users import group_exists
from tests.harness.util import wait_until

pytestmark = pytest.mark.integration

PACKAGE = "bangui-daemon"
UNIT = "bangui-daemon.service"
CONFIG = Path("/etc/bangui/bangui.toml")
STATE = Path("/var/lib/bangui")
POLICY = Path("/usr/share/dbus-1/system.d/org.bangui.Daemon1.conf")
POLICY_RC = Path("/usr/sbin/policy-rc.d")
ADMIN_GROUP = "bangui-admin"
MAN_PAGES = ("bangui-daemon", "banguictl", "bangui.toml", "bangui-daemon.dbus")
BANNED = "203.0.113.9"
ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
OBJECT = ("org.bangui.Daemon1", "/org/bangui/Daemon1", "org.bangui.Daemon1")


def run(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, env=ENV
    )


def ok(*argv: str, timeout: float = 300) -> str:
    result = run(*argv, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(argv)}: exit {result.returncode}\n" + (
        result.stdout[-3000:] + result.stderr[-3000:]
    )
    return result.stdout


def dpkg(*args: str) -> str:
    """Run dpkg, waiting while another dpkg or apt holds the lock (no apt: it is slow)."""

    def attempt() -> subprocess.CompletedProcess[str] | None:
        result = run("dpkg", "--force-confold", *args)
        return None if "lock" in result.stderr and result.returncode != 0 else result

    result = wait_until(attempt, 600, "the dpkg lock", max_interval=2)
    assert result.returncode == 0, f"dpkg {' '.join(args)}: exit {result.returncode}\n" + (
        result.stdout[-3000:] + result.stderr[-3000:]
    )
    return result.stdout


def installed_status() -> str:
    return run("dpkg-query", "-W", "-f=${db:Status-Status}", PACKAGE).stdout.strip()


@pytest.fixture(scope="module")
def deb() -> Path:
    """The built binary package; skips with the reason when this host cannot test it."""
    if os.geteuid() != 0:
        pytest.skip("installs a package and runs systemd in namespaces: needs root")
    folder = os.environ.get("BANGUI_DEB_DIR", "")
    if not folder:
        pytest.skip("BANGUI_DEB_DIR is not set (scripts/check.sh builds the .deb and sets it)")
    debs = sorted(Path(folder).glob(f"{PACKAGE}_*_all.deb"))
    if not debs:
        pytest.skip(f"no {PACKAGE}_*_all.deb in {folder}")
    tools = missing_tools() + [
        tool
        for tool in ("dpkg", "man", "fail2ban-server", "dbus-daemon", "busctl")
        if not shutil.which(tool)
    ]
    if tools:
        pytest.skip(f"missing: {', '.join(tools)}")
    if installed_status() not in ("", "not-installed", "config-files"):
        pytest.skip(f"{PACKAGE} is installed on this host: the test would replace it")
    for path in (Path("/etc/bangui"), STATE):
        if path.exists():
            pytest.skip(f"{path} exists on this host: the purge would delete it")
    return debs[-1]


@pytest.fixture
def deny_service_starts() -> Iterator[None]:
    """policy-rc.d exits 101 ("action forbidden") while the test installs."""
    created = not POLICY_RC.exists()
    if created:
        POLICY_RC.write_text("#!/bin/sh\n# temporary, written by tests/package\nexit 101\n")
        POLICY_RC.chmod(0o755)
    try:
        yield
    finally:
        if created:
            POLICY_RC.unlink()


def older_version(deb: Path, folder: Path) -> Path:
    """The same package as version 0.0.1, to install first and upgrade from."""
    tree = folder / "old"
    ok("dpkg-deb", "--raw-extract", str(deb), str(tree))
    control = tree / "DEBIAN" / "control"
    control.write_text(re.sub(r"(?m)^Version: .*$", "Version: 0.0.1", control.read_text()))
    old = folder / f"{PACKAGE}_0.0.1_all.deb"
    ok("dpkg-deb", "--root-owner-group", "--build", str(tree), str(old))
    shutil.rmtree(tree)
    return old


def check_installed_files() -> None:
    """Man pages, conffile, example config, completion, activation file, group, unit."""
    for page in MAN_PAGES:
        ok("man", "-w", page)
        text = ok("man", "-P", "cat", page)
        assert page in text
    assert ok("dpkg-query", "-W", "-f=${Conffiles}", PACKAGE).split()[0] == str(CONFIG)
    checked = ok("/usr/bin/bangui-daemon", "--check-config", "--config", str(CONFIG))
    # every key of the shipped example is commented out at its default
    assert checked == ok("/usr/bin/bangui-daemon", "--check-config", "--config", "/dev/null")
    assert (
        "complete -F _banguictl banguictl"
        in Path("/usr/share/bash-completion/completions/banguictl").read_text()
    )
    activation = Path("/usr/share/dbus-1/system-services/org.bangui.Daemon1.service")
    assert "SystemdService=bangui-daemon.service" in activation.read_text()
    assert "org.bangui.Daemon1" in activatable_names(activation.parent)
    assert group_exists(ADMIN_GROUP)
    verify = run("systemd-analyze", "verify", f"/lib/systemd/system/{UNIT}")
    assert verify.returncode == 0
    assert verify.stdout + verify.stderr == ""


ACTIVATION_BUS = """<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>
  <servicedir>{services}</servicedir>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="org.freedesktop.DBus"/>
    <allow receive_type="method_return"/>
  </policy>
</busconfig>
"""


def activatable_names(services: Path) -> str:
    """What a system-type dbus-daemon reading `services` offers to activate."""
    with tempfile.TemporaryDirectory() as tmp:
        socket = Path(tmp) / "bus"
        config = Path(tmp) / "bus.conf"
        config.write_text(ACTIVATION_BUS.format(socket=socket, services=services))
        bus = subprocess.Popen(
            ["dbus-daemon", f"--config-file={config}", "--nofork", "--nosyslog"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(socket.exists, 10, "the activation test bus")
            return ok("busctl", f"--address=unix:path={socket}", "list", "--activatable")
        finally:
            bus.terminate()
            bus.wait(10)


def run_installed_unit(work: Path) -> None:
    """The installed unit under a real systemd: running, STATUS=, a ban, reload, stop."""
    with (
        PrivateSystemBus([POLICY], base_dir=work / "bus") as bus,
        F2bSandbox(work / "f2b") as f2b,
    ):
        # as an admin would: the conffile, edited to point at this fail2ban and bus
        CONFIG.write_text(
            dump_toml(
                {
                    "fail2ban": {"socket": str(f2b.socket_path), "database": str(f2b.db_path)},
                    "dbus": {"bus": bus.address},
                    "tasks": {"ban_watch": 0.5},
                }
            )
        )
        with NamespacedSystemd(UNIT, work) as systemd:

            def running() -> dict[str, str] | None:
                props = systemd.show("ActiveState", "SubState", "StatusText", "Result")
                if props.get("ActiveState") == "failed":
                    raise AssertionError(f"{UNIT} failed: {props}\n{status(systemd)}")
                return props if props.get("SubState") == "running" else None

            props = wait_until(running, 60, f"{UNIT} active (running)")
            assert props["ActiveState"] == "active"
            assert "jails" in props["StatusText"], props

            f2b.client("set", JAIL_SSHD, "banip", BANNED)

            def listed() -> bool:
                call = ("call", *OBJECT, "ListBans", "suu", "", "0", "100")
                result = busctl(*call, address=bus.address)
                return result.returncode == 0 and f'"{BANNED}"' in result.stdout

            wait_until(listed, 20, f"{BANNED} in ListBans over the bus")

            reload = systemd.systemctl("reload", UNIT)
            assert reload.returncode == 0, reload.stderr + status(systemd)
            props = wait_until(running, 30, f"{UNIT} running after reload")
            assert props["Result"] == "success"

            stop = systemd.systemctl("stop", UNIT)
            assert stop.returncode == 0, stop.stderr + status(systemd)
            props = systemd.show("ActiveState", "Result", "ExecMainStatus")
            assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    # StateDirectory= is the host's /var/lib/bangui: the archive was created there
    assert (STATE / "archive.sqlite3").is_file()
    assert STATE.stat().st_mode & 0o777 == 0o750


def status(systemd: NamespacedSystemd) -> str:
    return "\n" + systemd.systemctl("status", UNIT).stdout


def test_package_upgrade_run_under_systemd_reinstall_purge(
    deb: Path, deny_service_starts: None
) -> None:
    group_before = group_exists(ADMIN_GROUP)
    paths = {
        os.path.normpath("/" + line.split(None, 5)[5].split(" -> ")[0])
        for line in ok("dpkg-deb", "-c", str(deb)).splitlines()
    }
    existed = {path for path in paths if os.path.lexists(path)}
    work = Path(tempfile.mkdtemp(prefix="bangui-pkgtest-", dir="/srv"))
    work.chmod(0o755)
    try:
        # an upgrade from an older version first, then the package as built
        dpkg("--install", str(older_version(deb, work)))
        assert installed_status() == "installed"
        dpkg("--install", str(deb))
        assert installed_status() == "installed"
        assert ok("dpkg-query", "-W", "-f=${Version}", PACKAGE) == deb.name.split("_")[1]
        assert set(map(os.path.normpath, ok("dpkg", "-L", PACKAGE).splitlines())) == paths
        check_installed_files()
        run_installed_unit(work)

        edited = CONFIG.read_text()
        dpkg("--install", str(deb))  # a reinstall: postinst configure OLD-VERSION
        assert installed_status() == "installed"
        assert CONFIG.read_text() == edited, "a reinstall must keep the admin's conffile"

        dpkg("--purge", PACKAGE)
        assert installed_status() in ("", "not-installed")
        dpkg("--purge", PACKAGE)  # purging again is a no-op, not an error
    finally:
        if installed_status() not in ("", "not-installed"):
            run("dpkg", "--purge", PACKAGE)
        if not group_before and group_exists(ADMIN_GROUP):
            run("groupdel", ADMIN_GROUP)
        shutil.rmtree(work, ignore_errors=True)
    left = sorted(path for path in paths if path not in existed and os.path.lexists(path))
    assert left == [], f"left behind by the purge: {left}"
    assert not Path("/etc/bangui").exists()
    assert not STATE.exists()
    assert not Path("/usr/lib/python3/dist-packages/bangui_daemon").exists()
    assert not list(Path("/etc/systemd/system").rglob(UNIT))
