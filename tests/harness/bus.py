"""A private dbus-daemon that behaves like the system bus, and the CLI clients for it.

The bus config mirrors /usr/share/dbus-1/system.conf: ``<type>system</type>``, EXTERNAL
auth, deny own/method calls by default, signals and expected replies allowed, root may
monitor, and an ``<includedir>`` holding a *copy* of the project's policy file(s). No
activation, no fork, no syslog, no ``<user>`` switch.

dbus-daemon skips a malformed policy file with only an ``Encountered error`` line on
stderr, so ``start()`` fails when that line shows up. The socket lives in a
``mkdtemp`` dir made 0755 so that unprivileged clients (``runuser -u bgt-reader``) can
reach it (pytest's ``tmp_path`` is below a 0700 dir).
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from tests.harness.users import TestUser
from tests.harness.util import (
    REPO_ROOT,
    HarnessError,
    HarnessTimeoutError,
    StartedOnEnter,
    stop_process,
)

BUS_NAME = "org.bangui.Daemon1"
OBJECT_PATH = "/org/bangui/Daemon1"
POLICY_FILE = REPO_ROOT / "dbus-policy" / "org.bangui.Daemon1.conf"
INTERFACE_XML = REPO_ROOT / "dbus-policy" / "org.bangui.Daemon1.xml"
CONFIG_ERROR = "Encountered error"

_BUS_CONF = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<!-- written by tests/harness/bus.py: the policy of /usr/share/dbus-1/system.conf on a
     private socket; no <user>, <fork/>, pidfile, syslog or service activation -->
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>

  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus.Debug.Stats"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.systemd1.Activator"/>
  </policy>

  <!-- root may monitor (busctl monitor, dbus-monitor use BecomeMonitor) -->
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>

  <includedir>{policy_dir}</includedir>
</busconfig>
"""


def _read_line(fd: int, timeout: float) -> str:
    """Read one line from a pipe fd with a deadline (EOF or timeout: what we have)."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").split("\n", 1)[0].strip()


class PrivateSystemBus(StartedOnEnter):
    """A dbus-daemon with system-bus semantics on a private socket."""

    def __init__(
        self,
        policy_files: Sequence[str | Path] | None = None,
        *,
        base_dir: str | Path | None = None,
        keep: bool = False,
    ) -> None:
        self.policy_files = [Path(p) for p in (policy_files or [POLICY_FILE])]
        created = base_dir is None
        self.root = Path(tempfile.mkdtemp(prefix="bgt-bus-") if created else str(base_dir))
        self.root = self.root.resolve()
        self._owns_dir = created
        self.keep = keep
        self.policy_dir = self.root / "system.d"
        self.socket_path = self.root / "system_bus_socket"
        self.config_path = self.root / "bus.conf"
        self.log_path = self.root / "dbus-daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> str:
        """Write the config, copy the policy files, start dbus-daemon; return the address."""
        daemon = shutil.which("dbus-daemon")
        if daemon is None:
            raise HarnessError("dbus-daemon not found (apt-get install dbus-daemon)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        self.policy_dir.mkdir(exist_ok=True)
        for policy in self.policy_files:
            if not policy.is_file():
                raise HarnessError(f"policy file {policy} does not exist")
            shutil.copyfile(policy, self.policy_dir / policy.name)
        self.config_path.write_text(
            _BUS_CONF.format(socket=self.socket_path, policy_dir=self.policy_dir)
        )
        read_fd, write_fd = os.pipe()
        try:
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [
                        daemon,
                        f"--config-file={self.config_path}",
                        "--nofork",
                        "--nosyslog",
                        f"--print-address={write_fd}",
                    ],
                    pass_fds=(write_fd,),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            os.close(write_fd)
            write_fd = -1
            # dbus-daemon prints the address once it listens: no sleep, no poll
            self.address = _read_line(read_fd, timeout)
        finally:
            os.close(read_fd)
            if write_fd >= 0:
                os.close(write_fd)
        if not self.address.startswith("unix:"):
            self.stop()
            raise HarnessError(f"dbus-daemon did not start: {self.log_text()}")
        try:
            self.check_log()
        except HarnessError:
            self.stop()
            raise
        return self.address

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def check_log(self) -> None:
        """Raise if dbus-daemon skipped a config/policy file."""
        log = self.log_text()
        if CONFIG_ERROR in log:
            raise HarnessError(f"dbus-daemon rejected a config file:\n{log}")

    def rejections(self) -> list[str]:
        """The ``Rejected send message`` (etc.) lines dbus-daemon logged so far."""
        return [ln for ln in self.log_text().splitlines() if "Rejected" in ln]

    def reload(self) -> None:
        """Make dbus-daemon re-read its config (synchronous ReloadConfig)."""
        r = busctl(
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "ReloadConfig",
            address=self.address,
        )
        if r.returncode != 0:
            raise HarnessError(f"ReloadConfig failed: {r.stderr.strip()}")
        self.check_log()

    def add_policy(self, path: str | Path) -> None:
        """Copy one more policy file into the include dir and reload."""
        shutil.copyfile(path, self.policy_dir / Path(path).name)
        self.reload()

    def stop(self, timeout: float = 10.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        return stop_process(proc, timeout)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self._owns_dir and not self.keep:
                shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------ CLI clients
def _address(address: str | None) -> str:
    addr = address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS", "")
    if not addr:
        raise HarnessError("no bus address: pass address= or start the system_bus fixture")
    return addr


def _as_user(user: str | TestUser | None, argv: list[str]) -> list[str]:
    if user is None:
        return argv
    name = user.name if isinstance(user, TestUser) else user
    return ["runuser", "-u", name, "--", *argv]


def _exec_as_user(user: str | TestUser | None, argv: list[str]) -> list[str]:
    """Like ``_as_user`` but with setpriv, which execs instead of forking: the pid is the
    command's own, so a SIGTERM ends it at once (runuser forwards it, then sleeps 2 s)."""
    if user is None:
        return argv
    name = user.name if isinstance(user, TestUser) else user
    return ["setpriv", f"--reuid={name}", f"--regid={name}", "--init-groups", "--", *argv]


def busctl(
    *args: str,
    user: str | TestUser | None = None,
    address: str | None = None,
    timeout: float = 15.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``busctl --address=ADDR ARGS`` (as ``user`` via runuser); never raises on rc."""
    argv = _as_user(user, ["busctl", f"--address={_address(address)}", *args])
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd="/"
    )


def gdbus(
    command: str,
    *args: str,
    user: str | TestUser | None = None,
    address: str | None = None,
    timeout: float = 15.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``gdbus COMMAND --address ADDR ARGS`` (as ``user`` via runuser)."""
    argv = _as_user(user, ["gdbus", command, "--address", _address(address), *args])
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd="/"
    )


LinePredicate = Callable[[str], bool] | str | re.Pattern[str]


def _matcher(predicate: LinePredicate) -> Callable[[str], bool]:
    if isinstance(predicate, str):
        text = predicate
        return lambda line: text in line
    if isinstance(predicate, re.Pattern):
        pattern = predicate
        return lambda line: pattern.search(line) is not None
    return predicate


_HEADER = re.compile(
    r"^(?P<kind>signal|method call|method return|error) time=\S+ sender=(?P<sender>\S+) "
    r"-> destination=(?P<dest>.+?) serial=\d+"
    r"(?: path=(?P<path>[^;]*); interface=(?P<interface>[^;]*); member=(?P<member>\S+))?"
)


@dataclass(frozen=True)
class BusMessage:
    """One message as printed by dbus-monitor: header fields and its argument lines."""

    kind: str
    sender: str
    path: str
    interface: str
    member: str
    args: tuple[str, ...]

    @property
    def line(self) -> str:
        """One line per message, gdbus-monitor style: ``PATH: IFACE.Member (args)``."""
        return f"{self.path}: {self.interface}.{self.member} ({', '.join(self.args)})"


_STANDARD_SIGNAL_ARGS = {
    ("org.freedesktop.DBus", "NameAcquired"): 1,
    ("org.freedesktop.DBus", "NameLost"): 1,
    ("org.freedesktop.DBus", "NameOwnerChanged"): 3,
    ("org.freedesktop.DBus.Properties", "PropertiesChanged"): 3,
}


def signal_arg_counts(xml_path: Path = INTERFACE_XML) -> dict[tuple[str, str], int]:
    """``(interface, member) -> number of arguments`` of every signal in an XML file."""
    counts = dict(_STANDARD_SIGNAL_ARGS)
    try:
        root = ElementTree.parse(xml_path).getroot()
    except (OSError, ElementTree.ParseError):
        return counts
    for iface in root.iter("interface"):
        for sig in iface.iter("signal"):
            counts[(iface.get("name", ""), sig.get("name", ""))] = len(sig.findall("arg"))
    return counts


def _top_level_args(lines: list[str]) -> tuple[int, bool]:
    """Count the top-level arguments after a header line; also: are containers closed?"""
    depth = 0
    count = 0
    for raw in lines[1:]:
        text = raw.strip()
        if not text:
            continue
        if text in ("]", "}", ")"):
            depth -= 1
            continue
        if depth == 0:
            count += 1
        if text.endswith(("[", "{", "(")):
            depth += 1
    return count, depth == 0


def _parse_message(lines: list[str]) -> BusMessage | None:
    m = _HEADER.match(lines[0])
    if m is None:
        return None
    args: list[str] = []
    for raw in lines[1:]:
        text = " ".join(raw.split())
        if not text:
            continue
        # container contents ("array [", items, "]") are folded into one argument
        if args and (raw.startswith("      ") or text in ("]", ")", "}")):
            args[-1] = f"{args[-1]} {text}"
        else:
            args.append(text)
    return BusMessage(
        m["kind"],
        m["sender"],
        m["path"] or "",
        m["interface"] or "",
        m["member"] or "",
        tuple(args),
    )


class SignalMonitor(StartedOnEnter):
    """``dbus-monitor`` for the signals of the daemon's object, read by a thread.

    Usage::

        with SignalMonitor(bus.address) as mon:      # returns once the match is active
            ...trigger...
            line = mon.wait_for("BanAdded", timeout=10)

    Each signal becomes one line ``/org/bangui/Daemon1: org.bangui.Daemon1.BanAdded
    (string "sshd", string "192.0.2.1", int64 1700000000, int64 600)``. ``wait_for``
    only looks at lines after the previous match, so waits in a row follow the stream.

    dbus-monitor prints a message's header and arguments without a terminator; a
    signal is complete once it has as many arguments as the contract XML
    (``dbus-policy/org.bangui.Daemon1.xml``) declares. Why dbus-monitor and not
    ``gdbus monitor``: GLib 2.74 (bookworm) filters signals
    from a well-known name against a name owner it looks up asynchronously, and drops
    signals that arrive first; nothing it prints tells when that lookup is done (a
    quarter of early signals were lost in a loop test). dbus-monitor installs its match
    (root: BecomeMonitor; others: AddMatch) with blocking calls before it dispatches
    anything, so its first printed message (``NameAcquired``) proves the match is live.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        dest: str = BUS_NAME,
        object_path: str = OBJECT_PATH,
        user: str | TestUser | None = None,
    ) -> None:
        self.address = _address(address)
        self.dest = dest
        self.object_path = object_path
        self.user = user
        self.proc: subprocess.Popen[bytes] | None = None
        self.messages: list[BusMessage] = []
        self.raw: list[str] = []
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._cursor = 0
        self._ready = False
        self._eof = False
        self._thread: threading.Thread | None = None
        self._arg_counts = signal_arg_counts()

    def _complete(self, block: list[str]) -> bool:
        """Whether ``block`` holds a whole message (its signal's arguments all printed)."""
        m = _HEADER.match(block[0])
        if m is None or m["kind"] != "signal":
            return False
        expected = self._arg_counts.get((m["interface"] or "", m["member"] or ""))
        if expected is None:
            return False  # unknown signal: complete when the next message starts
        count, closed = _top_level_args(block)
        return closed and count >= expected

    def start(self, timeout: float = 10.0) -> None:
        rule = f"type='signal',sender='{self.dest}',path='{self.object_path}'"
        argv = _exec_as_user(self.user, ["dbus-monitor", "--address", self.address, rule])
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd="/",
            start_new_session=True,
        )
        self._thread = threading.Thread(target=self._reader, name="dbus-monitor", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._ready:
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    raise HarnessError("dbus-monitor did not start:\n" + "\n".join(self.raw))
                self._cond.wait(remaining)

    def _add(self, block: list[str]) -> None:
        """Record one complete message (called with the lock held)."""
        msg = _parse_message(block)
        if msg is None:
            return
        if msg.sender == "org.freedesktop.DBus":
            # NameAcquired/NameLost for our own connection: the match is installed
            self._ready = True
        elif msg.kind == "signal" and msg.path == self.object_path:
            self.messages.append(msg)
            self._lines.append(msg.line)
        self._cond.notify_all()

    def _reader(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        pending = ""
        block: list[str] = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk.decode(errors="replace")
            *complete, pending = pending.split("\n")
            with self._cond:
                self.raw.extend(complete)
                for line in complete:
                    if line and not line[0].isspace() and block:
                        self._add(block)
                        block = []
                    if line:
                        block.append(line)
                        if self._complete(block):
                            self._add(block)
                            block = []
        with self._cond:
            if block:
                self._add(block)
            self._eof = True
            self._cond.notify_all()

    @property
    def lines(self) -> list[str]:
        """One line per signal of the daemon's object seen so far."""
        with self._cond:
            return list(self._lines)

    def signals(self, member: str | None = None) -> list[BusMessage]:
        """The signals seen so far (only ``member`` if given)."""
        with self._cond:
            return [m for m in self.messages if member is None or m.member == member]

    def wait_for(self, predicate: LinePredicate, timeout: float = 10.0) -> str:
        """Return the next signal line (after the previous match) matching ``predicate``.

        ``predicate``: a substring, a compiled regex, or a callable on the line.
        """
        match = _matcher(predicate)
        deadline = time.monotonic() + timeout
        with self._cond:
            index = self._cursor
            while True:
                while index < len(self._lines):
                    line = self._lines[index]
                    index += 1
                    if match(line):
                        self._cursor = index
                        return line
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    state = "dbus-monitor exited" if self._eof else f"{timeout:g}s passed"
                    seen = "\n".join(self.raw[-30:])
                    raise HarnessTimeoutError(f"no matching signal ({state}); output:\n{seen}")
                self._cond.wait(remaining)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """`stop` (what leaving a ``with`` block calls)."""
        self.stop()

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        stop_process(proc, 5, group=True)
        if self._thread is not None:
            self._thread.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
