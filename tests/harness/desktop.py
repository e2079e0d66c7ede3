"""A headless desktop session: a session bus, Xvfb and a real notification server (dunst).

``NotifyMonitor`` watches the ``Notify`` calls on that bus with ``dbus-monitor`` (and
their replies, which carry the notification ids), so a test sees exactly what a
client asked the desktop to show and which notification it replaced.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from tests.harness.util import HarnessError, stop_process, wait_until

NOTIFICATIONS = "org.freedesktop.Notifications"
TOOLS = ("dbus-daemon", "dbus-monitor", "Xvfb", "dunst", "gdbus")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


@dataclass
class NotifyCall:
    """One `Notify` call: what was asked, and the id the server answered with."""

    serial: int
    replaces_id: int
    summary: str
    body: str
    notification_id: int | None = None


class NotifyMonitor:
    """Parse `dbus-monitor` output into NotifyCall records, as they happen."""

    _CALL = re.compile(r"^method call .* serial=(\d+) .*member=Notify$")
    _RETURN = re.compile(r"^method return .* reply_serial=(\d+)")

    def __init__(self, address: str) -> None:
        self.calls: list[NotifyCall] = []
        self._by_serial: dict[int, NotifyCall] = {}
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [
                "dbus-monitor",
                "--address",
                address,
                f"type='method_call',interface='{NOTIFICATIONS}',member='Notify'",
                "type='method_return'",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        block: list[str] = []
        for raw in self._proc.stdout:
            line = raw.rstrip("\n")
            if line.startswith(("method call", "method return", "signal", "error")):
                self._finish(block)
                block = [line]
            elif block:
                block.append(line)
        self._finish(block)

    @staticmethod
    def _strings(lines: list[str]) -> list[str]:
        """The string arguments of a block, multi-line strings joined again."""
        text = "\n".join(lines)
        return [m.group(1) for m in re.finditer(r'^\s*string "(.*?)"$', text, re.M | re.S)]

    def _finish(self, block: list[str]) -> None:
        if not block:
            return
        head, args = block[0], block[1:]
        with self._lock:
            if m := self._CALL.match(head):
                uints = [int(x) for x in re.findall(r"^\s*uint32 (\d+)$", "\n".join(args), re.M)]
                strings = self._strings(args)
                call = NotifyCall(
                    serial=int(m.group(1)),
                    replaces_id=uints[0] if uints else 0,
                    summary=strings[2] if len(strings) > 2 else "",
                    body=strings[3] if len(strings) > 3 else "",
                )
                self.calls.append(call)
                self._by_serial[call.serial] = call
            elif (m := self._RETURN.match(head)) and int(m.group(1)) in self._by_serial:
                found = re.search(r"^\s*uint32 (\d+)$", "\n".join(args), re.M)
                if found:
                    self._by_serial[int(m.group(1))].notification_id = int(found.group(1))

    def snapshot(self) -> list[NotifyCall]:
        with self._lock:
            return list(self.calls)

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait(10)


class DesktopSession:
    """A private session bus with Xvfb and dunst on it; `close()` stops all three."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="bangui-desktop-"))
        self._procs: list[subprocess.Popen[bytes]] = []
        self.address = ""
        self.display = ""

    def _spawn(self, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]
        self._procs.append(proc)
        return proc

    def start(self) -> DesktopSession:
        socket_path = self.tmp / "bus"
        self._spawn(
            [
                "dbus-daemon",
                "--session",
                "--nofork",
                "--nopidfile",
                f"--address=unix:path={socket_path}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.address = f"unix:path={socket_path}"
        read_fd, write_fd = os.pipe()
        xvfb = self._spawn(
            ["Xvfb", "-displayfd", str(write_fd), "-nolisten", "tcp", "-screen", "0", "800x600x24"],
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(write_fd)
        with os.fdopen(read_fd) as pipe:
            number = pipe.readline().strip()
        if not number.isdigit():
            raise HarnessError(f"Xvfb did not start (exit {xvfb.poll()})")
        self.display = f":{number}"
        wait_until(socket_path.exists, 10, "the session bus socket")
        self._spawn(
            ["dunst"],
            env={**os.environ, "DISPLAY": self.display, "DBUS_SESSION_BUS_ADDRESS": self.address},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._server_up, 15, f"{NOTIFICATIONS} on the session bus")
        return self

    def _server_up(self) -> bool:
        r = subprocess.run(
            [
                "gdbus",
                "call",
                "--address",
                self.address,
                "-d",
                "org.freedesktop.DBus",
                "-o",
                "/org/freedesktop/DBus",
                "-m",
                "org.freedesktop.DBus.NameHasOwner",
                NOTIFICATIONS,
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return r.returncode == 0 and "true" in r.stdout

    def monitor(self) -> NotifyMonitor:
        return NotifyMonitor(self.address)

    def close(self) -> None:
        for proc in reversed(self._procs):
            stop_process(proc, 5)
        shutil.rmtree(self.tmp, ignore_errors=True)
