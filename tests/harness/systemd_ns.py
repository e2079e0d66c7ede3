"""A real systemd as PID 1 of private namespaces, managing one installed unit.

The machines this runs on do not boot systemd and have no systemd-nspawn; systemd
still runs as init of a PID + mount + UTS + network namespace started by `unshare`
(recipe: shared/recipes/systemd-in-namespace.md). It gets a unit path of its own
(stub targets, a target that wants the unit, a symlink to the installed unit file), so
no host unit, generator, tmpfiles or sysctl runs; a cgroup of its own; a tmpfs on
/run and /etc/systemd/system; and a read-only /proc/sys. The host's file system is
otherwise shared: files the service writes (its StateDirectory) land on the host.

Folders the service must reach may not lie below /tmp or /var/tmp (PrivateTmp=) or
/home and /root (ProtectHome=).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from functools import partial
from pathlib import Path

from tests.harness.util import HarnessError, StartedOnEnter, stop_process, wait_until

SYSTEMD = Path("/lib/systemd/systemd")
UNIT_DIR = Path("/lib/systemd/system")
CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
STUB_TARGETS: tuple[str, ...] = ("sysinit", "basic", "shutdown", "sockets", "timers", "paths")
STUB_TARGETS += ("slices", "local-fs", "network-online", "halt", "exit")
TARGET = "bangui-test.target"

_INIT_SCRIPT = """\
set -e
for cg in {cgroups}; do echo 0 > "$cg/cgroup.procs"; done
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /etc/systemd/system
for g in /usr/lib/systemd/system-generators /lib/systemd/system-generators; do
    if [ -d "$g" ]; then mount --bind "{empty}" "$g"; fi
done
mount --bind "{console}" /dev/console
mount --bind /proc/sys /proc/sys
mount -o remount,bind,ro /proc/sys
exec env -i container=bangui-test SYSTEMD_UNIT_PATH="{units}" \\
    PATH=/usr/sbin:/usr/bin:/sbin:/bin {systemd} --unit={target}
"""


def missing_tools() -> list[str]:
    """What this host lacks to run systemd in a namespace ([] when all is there)."""
    missing = [tool for tool in ("unshare", "nsenter", "systemctl") if not shutil.which(tool)]
    if not SYSTEMD.is_file():
        missing.append(str(SYSTEMD))
    if not _cgroup_roots():
        missing.append("a writable cgroup hierarchy (/sys/fs/cgroup)")
    return missing


def _cgroup_roots() -> list[Path]:
    """The hierarchies to join: hybrid (systemd + unified) or a pure cgroup v2."""
    hybrid = [root for root in CGROUP_ROOTS if root.is_dir()]
    if hybrid:
        return hybrid
    v2 = Path("/sys/fs/cgroup")
    return [v2] if (v2 / "cgroup.controllers").exists() else []


class NamespacedSystemd(StartedOnEnter):
    """systemd as init of fresh namespaces, with `unit` (installed) wanted at boot."""

    def __init__(self, unit: str, work_dir: Path) -> None:
        self.unit = unit
        self.work = work_dir / "systemd"
        self.name = f"bangui-test-{os.getpid()}-{time.monotonic_ns()}"
        self.cgroups = [root / self.name for root in _cgroup_roots()]
        self.proc: subprocess.Popen[bytes] | None = None
        self.init_pid = 0

    def start(self, timeout: float = 30.0) -> None:
        """Boot; return once systemd answers on its private socket."""
        units = self.work / "units"
        units.mkdir(parents=True)
        for name in STUB_TARGETS:
            (units / f"{name}.target").write_text("[Unit]\n")
        (units / TARGET).write_text(f"[Unit]\nWants={self.unit}\n")
        (units / self.unit).symlink_to(UNIT_DIR / self.unit)
        (self.work / "empty").mkdir()
        (self.work / "console").touch()
        for cgroup in self.cgroups:
            cgroup.mkdir()
        script = _INIT_SCRIPT.format(
            cgroups=" ".join(str(c) for c in self.cgroups),
            empty=self.work / "empty",
            console=self.work / "console",
            units=units,
            systemd=SYSTEMD,
            target=TARGET,
        )
        log = (self.work / "init.log").open("wb")
        with log:
            namespaces = ["--pid", "--fork", "--mount", "--mount-proc", "--uts", "--net"]
            self.proc = subprocess.Popen(
                ["unshare", *namespaces, "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.init_pid = wait_until(self._child_of_unshare, timeout, "the namespace's init")
        wait_until(
            lambda: self.systemctl("is-system-running").stdout.strip() not in ("", "offline"),
            timeout,
            f"systemd up in the namespace ({self.log_text()[-500:]})",
        )

    def _child_of_unshare(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise HarnessError(f"unshare exited {self.proc.returncode}: {self.log_text()}")
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            children = path.read_text().split()
            if children:
                pid = int(children[0])
                # systemd replaces the `sh` of the script: wait for the exec
                if Path(f"/proc/{pid}/exe").resolve() == SYSTEMD.resolve():
                    return pid
        return None

    def systemctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """`systemctl ARGS` against the namespace's systemd (never raises on its rc)."""
        enter = ["nsenter", "-t", str(self.init_pid), "-m", "-p", "-u", "-n"]
        return subprocess.run(
            [*enter, "systemctl", "--no-pager", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def show(self, *properties: str) -> dict[str, str]:
        """The unit's properties, e.g. show("ActiveState", "StatusText")."""
        out = self.systemctl("show", self.unit, *(f"--property={p}" for p in properties))
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return (self.work / "init.log").read_text(errors="replace")
        return ""

    def close(self) -> None:
        """Kill the namespace's init (everything in it dies too); remove its cgroups."""
        if self.init_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
        if self.proc is not None:
            stop_process(self.proc, 30, sig=None)  # unshare exits with the namespace's init
        for cgroup in self.cgroups:
            if cgroup.is_dir():
                wait_until(partial(_remove_cgroup, cgroup), 15, f"rmdir {cgroup}")


def _remove_cgroup(cgroup: Path) -> bool:
    """rmdir a cgroup tree deepest first; False while a dying process still holds one."""
    for dirpath, _dirs, _files in sorted(os.walk(cgroup), key=lambda d: -len(d[0])):
        with contextlib.suppress(FileNotFoundError):
            try:
                os.rmdir(dirpath)
            except OSError:
                return False
    return not cgroup.exists()
