"""fail2ban's control-socket wire format, without any I/O.

fail2ban frames every message as a pickle followed by an end marker. Requests are
pickled lists of strings; replies are `(0, value)`, `(1, exception)` or, when the
server could not read the request, a bare `"ERROR: ..."` string. Replies are
unpickled with an allow-list, because a plain `pickle.loads` of whatever sits behind
the socket path would hand code execution to anyone who can bind it.
"""

from __future__ import annotations

import builtins
import io
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

#: Replies larger than this are refused (a 10k-IP `banip --with-time` is ~0.6 MB).
DEFAULT_REPLY_LIMIT = 64 * 1024 * 1024

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


def safe_loads(data: bytes) -> object:
    """Unpickle one complete pickle with the allow-list; trailing bytes are an error."""
    stream = io.BytesIO(data)
    value = SafeUnpickler(stream).load()
    if stream.tell() != len(data):
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


def try_decode_frame(frame: bytes, limit: int = DEFAULT_REPLY_LIMIT) -> object | None:
    """Unpickle `frame` (bytes up to and including an END marker).

    Returns None when the pickle is incomplete: the END bytes were inside the
    payload, so the caller must read up to the next END and try again.
    """
    if len(frame) > limit:
        raise Fail2banProtocolError(f"fail2ban reply is larger than {limit} bytes")
    if not frame.endswith(END):
        raise Fail2banProtocolError("fail2ban reply frame lacks the end marker")
    payload = frame[: -len(END)]
    try:
        return safe_loads(payload)
    except ForbiddenGlobalError as exc:
        raise Fail2banProtocolError(str(exc)) from None
    except (pickle.UnpicklingError, EOFError) as exc:
        if _is_truncation(exc):
            return None
        raise Fail2banProtocolError("fail2ban reply is not a valid pickle") from None
    except Exception:
        # Anything a constructor on the allow-list raises (e.g. int("x") via REDUCE).
        raise Fail2banProtocolError("fail2ban reply is not a valid pickle") from None


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
