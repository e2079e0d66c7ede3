"""Run the daemon under test as a subprocess, the way systemd would (Type=notify).

``DaemonProcess`` writes a TOML config, binds an AF_UNIX datagram socket as
``NOTIFY_SOCKET`` (systemd's side of sd_notify), starts
``[python, -m, bangui_daemon, --config, CONFIG]`` with cwd and PYTHONPATH at the repo
root and ``DBUS_SYSTEM_BUS_ADDRESS`` pointing at the private bus, and waits for
``READY=1``. Every notify datagram (with the sender pid, like systemd checks it) and
every output line (read by a thread, so the pipe never fills) is kept for tests.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from signal import SIGHUP, SIGTERM
from typing import TYPE_CHECKING, Any, Protocol

from tests.harness.util import REPO_ROOT, HarnessError, HarnessTimeoutError, StartedOnEnter

if TYPE_CHECKING:
    from tests.harness.bus import PrivateSystemBus
    from tests.harness.fail2ban import F2bSandbox

DAEMON_MODULE = "bangui_daemon"
READY_TIMEOUT = 30.0


class F2bPaths(Protocol):
    """What the daemon config needs from a fail2ban sandbox."""

    @property
    def socket_path(self) -> Path: ...

    @property
    def db_path(self) -> Path: ...


class DaemonStartError(HarnessError):
    """The daemon exited or stayed silent before sending READY=1."""


class DaemonStopTimeoutError(HarnessError):
    """The daemon ignored the stop signal and had to be SIGKILLed."""


# --------------------------------------------------------------------- config
def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``overrides`` into a copy of ``base``; tables merge, a ``None`` value deletes."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for key, value in overrides.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def build_config(
    f2b: F2bPaths, work_dir: str | Path, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The daemon config for tests (config.md's keys), with ``overrides`` merged in."""
    work = Path(work_dir)
    lists = work / "lists"
    lists.mkdir(parents=True, exist_ok=True)
    base: dict[str, Any] = {
        "fail2ban": {
            "socket": str(f2b.socket_path),
            "database": str(f2b.db_path),
            "timeout": 10.0,
        },
        "archive": {"path": str(work / "archive.sqlite3")},
        # "system" + DBUS_SYSTEM_BUS_ADDRESS in the env = the private bus
        "dbus": {"bus": "system", "admin_group": "bangui-admin"},
        "tasks": {
            "ban_watch": 0.5,
            "history_sync": 3600,
            "geo_resolve": 3600,
            "blocklist_import": 86400,
            "geo_cache_cleanup": 86400,
            "history_purge": 86400,
        },
        "blocklist": {"file_dir": str(lists)},
        "geo": {
            "country_db": str(work / "geoip" / "GeoLite2-Country.mmdb"),
            "asn_db": str(work / "geoip" / "GeoLite2-ASN.mmdb"),
        },
        "log": {"level": "debug", "format": "json"},
    }
    return deep_merge(base, overrides or {})


def _toml_key(key: str) -> str:
    if key and all(c.isalnum() or c in "-_" for c in key):
        return key
    return json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return ("-" if value < 0 else "") + ("nan" if math.isnan(value) else "inf")
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_toml(data: Mapping[str, Any]) -> str:
    """Serialise a two-level mapping (tables of scalars/lists) to TOML."""
    top = [
        f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)
    ]
    out = [*top]
    for section, table in data.items():
        if isinstance(table, Mapping):
            out.append(f"\n[{_toml_key(section)}]")
            out.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items())
    return "\n".join(out).lstrip("\n") + "\n"


# ---------------------------------------------------------------- sd_notify
@dataclass(frozen=True)
class Notification:
    """One sd_notify datagram: the sender's pid (SCM_CREDENTIALS) and its text."""

    pid: int | None
    text: str
    at: float = field(default_factory=time.monotonic)

    @property
    def fields(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in self.text.split("\n"):
            key, sep, value = line.partition("=")
            if sep:
                out[key] = value
        return out


class NotifySocket:
    """systemd's end of NOTIFY_SOCKET: a bound AF_UNIX datagram socket read by a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.messages: list[Notification] = []
        self.cond = threading.Condition()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._reader, name="notify-socket", daemon=True)
        self._thread.start()

    def _reader(self) -> None:
        creds_size = socket.CMSG_SPACE(struct.calcsize("3i"))
        while not self._closed.is_set():
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(65536, creds_size)
            except TimeoutError:
                continue
            except OSError:
                break
            pid = None
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", cdata[: struct.calcsize("3i")])[0]
            with self.cond:
                self.messages.append(Notification(pid, data.decode(errors="replace")))
                self.cond.notify_all()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(5)
        self.sock.close()


# ------------------------------------------------------------------- process
class DaemonProcess(StartedOnEnter):
    """The daemon under test as a child process, with its notify socket and output."""

    def __init__(
        self,
        config: Mapping[str, Any] | str | Path,
        *,
        bus_address: str,
        work_dir: str | Path | None = None,
        module: str = DAEMON_MODULE,
        python: str = sys.executable,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        keep: bool = False,
    ) -> None:
        created = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="bgt-daemon-") if created else str(work_dir))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._owns_dir = created
        self.keep = keep
        self.address = bus_address
        self.module = module
        self.python = python
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        if isinstance(config, Mapping):
            self.config: dict[str, Any] | None = dict(config)
            self.config_path = self.work_dir / "bangui.toml"
            self.config_path.write_text(dump_toml(config))
        else:
            self.config = None
            self.config_path = Path(config)
        self.notify = NotifySocket(self.work_dir / "notify.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self._output: list[str] = []
        self._out_cond = threading.Condition()
        self._out_thread: threading.Thread | None = None
        self._notify_start = 0
        self.starts = 0

    @classmethod
    def from_sandbox(
        cls,
        f2b: F2bSandbox,
        bus: PrivateSystemBus | str,
        overrides: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> DaemonProcess:
        """A daemon (not started) wired to a fail2ban sandbox and a bus (object or address)."""
        given = kwargs.pop("work_dir", None)
        work = Path(given or tempfile.mkdtemp(prefix="bgt-daemon-"))
        address = bus if isinstance(bus, str) else bus.address
        config = build_config(f2b, work, overrides)
        daemon = cls(config, bus_address=address, work_dir=work, **kwargs)
        daemon._owns_dir = given is None
        return daemon

    # ------------------------------------------------------------ properties
    @property
    def command(self) -> list[str]:
        return [self.python, "-m", self.module, "--config", str(self.config_path), *self.extra_args]

    @property
    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS")
        }
        env.update(
            PYTHONPATH=str(REPO_ROOT),
            PYTHONUNBUFFERED="1",
            DBUS_SYSTEM_BUS_ADDRESS=self.address,
            NOTIFY_SOCKET=str(self.notify.path),
        )
        env.update(self.extra_env)
        return env

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise HarnessError("the daemon was never started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    @property
    def notifications(self) -> list[Notification]:
        """Every sd_notify datagram received (all runs; see ``notifications_since_start``)."""
        with self.notify.cond:
            return list(self.notify.messages)

    @property
    def notifications_since_start(self) -> list[Notification]:
        with self.notify.cond:
            return list(self.notify.messages[self._notify_start :])

    @property
    def output_lines(self) -> list[str]:
        """Everything the daemon wrote to stdout/stderr, one entry per line."""
        with self._out_cond:
            return list(self._output)

    @property
    def output(self) -> str:
        return "\n".join(self.output_lines)

    def log_records(self) -> list[dict[str, Any]]:
        """Output lines that are JSON objects (``[log] format = "json"``)."""
        records = []
        for line in self.output_lines:
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    records.append(obj)
        return records

    # ------------------------------------------------------------- lifecycle
    def start(self, ready_timeout: float = READY_TIMEOUT) -> DaemonProcess:
        """Start the daemon and wait for READY=1 (DaemonStartError if it never comes)."""
        if self.running:
            raise HarnessError("the daemon is already running")
        with self.notify.cond:
            self._notify_start = len(self.notify.messages)
        with self._out_cond:
            self._output.append(f"--- harness: start #{self.starts + 1}: {' '.join(self.command)}")
        self.proc = subprocess.Popen(
            self.command,
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.starts += 1
        self._out_thread = threading.Thread(
            target=self._read_output, args=(self.proc,), name="daemon-output", daemon=True
        )
        self._out_thread.start()
        try:
            self.wait_notification(lambda n: n.fields.get("READY") == "1", ready_timeout)
        except HarnessError as exc:
            if self.running:
                self.proc.kill()
                self.proc.wait(10)
            self._join_output()
            raise DaemonStartError(
                f"daemon did not send READY=1 ({exc}); exit code {self.returncode}\n"
                f"--- output:\n{self.output}"
            ) from None
        return self

    def _read_output(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            with self._out_cond:
                self._output.append(line)
                self._out_cond.notify_all()
        proc.stdout.close()

    def _join_output(self) -> None:
        if self._out_thread is not None:
            self._out_thread.join(5)

    def wait_notification(
        self, predicate: Callable[[Notification], bool], timeout: float = 10.0
    ) -> Notification:
        """Wait for a notify datagram of the current run matching ``predicate``.

        Fails early (HarnessError) when the daemon exits first.
        """
        deadline = time.monotonic() + timeout
        index = self._notify_start
        with self.notify.cond:
            while True:
                messages = self.notify.messages
                while index < len(messages):
                    if predicate(messages[index]):
                        return messages[index]
                    index += 1
                if not self.running:
                    raise HarnessError(f"the daemon exited with {self.returncode}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HarnessTimeoutError(f"no matching notification within {timeout:g}s")
                # short waits: also notice the process exiting without a datagram
                self.notify.cond.wait(min(remaining, 0.1))

    def wait_for_output(self, predicate: Callable[[str], bool] | str, timeout: float = 10.0) -> str:
        """Wait for an output line (substring or callable) from any run; return it."""
        match = (lambda line: predicate in line) if isinstance(predicate, str) else predicate
        deadline = time.monotonic() + timeout
        index = 0
        with self._out_cond:
            while True:
                while index < len(self._output):
                    if match(self._output[index]):
                        return self._output[index]
                    index += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise HarnessTimeoutError(
                        f"no matching daemon output within {timeout:g}s; last lines:\n"
                        + "\n".join(self._output[-30:])
                    )
                self._out_cond.wait(min(remaining, 0.1))

    def wait_for_log(self, event: str, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for a JSON log record whose ``event`` is ``event``; return it."""

        def is_event(line: str) -> bool:
            if not line.startswith("{") or event not in line:
                return False
            try:
                obj = json.loads(line)
            except ValueError:
                return False
            return isinstance(obj, dict) and obj.get("event") == event

        record: dict[str, Any] = json.loads(self.wait_for_output(is_event, timeout))
        return record

    def send_signal(self, sig: int) -> None:
        if not self.running:
            raise HarnessError("the daemon is not running")
        os.kill(self.pid, sig)

    def reload(self) -> None:
        """SIGHUP (what ExecReload does)."""
        self.send_signal(SIGHUP)

    def stop(self, signal: int = SIGTERM, timeout: float = 15.0) -> int:
        """Send ``signal``, wait, return the exit code (late: SIGKILL + DaemonStopTimeoutError)."""
        proc = self.proc
        if proc is None:
            raise HarnessError("the daemon was never started")
        if proc.poll() is None:
            os.kill(proc.pid, signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                self._join_output()
                raise DaemonStopTimeoutError(
                    f"daemon still running {timeout:g}s after signal {signal}; killed\n"
                    f"--- output:\n{self.output}"
                ) from None
        self._join_output()
        return proc.returncode

    def kill(self) -> int:
        """SIGKILL (a crash); return the exit code (-9)."""
        proc = self.proc
        if proc is None:
            raise HarnessError("the daemon was never started")
        if proc.poll() is None:
            proc.kill()
        rc = proc.wait(10)
        self._join_output()
        return rc

    def restart(self, ready_timeout: float = READY_TIMEOUT) -> DaemonProcess:
        """Stop (SIGTERM) if running, start again with the same config; wait for READY=1."""
        if self.running:
            self.stop()
        return self.start(ready_timeout)

    def close(self) -> None:
        """Stop (SIGKILL if it will not stop), close the notify socket, remove the dir."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                with contextlib.suppress(DaemonStopTimeoutError):
                    self.stop()
        finally:
            self.notify.close()
            if self._owns_dir and not self.keep:
                shutil.rmtree(self.work_dir, ignore_errors=True)
