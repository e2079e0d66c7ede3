"""A real ``fail2ban-server`` in a fresh temporary directory, plus a tiny sync client.

The sandbox writes its own ``fail2ban.conf``/``jail.conf`` (the ``dummy`` action only
appends ``+IP``/``-IP`` lines to a file in the sandbox: the host firewall is never
touched), copies Debian's real sshd filter, starts the server in the foreground with
absolute paths and waits until ``status`` lists every jail. It works as root and as
an unprivileged user (the server then runs as that user).

The client speaks fail2ban's socket protocol directly (a pickled list of str plus an
end marker) and unpickles replies with a restricted unpickler: builtins only.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import pickle
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.harness.util import HarnessError, StartedOnEnter, stop_process, tail, wait_until

FILTER_DIR = Path("/etc/fail2ban/filter.d")
SERVER = "fail2ban-server"
JAIL_SSHD = "sshd"
JAIL_BLOCKLIST = "blocklist-import"

END = b"<F2B_END_COMMAND>"
CLOSE = b"<F2B_CLOSE_COMMAND>"
MAX_REPLY = 256 * 1024 * 1024

_SAFE_BUILTINS = frozenset(
    {
        "str",
        "bytes",
        "int",
        "float",
        "bool",
        "complex",
        "list",
        "tuple",
        "dict",
        "set",
        "frozenset",
        "bytearray",
        "range",
        "slice",
    }
)

# Our own dummy action: unlike Debian's action.d/dummy.conf it keeps the target file
# on stop, so tests can read what happened after kill()/restart().
_DUMMY_ACTION = """\
[Definition]
actionstart = touch <target>
actionstop =
actioncheck =
actionflush = printf %%b "-*\\n" >> <target>
actionban = printf %%b "+<ip>\\n" >> <target>
actionunban = printf %%b "-<ip>\\n" >> <target>

[Init]
target = /nonexistent/set-target-in-jail.conf
"""


class F2bError(HarnessError):
    """fail2ban answered a command with an error (or not at all)."""


class RemoteFail2banError(Exception):
    """Local stand-in for an exception class of the fail2ban package."""

    remote_class = "fail2ban.?"


def _stand_in(module: str, name: str) -> type[RemoteFail2banError]:
    return type(name, (RemoteFail2banError,), {"remote_class": f"{module}.{name}"})


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins":
            if name in _SAFE_BUILTINS:
                return getattr(builtins, name)
            obj = getattr(builtins, name, None)
            if isinstance(obj, type) and issubclass(obj, BaseException):
                return obj
        if name.isidentifier() and name.endswith(("Exception", "Error")):  # sqlite3's too
            return _stand_in(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def safe_loads(data: bytes) -> Any:
    """Unpickle a fail2ban reply, allowing builtin types and exceptions only."""
    return _SafeUnpickler(io.BytesIO(data)).load()


class F2bClient:
    """Blocking client for one fail2ban socket; one connection per call (cheap: ~0.4 ms)."""

    def __init__(self, socket_path: str | Path, timeout: float = 30.0) -> None:
        self.socket_path = str(socket_path)
        self.timeout = timeout

    def _connect(self, deadline: float) -> socket.socket:
        delay = 0.005
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                sock.connect(self.socket_path)
            except BlockingIOError:
                # fail2ban listens with a backlog of 1: EAGAIN means "busy", retry
                sock.close()
                if time.monotonic() + delay > deadline:
                    raise F2bError("fail2ban socket busy (backlog full)") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
                continue
            except BaseException:
                sock.close()
                raise
            return sock

    def send(self, *command: str) -> Any:
        """Send one command and return the raw decoded reply (e.g. ``(0, value)``)."""
        args = [str(a) for a in command]
        for arg in args:
            raw = arg.encode("utf-8", "surrogateescape")
            if END in raw or CLOSE in raw:
                raise ValueError("argument contains a fail2ban protocol marker")
        deadline = time.monotonic() + self.timeout
        sock = self._connect(deadline)
        try:
            sock.sendall(pickle.dumps(args, protocol=4) + END)
            buf = bytearray()
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.01))
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise F2bError(f"fail2ban closed the connection during {args[:2]}")
                buf += chunk
                if len(buf) > MAX_REPLY:
                    raise F2bError("fail2ban reply too large")
                if buf.endswith(END):
                    try:
                        return safe_loads(bytes(buf[: -len(END)]))
                    except (EOFError, pickle.UnpicklingError) as exc:
                        if "forbidden" in str(exc):
                            raise F2bError(str(exc)) from exc
                        continue  # the marker was inside the payload: read on
        finally:
            with contextlib.suppress(OSError):
                sock.sendall(CLOSE + END)
            sock.close()

    def call(self, *command: str) -> Any:
        """Run a command; return its value or raise F2bError with fail2ban's message."""
        try:
            reply = self.send(*command)
        except OSError as exc:
            raise F2bError(f"fail2ban {list(command)[:2]} failed: {exc!r}") from exc
        if isinstance(reply, tuple) and len(reply) == 2 and reply[0] in (0, 1):
            if reply[0] == 0:
                return reply[1]
            err = reply[1]
            raise F2bError(f"{type(err).__name__}: {err}")
        raise F2bError(f"unexpected fail2ban reply: {reply!r}")


def _ini_value(value: object) -> str:
    return str(value).replace("\n", "\n    ")


class F2bSandbox(StartedOnEnter):
    """fail2ban-server with its own config, log, socket and DB below one temp dir."""

    def __init__(
        self,
        base_dir: str | Path | None = None,
        *,
        dbpurgeage: str | int = "1d",
        ignoreip: str = "",
        blocklist_ignoreip: str | None = None,
        extra_jails: Mapping[str, Mapping[str, object]] | None = None,
        bantime: str | int = "1h",
        loglevel: str = "INFO",
        keep: bool = False,
        jail_options: Mapping[str, Mapping[str, object]] | None = None,
        action_files: Mapping[str, str | Path] | None = None,
        command_prefix: Sequence[str] = (),
    ) -> None:
        created = base_dir is None
        self.root = Path(tempfile.mkdtemp(prefix="bgt-f2b-") if created else str(base_dir))
        self.root = self.root.resolve()
        self._owns_dir = created
        self.keep = keep
        self.dbpurgeage = dbpurgeage
        self.ignoreip = ignoreip
        self.blocklist_ignoreip = blocklist_ignoreip
        self.extra_jails = {k: dict(v) for k, v in (extra_jails or {}).items()}
        self.bantime = bantime
        self.loglevel = loglevel
        # options merged over the built-in sshd / blocklist-import sections
        self.jail_options = {k: dict(v) for k, v in (jail_options or {}).items()}
        # action.d/NAME -> a file symlinked there (e.g. a Python action from the checkout)
        self.action_files = {k: Path(v) for k, v in (action_files or {}).items()}
        # prepended to the server command, e.g. nsenter into a private network namespace
        self.command_prefix = list(command_prefix)
        self.conf_dir = self.root / "conf"
        self.var_dir = self.root / "var"
        self.log_dir = self.root / "log"
        self.socket_path = self.var_dir / "fail2ban.sock"
        self.pid_path = self.var_dir / "fail2ban.pid"
        self.db_path = self.var_dir / "fail2ban.sqlite3"
        self.server_log = self.var_dir / "fail2ban.log"
        self.server_output = self.var_dir / "server.out"
        self.auth_log = self.log_dir / "auth.log"
        self.empty_log = self.log_dir / "empty.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._client = F2bClient(self.socket_path, timeout=30.0)
        self._pid_counter = 1000
        self.write_config()

    # ---------------------------------------------------------------- config
    @property
    def jails(self) -> list[str]:
        """Names of every jail the sandbox configures (and waits for)."""
        return [JAIL_SSHD, JAIL_BLOCKLIST, *self.extra_jails]

    def dummy_target(self, jail: str) -> Path:
        return self.var_dir / f"dummy-{jail}.txt"

    def write_config(self) -> None:
        """(Re)write the whole config tree; log files are created but never truncated."""
        for d in (self.conf_dir / "filter.d", self.conf_dir / "action.d", self.var_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in ("common.conf", "sshd.conf"):
            shutil.copyfile(FILTER_DIR / name, self.conf_dir / "filter.d" / name)
        (self.conf_dir / "action.d" / "dummy.conf").write_text(_DUMMY_ACTION)
        for name, source in self.action_files.items():
            link = self.conf_dir / "action.d" / name
            link.unlink(missing_ok=True)
            link.symlink_to(source.resolve())
        (self.conf_dir / "fail2ban.conf").write_text(
            "[DEFAULT]\n"
            f"loglevel = {self.loglevel}\n"
            f"logtarget = {self.server_log}\n"
            "syslogsocket = auto\n"
            f"socket = {self.socket_path}\n"
            f"pidfile = {self.pid_path}\n"
            f"dbfile = {self.db_path}\n"
            f"dbpurgeage = {self.dbpurgeage}\n"
            "dbmaxmatches = 10\n"
            "\n[Definition]\n"
            "allowipv6 = auto\n"
        )
        self.auth_log.touch()
        self.empty_log.touch()
        sections: list[tuple[str, dict[str, object]]] = [
            (
                "DEFAULT",
                {
                    "banaction": "dummy",
                    "action": f'dummy[target="{self.var_dir}/dummy-%(__name__)s.txt"]',
                    "ignoreself": "false",
                    "ignoreip": self.ignoreip,
                    "bantime": self.bantime,
                    "findtime": "10m",
                    "maxretry": 3,
                    "backend": "polling",
                    "usedns": "no",
                },
            ),
            (
                JAIL_SSHD,
                {
                    "enabled": "true",
                    "filter": "sshd",
                    "logpath": self.auth_log,
                    "maxretry": 3,
                },
            ),
        ]
        blocklist: dict[str, object] = {
            "enabled": "true",
            "filter": "",
            "logpath": self.empty_log,
            "bantime": "1w",
        }
        if self.blocklist_ignoreip is not None:
            blocklist["ignoreip"] = self.blocklist_ignoreip
        sections.append((JAIL_BLOCKLIST, blocklist))
        for name, section in sections:
            section.update(self.jail_options.get(name, {}))
        for name, options in self.extra_jails.items():
            opts: dict[str, object] = {"enabled": "true", "filter": ""}
            opts.update(options)
            if "logpath" not in opts:
                opts["logpath"] = self.log_dir / f"{name}.log"
            Path(str(opts["logpath"])).touch()
            sections.append((name, opts))
        lines = ["# written by tests/harness/fail2ban.py: the dummy action unless jail_options say"]
        for name, section in sections:
            lines.append(f"\n[{name}]")
            lines.extend(f"{key} = {_ini_value(value)}" for key, value in section.items())
        (self.conf_dir / "jail.conf").write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------- lifecycle
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self, timeout: float = 30.0) -> None:
        """Start fail2ban-server in the foreground and wait until every jail is up."""
        if self.running:
            raise HarnessError("fail2ban-server is already running")
        server = shutil.which(SERVER)
        if server is None:
            raise HarnessError("fail2ban-server not found (apt-get install fail2ban)")
        with self.server_output.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    *self.command_prefix,
                    server,
                    "-c",
                    str(self.conf_dir),
                    "-s",
                    str(self.socket_path),
                    "-p",
                    str(self.pid_path),
                    "-f",
                    "-x",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,
            )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _listed_jails(self) -> set[str]:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            raise HarnessError(
                f"fail2ban-server exited with {proc.returncode if proc else None} "
                f"while starting\n--- server output:\n{tail(self.server_output)}"
                f"\n--- fail2ban.log:\n{tail(self.server_log)}"
            )
        try:
            status = dict(F2bClient(self.socket_path, timeout=2.0).call("status"))
        except (F2bError, OSError, ValueError, TypeError):
            return set()
        return {j.strip() for j in str(status.get("Jail list", "")).split(",") if j.strip()}

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll ``status`` until every configured jail is listed."""
        wanted = set(self.jails)
        try:
            wait_until(lambda: wanted <= self._listed_jails(), timeout, f"fail2ban jails {wanted}")
        except TimeoutError as exc:
            raise HarnessError(f"{exc}\n--- fail2ban.log:\n{tail(self.server_log)}") from exc

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop the server (``stop`` command, then SIGTERM, then SIGKILL) and reap it."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                F2bClient(self.socket_path, timeout=min(timeout, 10.0)).call("stop")
            except (F2bError, OSError, ValueError):
                # The reply can be lost while the server already shuts down: give it
                # a moment before SIGTERM, which would turn a clean exit into -15.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
                return stop_process(proc, timeout)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        return stop_process(proc, 5)

    def kill(self) -> int | None:
        """SIGKILL the server ("fail2ban died"); the socket file stays behind, stale."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        return proc.wait(10)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop (if running) and start again in the same dir with the same DB."""
        self.stop()
        self.start(timeout)

    def close(self) -> None:
        """Stop the server and remove the directory (unless ``keep``)."""
        try:
            self.stop()
        finally:
            if self._owns_dir and not self.keep:
                shutil.rmtree(self.root, ignore_errors=True)

    # --------------------------------------------------------------- helpers
    def client(self, *args: str, timeout: float = 30.0) -> Any:
        """Run one fail2ban command over the socket; return its value (F2bError on error)."""
        return F2bClient(self.socket_path, timeout=timeout).call(*args)

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``fail2ban-client -s SOCKET ARGS`` (the real CLI, ~75 ms a call)."""
        return subprocess.run(
            ["fail2ban-client", "-s", str(self.socket_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def write_failed_logins(self, ip: str, n: int, *, user: str = "admin") -> None:
        """Append ``n`` real sshd "Failed password" syslog lines for ``ip`` (now)."""
        stamp = time.strftime("%b %e %H:%M:%S")
        lines = []
        for i in range(n):
            self._pid_counter += 1
            lines.append(
                f"{stamp} testhost sshd[{self._pid_counter}]: Failed password for invalid "
                f"user {user}{i} from {ip} port {40000 + self._pid_counter % 20000} ssh2\n"
            )
        with self.auth_log.open("a") as f:
            f.write("".join(lines))

    def banned(self, jail: str) -> list[str]:
        """Addresses fail2ban currently bans in ``jail``."""
        return [str(ip) for ip in self.client("get", jail, "banned")]

    def wait_banned(self, jail: str, ip: str, timeout: float = 20.0) -> None:
        """Wait until ``ip`` is banned in ``jail`` (polls the socket)."""
        wait_until(lambda: ip in self.banned(jail), timeout, f"{ip} banned in {jail}")

    def dummy_actions(self, jail: str) -> list[str]:
        """The ``+IP``/``-IP`` (and ``-*`` flush) lines the dummy action wrote for ``jail``."""
        try:
            text = self.dummy_target(jail).read_text()
        except FileNotFoundError:
            return []
        return [ln for ln in text.splitlines() if ln.startswith(("+", "-"))]

    def log_text(self) -> str:
        """fail2ban's own log (``var/fail2ban.log``)."""
        try:
            return self.server_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def main() -> None:
    """Smoke run: ``python -m tests.harness.fail2ban`` (also as an unprivileged user)."""
    import json

    with F2bSandbox() as f2b:
        f2b.write_failed_logins("45.33.12.7", 4)
        f2b.wait_banned(JAIL_SSHD, "45.33.12.7")
        # the action runs right after the ban is listed
        wait_until(lambda: f2b.dummy_actions(JAIL_SSHD), 10, "dummy action")
        print(
            json.dumps(
                {
                    "uid": os.getuid(),
                    "jails": f2b.jails,
                    "banned": f2b.banned(JAIL_SSHD),
                    "dummy": f2b.dummy_actions(JAIL_SSHD),
                    "version": f2b.client("version"),
                }
            )
        )


if __name__ == "__main__":
    main()
