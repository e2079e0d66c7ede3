"""A real polkitd on the private bus, with the project's actions and rules only.

polkitd reads actions from /usr/share/polkit-1/actions and rules from
/usr/share/polkit-1/rules.d and /etc/polkit-1/rules.d, with no option to point it
elsewhere. It is therefore started in a private mount namespace (``unshare -m``) in
which those three directories are bind mounts of a temp dir holding ``polkit/`` of
this repo plus the test's extra rules: the host's polkit files are neither read nor
touched, and the mounts vanish with the process. polkitd drops to the ``polkitd``
user, so the temp dir is world-readable. Needs root (CAP_SYS_ADMIN for the mounts)
and Debian's ``polkitd`` package; polkitd's own bus policy is added to the bus.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tests.harness.bus import PrivateSystemBus, busctl
from tests.harness.util import REPO_ROOT, HarnessError, StartedOnEnter, stop_process, wait_until

POLKITD = Path("/usr/lib/polkit-1/polkitd")
POLKIT_BUS_POLICY = Path("/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf")
POLKIT_NAME = "org.freedesktop.PolicyKit1"
ACTIONS_FILE = REPO_ROOT / "polkit" / "org.bangui.Daemon1.policy"
RULES_FILE = REPO_ROOT / "polkit" / "50-org.bangui.Daemon1.rules"


class PrivatePolkit(StartedOnEnter):
    """polkitd serving ``bus`` with our action file, our rules file and ``extra_rules``."""

    def __init__(
        self,
        bus: PrivateSystemBus,
        extra_rules: Mapping[str, str] | None = None,
        *,
        shipped_rules: bool = True,
    ) -> None:
        self.bus = bus
        self.extra_rules = dict(extra_rules or {})
        self.shipped_rules = shipped_rules
        self.root = Path(tempfile.mkdtemp(prefix="bgt-polkit-"))
        self.log_path = self.root / "polkitd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _name_owned(self) -> bool:
        r = busctl(
            "call", "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
            "NameHasOwner", "s", POLKIT_NAME, address=self.bus.address,
        )  # fmt: skip
        if r.returncode != 0:
            raise HarnessError(f"NameHasOwner failed: {r.stderr.strip()}")
        return r.stdout.strip() == "b true"

    def start(self, timeout: float = 10.0) -> None:
        """Start polkitd and return once it owns org.freedesktop.PolicyKit1."""
        if not POLKITD.exists():
            raise HarnessError(f"{POLKITD} not found (apt-get install polkitd)")
        if self._name_owned():
            raise HarnessError(f"{POLKIT_NAME} is already owned on the test bus")
        if not (self.bus.policy_dir / POLKIT_BUS_POLICY.name).exists():
            self.bus.add_policy(POLKIT_BUS_POLICY)
        actions, rules, etc_rules = (self.root / d for d in ("actions", "rules.d", "etc-rules.d"))
        for d in (self.root, actions, rules, etc_rules):
            d.mkdir(exist_ok=True)
            d.chmod(0o755)
        shutil.copyfile(ACTIONS_FILE, actions / ACTIONS_FILE.name)
        if self.shipped_rules:
            shutil.copyfile(RULES_FILE, rules / RULES_FILE.name)
        for name, text in self.extra_rules.items():
            (rules / name).write_text(text)
        for f in [*actions.iterdir(), *rules.iterdir()]:
            f.chmod(0o644)
        script = (
            f"mount --bind {actions} /usr/share/polkit-1/actions && "
            f"mount --bind {rules} /usr/share/polkit-1/rules.d && "
            f"mount --bind {etc_rules} /etc/polkit-1/rules.d && "
            f"exec env DBUS_SYSTEM_BUS_ADDRESS={self.bus.address} {POLKITD}"
        )
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise HarnessError(f"polkitd exited with {self.proc.returncode}: {self.log_text()}")
            return self._name_owned()

        wait_until(up, timeout, f"polkitd to own {POLKIT_NAME}")
        # like dbus-daemon, polkitd skips a broken rules file with only a log line
        if "Error " in self.log_text():
            raise HarnessError(f"polkitd rejected a rules file:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polkitd and wait until its name is gone from the bus."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        stop_process(proc, timeout)
        if self.bus.running:
            wait_until(lambda: not self._name_owned(), timeout, f"{POLKIT_NAME} to be released")

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
