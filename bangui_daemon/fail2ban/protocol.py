"""fail2ban's control-socket wire format, without any I/O.

fail2ban frames every message as a pickle followed by an end marker. Requests are
pickled lists of strings; replies are `(0, value)`, `(1, exception)` or, when the
server could not read the request, a bare `"ERROR: ..."` string. Replies are
unpickled with an allow-list, because a plain `pickle.loads` of whatever sits behind
the socket path would hand code execution to anyone who can bind it.
"""

from __future__ import annotations

import builtins
import pickle
import re
import time
from collections.abc import Callable, Sequence

from bangui_daemon.errors import (
    Fail2banProtocolError,
    Fail2banUnavailable,
    InvalidArgument,
)

END = b"<F2B_END_COMMAND>"
CLOSE = b"<F2B_CLOSE_COMMAND>"
CLOSE_FRAME = CLOSE + END

#: Replies larger than this are refused, and reading stops there: a hostile socket
#: owner must not make the daemon buffer what it likes. The largest honest replies are
#: ban lists; measured with fail2ban 1.0.2 (pickle protocol 5), a ban costs 22 bytes
#: in `get JAIL banip` and 68 in `get JAIL banip --with-time` for IPv4 (73 and 165 for
#: a full-length IPv6 address). 80 MiB holds the timed list of 1M IPv4 bans (68 MB)
#: with 20% to spare, or of 500k full-length IPv6 bans (bench/reply_sizes.py).
DEFAULT_REPLY_LIMIT = 80 * 1024 * 1024

#: Bytes asked of the socket per read: the unit in which a reply's size is checked.
READ_CHUNK = 256 * 1024

#: Unpickling attempts per reply. Each end marker found may close the reply or sit
#: inside a string of it; a real reply holds the marker in its payload almost never,
#: while each attempt re-reads the whole reply, so a hostile stream of markers could
#: otherwise cost quadratic time.
MAX_DECODE_ATTEMPTS = 8

# fail2ban's server accepts any pickle protocol; 4 is understood by every Python 3
# fail2ban runs on.
_REQUEST_PROTOCOL = 4

_SAFE_BUILTINS = frozenset(
    {
        "str",
        "bytes",
        "bytearray",
        "int",
        "float",
        "complex",
        "bool",
        "list",
        "tuple",
        "dict",
        "set",
        "frozenset",
        "range",
        "slice",
    }
)


class RemoteError(Exception):
    """Local stand-in for an exception class that only exists inside fail2ban."""

    def __init__(self, remote_class: str, *args: object) -> None:
        super().__init__(*args)
        self.remote_class = remote_class

    def __str__(self) -> str:
        if len(self.args) == 1:
            return str(self.args[0])
        return str(self.args)

    def __setstate__(self, state: object) -> None:
        """Ignore the pickled attributes (sqlite3's error code, say): only args count,
        and a reply must not be able to set `remote_class` or anything else."""


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A reply referenced a global outside the allow-list."""


def _remote_error_factory(qualname: str) -> Callable[..., RemoteError]:
    def build(*args: object) -> RemoteError:
        return RemoteError(qualname, *args)

    return build


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only builtin containers, scalars and exceptions; any
    other class named ...Error or ...Exception becomes a RemoteError with its name."""

    def find_class(self, module: str, name: str) -> object:
        if module == "builtins":
            if name in _SAFE_BUILTINS:
                return getattr(builtins, name)
            obj = getattr(builtins, name, None)
            if isinstance(obj, type) and issubclass(obj, Exception):
                return obj
        elif name.isidentifier() and name.endswith(("Exception", "Error")):
            # fail2ban's own errors, and those of what it uses (sqlite3.OperationalError
            # "database is locked"): named, never imported, never instantiated.
            return _remote_error_factory(f"{module}.{name}")
        raise ForbiddenGlobalError(f"forbidden global {module}.{name} in fail2ban reply")


class _BufferReader:
    """A read-only file over (a prefix of) a buffer, so a reply is unpickled in place.

    io.BytesIO would first copy a bytearray, doubling what a large reply costs. The
    unpickler prefetches through `peek`, so it calls back here once per ~128 KiB.
    """

    def __init__(self, data: bytes | bytearray, end: int) -> None:
        self._data = data
        self._end = end
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        start = self.pos
        stop = self._end if n < 0 else min(self._end, start + n)
        self.pos = stop
        with memoryview(self._data) as view:
            return view[start:stop].tobytes()

    def readinto(self, out: bytearray | memoryview) -> int:
        with memoryview(out) as target, memoryview(self._data) as view:
            n = min(len(target), self._end - self.pos)
            target[:n] = view[self.pos : self.pos + n]
        self.pos += n
        return n

    def readline(self) -> bytes:
        at = self._data.find(b"\n", self.pos, self._end)
        return self.read(-1 if at < 0 else at + 1 - self.pos)

    def peek(self, n: int = 0) -> bytes:
        with memoryview(self._data) as view:
            return view[self.pos : min(self._end, self.pos + max(n, 1))].tobytes()


def safe_loads(data: bytes | bytearray, end: int | None = None) -> object:
    """Unpickle one complete pickle (`data[:end]`) with the allow-list.

    Trailing bytes are an error.
    """
    stop = len(data) if end is None else end
    reader = _BufferReader(data, stop)
    value = SafeUnpickler(reader).load()
    if reader.pos != stop:
        raise pickle.UnpicklingError("trailing bytes after the pickle")
    return value


def encode_command(args: Sequence[str]) -> bytes:
    """Frame a command; refuse arguments that would split the frame on the server."""
    if not args:
        raise InvalidArgument("a fail2ban command needs at least one word")
    for arg in args:
        if not isinstance(arg, str):
            raise InvalidArgument("fail2ban command arguments must be strings")
        raw = arg.encode("utf-8", "surrogatepass")
        if END in raw or CLOSE in raw:
            raise InvalidArgument("argument contains a fail2ban protocol marker")
    return pickle.dumps(list(args), protocol=_REQUEST_PROTOCOL) + END


def _is_truncation(exc: Exception) -> bool:
    return isinstance(exc, EOFError) or "truncated" in str(exc)


_INCOMPLETE = object()


class ReplyAssembler:
    """Collects one reply from the socket's chunks and decodes it once complete.

    A reply passing `limit` bytes is refused at once, so no more than `limit` bytes
    are ever held; whatever the outcome, the buffer is released before `feed` returns
    or raises (an error's traceback must not keep a large reply alive).
    """

    def __init__(self, limit: int = DEFAULT_REPLY_LIMIT) -> None:
        self._limit = limit
        self._buf = bytearray()
        self._scan = 0
        self._attempts = 0

    @property
    def size(self) -> int:
        """Bytes held so far."""
        return len(self._buf)

    def release(self) -> None:
        """Drop the bytes held (a new, empty buffer: a view still alive cannot pin it)."""
        self._buf = bytearray()
        self._scan = 0

    def feed(self, chunk: bytes) -> tuple[int, object] | None:
        """Add bytes; return the interpreted reply when it is complete, else None."""
        try:
            return self._feed(chunk)
        except BaseException:
            self.release()
            raise

    def _feed(self, chunk: bytes) -> tuple[int, object] | None:
        if len(self._buf) + len(chunk) > self._limit:
            raise Fail2banProtocolError(f"fail2ban reply is larger than {self._limit} bytes")
        self._buf += chunk
        while (at := self._buf.find(END, self._scan)) >= 0:
            self._scan = at + len(END)
            obj = self._decode(at)
            if obj is _INCOMPLETE:
                continue  # the marker was inside the payload: read on
            if self._scan != len(self._buf):
                raise Fail2banProtocolError("fail2ban sent bytes after its reply")
            self.release()
            return interpret_reply(obj)
        self._scan = max(0, len(self._buf) - len(END) + 1)
        return None

    def _decode(self, end: int) -> object:
        self._attempts += 1
        if self._attempts > MAX_DECODE_ATTEMPTS:
            raise Fail2banProtocolError("fail2ban reply holds too many end markers")
        # Errors are raised outside the except blocks: a chained exception's traceback
        # would keep the unpickler's frames, and with them the reply, alive.
        error = "fail2ban reply is not a valid pickle"
        try:
            return safe_loads(self._buf, end)
        except ForbiddenGlobalError as exc:
            error = str(exc)
        except (pickle.UnpicklingError, EOFError) as exc:
            if _is_truncation(exc):
                return _INCOMPLETE
        except Exception:  # noqa: S110, BLE001 - the message above is the answer
            # Anything a constructor on the allow-list raises (e.g. int("x") via REDUCE).
            pass
        raise Fail2banProtocolError(error)


def interpret_reply(obj: object) -> tuple[int, object]:
    """Turn an unpickled reply into `(0, value)` or `(1, exception)`."""
    if isinstance(obj, tuple) and len(obj) == 2 and obj[0] in (0, 1):
        code, value = obj
        if code == 1 and not isinstance(value, BaseException):
            raise Fail2banProtocolError("fail2ban error reply carries no exception")
        return int(code), value
    if isinstance(obj, str) and obj.startswith("ERROR:"):
        # The server could not read our request; the connection stays usable.
        return 1, RemoteError("ERROR", obj[len("ERROR:") :].strip())
    if obj == ["SHUTDOWN"]:
        raise Fail2banUnavailable("fail2ban is shutting down")
    raise Fail2banProtocolError("fail2ban sent a reply of an unknown shape")


def describe_remote_error(exc: BaseException) -> tuple[str, str]:
    """Return (class name, message) of an error fail2ban sent back."""
    if isinstance(exc, RemoteError):
        remote_class = exc.remote_class.rsplit(".", 1)[-1]
    else:
        remote_class = type(exc).__name__
    if len(exc.args) == 1:
        # str(KeyError('x')) would add quotes; the bare argument reads better.
        return remote_class, str(exc.args[0])
    return remote_class, str(exc)


# --------------------------------------------------------------------------------------
# Reply parsers


def _pairs(value: object, what: str) -> dict[str, object]:
    """Index fail2ban's list of (label, value) tuples by label."""
    if not isinstance(value, list | tuple):
        raise Fail2banProtocolError(f"fail2ban {what} reply is not a list")
    out: dict[str, object] = {}
    for item in value:
        if not (isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise Fail2banProtocolError(f"fail2ban {what} reply has a malformed entry")
        out[item[0]] = item[1]
    return out


def _count(pairs: dict[str, object], label: str, what: str) -> int:
    value = pairs.get(label)
    if not isinstance(value, int) or isinstance(value, bool):
        raise Fail2banProtocolError(f"fail2ban {what} reply lacks {label!r}")
    return value


def parse_jail_list(value: object) -> list[str]:
    """Jail names from a `status` reply (`'Jail list': 'a, b'`)."""
    pairs = _pairs(value, "status")
    names = pairs.get("Jail list")
    if not isinstance(names, str):
        raise Fail2banProtocolError("fail2ban status reply lacks the jail list")
    return [name.strip() for name in names.split(",") if name.strip()]


def parse_jail_counts(value: object) -> tuple[int, int, int, int]:
    """(currently_failed, total_failed, currently_banned, total_banned) of a jail.

    Works for both `status JAIL` and `status JAIL short`.
    """
    top = _pairs(value, "jail status")
    filt = _pairs(top.get("Filter"), "jail status filter")
    acts = _pairs(top.get("Actions"), "jail status actions")
    return (
        _count(filt, "Currently failed", "jail status"),
        _count(filt, "Total failed", "jail status"),
        _count(acts, "Currently banned", "jail status"),
        _count(acts, "Total banned", "jail status"),
    )


_WITH_TIME = re.compile(
    r"^(?P<ip>.+?) \t(?P<start>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})"
    r" \+ (?P<bantime>-?\d+) = (?P<end>.+)$"
)
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def parse_ban_with_time(line: object) -> tuple[str, int, int]:
    """(ip, timeofban, bantime) from one `get JAIL banip --with-time` line.

    fail2ban prints the start in the server's local time, so this must run in the
    same time zone as fail2ban. A permanent ban prints `+ -1 = 9999-12-31 23:59:59`.
    """
    if not isinstance(line, str):
        raise Fail2banProtocolError("fail2ban ban list entry is not a string")
    match = _WITH_TIME.match(line)
    if match is None:
        raise Fail2banProtocolError("fail2ban ban list entry has an unknown format")
    try:
        start = int(time.mktime(time.strptime(match["start"], _TIME_FORMAT)))
    except (ValueError, OverflowError):
        raise Fail2banProtocolError("fail2ban ban list entry has a bad time") from None
    return match["ip"], start, int(match["bantime"])


def parse_str_list(value: object, what: str) -> list[str]:
    """Check a reply is a list of strings (IPAddr arrives as str already)."""
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise Fail2banProtocolError(f"fail2ban {what} reply is not a list of strings")
    return list(value)


def parse_int(value: object, what: str) -> int:
    """Accept an int (or an integral float, which fail2ban's str2seconds may give)."""
    if isinstance(value, bool):
        raise Fail2banProtocolError(f"fail2ban {what} reply is not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise Fail2banProtocolError(f"fail2ban {what} reply is not a number")
