"""Wire format and reply parsers of fail2ban's control socket."""

from __future__ import annotations

import os
import pickle
import sqlite3
import struct
import time
from collections.abc import Iterator

import pytest

from bangui_daemon.errors import Fail2banProtocolError, Fail2banUnavailable, InvalidArgument
from bangui_daemon.fail2ban import protocol
from bangui_daemon.fail2ban.protocol import END


def remote_exception_pickle(module: str, name: str, message: str, code: int = 1) -> bytes:
    """`(code, module.name(message))` as fail2ban pickles it, without importing fail2ban."""
    text = message.encode()
    return (
        b"\x80\x02"  # PROTO 2
        b"K"
        + bytes([code])  # BININT1 code
        + b"c"
        + module.encode()
        + b"\n"
        + name.encode()
        + b"\n"  # GLOBAL
        + b"X"
        + struct.pack("<I", len(text))
        + text  # BINUNICODE
        + b"\x85"  # TUPLE1
        + b"R"  # REDUCE
        + b"\x86"  # TUPLE2
        + b"."  # STOP
    )


class _Evil:
    def __reduce__(self) -> tuple[object, ...]:
        return (os.system, ("true",))


# ------------------------------------------------------------------ requests


def test_encode_command_is_pickled_list_plus_end() -> None:
    frame = protocol.encode_command(["set", "sshd", "banip", "1.2.3.4"])
    assert frame.endswith(END)
    assert pickle.loads(frame[: -len(END)]) == ["set", "sshd", "banip", "1.2.3.4"]


@pytest.mark.parametrize(
    "bad",
    [
        "1.2.3.4<F2B_END_COMMAND>",
        "x<F2B_CLOSE_COMMAND>y",
    ],
)
def test_encode_command_rejects_markers(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        protocol.encode_command(["set", "sshd", "banip", bad])


@pytest.mark.parametrize("bad", [1, b"1.2.3.4", None, ["a"]])
def test_encode_command_rejects_non_str(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        protocol.encode_command(["ping", bad])  # type: ignore[list-item]


def test_encode_command_rejects_empty() -> None:
    with pytest.raises(InvalidArgument):
        protocol.encode_command([])


# --------------------------------------------------------------- unpickling


def test_safe_loads_accepts_builtins() -> None:
    value = (0, [("a", 1), {"b": {1.5, 2}}, frozenset({3}), b"x", None, True])
    assert protocol.safe_loads(pickle.dumps(value, protocol=5)) == value


def test_safe_loads_accepts_builtin_exception() -> None:
    obj = protocol.safe_loads(pickle.dumps((1, ValueError("not banned: ['1.1.1.1']"))))
    assert isinstance(obj, tuple)
    assert isinstance(obj[1], ValueError)
    assert obj[1].args == ("not banned: ['1.1.1.1']",)


def test_safe_loads_maps_fail2ban_exception_to_stand_in() -> None:
    raw = remote_exception_pickle("fail2ban.exceptions", "UnknownJailException", "nosuchjail")
    code, exc = protocol.interpret_reply(protocol.safe_loads(raw))
    assert code == 1
    assert isinstance(exc, protocol.RemoteError)
    assert exc.remote_class == "fail2ban.exceptions.UnknownJailException"
    assert protocol.describe_remote_error(exc) == ("UnknownJailException", "nosuchjail")


def test_safe_loads_names_any_error_class_without_importing_it() -> None:
    """sqlite3.OperationalError (fail2ban's DB locked) arrives with a state dict; the
    stand-in keeps the class name and the text, and takes no attribute from the reply."""
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = 5
    code, exc = protocol.interpret_reply(protocol.safe_loads(pickle.dumps((1, locked))))
    assert code == 1
    assert isinstance(exc, protocol.RemoteError)
    assert exc.remote_class == "sqlite3.OperationalError"
    assert protocol.describe_remote_error(exc) == ("OperationalError", "database is locked")
    assert not hasattr(exc, "sqlite_errorcode")
    forged = remote_exception_pickle("evil.mod", "BadError", "x")[:-2]  # before TUPLE2
    # EMPTY_DICT, "remote_class": "os.system", SETITEM, BUILD, TUPLE2, STOP
    forged += b"}X\x0c\x00\x00\x00remote_classX\x09\x00\x00\x00os.systemsb\x86."
    code, exc = protocol.interpret_reply(protocol.safe_loads(forged))
    assert isinstance(exc, protocol.RemoteError)
    assert exc.remote_class == "evil.mod.BadError"


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("builtins", "getattr"),
        ("builtins", "object"),
        ("subprocess", "Popen"),
        ("fail2ban.server.server", "Server"),
        ("builtins", "SystemExit"),
    ],
)
def test_safe_loads_refuses_other_globals(module: str, name: str) -> None:
    raw = remote_exception_pickle(module, name, "true", code=0)
    with pytest.raises(protocol.ForbiddenGlobalError):
        protocol.safe_loads(raw)
    with pytest.raises(Fail2banProtocolError):
        protocol.ReplyAssembler().feed(raw + END)


def test_assembler_refuses_os_system_pickle() -> None:
    frame = pickle.dumps((0, _Evil()), protocol=5) + END
    with pytest.raises(Fail2banProtocolError, match="forbidden global"):
        protocol.ReplyAssembler().feed(frame)


def test_assembler_reads_on_when_end_is_inside_payload() -> None:
    value = (0, "a<F2B_END_COMMAND>b")
    full = pickle.dumps(value, protocol=5) + END
    cut = full.index(END) + len(END)
    assembler = protocol.ReplyAssembler()
    assert assembler.feed(full[:cut]) is None
    assert assembler.feed(full[cut:]) == value
    # The same reply in one chunk, and byte by byte.
    assert protocol.ReplyAssembler().feed(full) == value
    one_by_one = protocol.ReplyAssembler()
    replies = [one_by_one.feed(full[i : i + 1]) for i in range(len(full))]
    assert replies[-1] == value
    assert replies[:-1] == [None] * (len(full) - 1)


def test_assembler_rejects_garbage_and_trailing_bytes() -> None:
    with pytest.raises(Fail2banProtocolError, match="not a valid pickle"):
        protocol.ReplyAssembler().feed(b"\x00garbage" + END)
    with pytest.raises(Fail2banProtocolError, match="not a valid pickle"):
        protocol.ReplyAssembler().feed(pickle.dumps((0, 1)) + b"xx" + END)
    with pytest.raises(Fail2banProtocolError, match="after its reply"):
        protocol.ReplyAssembler().feed(pickle.dumps((0, 1)) + END + b"more")
    assert protocol.ReplyAssembler().feed(pickle.dumps((0, 1))) is None


def test_assembler_size_cap_refuses_and_releases() -> None:
    frame = pickle.dumps((0, "x" * 1000)) + END
    assert protocol.ReplyAssembler(limit=len(frame)).feed(frame) == (0, "x" * 1000)
    small = protocol.ReplyAssembler(limit=len(frame) - 1)
    assert small.feed(frame[:100]) is None
    assert small.size == 100
    with pytest.raises(Fail2banProtocolError, match="larger"):
        small.feed(frame[100:])
    assert small.size == 0


def test_assembler_bounds_decode_attempts() -> None:
    # A string full of end markers: each would cost one more full unpickling attempt.
    full = pickle.dumps((0, "<F2B_END_COMMAND>" * 50), protocol=5) + END
    with pytest.raises(Fail2banProtocolError, match="too many end markers"):
        protocol.ReplyAssembler().feed(full)


def test_default_limit_holds_a_million_timed_ipv4_bans() -> None:
    # The longest IPv4 line fail2ban 1.0.2 prints for `get JAIL banip --with-time`.
    line = "255.255.255.255 \t2026-11-25 18:00:00 + 604800 = 2026-12-02 18:00:00"
    sample = pickle.dumps((0, [line] * 1000), protocol=5)
    distinct = pickle.dumps((0, [line[:-1] + str(i % 10) for i in range(1000)]), protocol=5)
    per_ban = max(len(sample), len(distinct)) / 1000
    assert per_ban * 1_000_000 < protocol.DEFAULT_REPLY_LIMIT


# ------------------------------------------------------------ reply shapes


def test_interpret_reply_shapes() -> None:
    assert protocol.interpret_reply((0, "pong")) == (0, "pong")
    assert protocol.interpret_reply((0, None)) == (0, None)
    code, exc = protocol.interpret_reply("ERROR: pickle data was truncated")
    assert code == 1
    assert isinstance(exc, protocol.RemoteError)
    assert protocol.describe_remote_error(exc) == ("ERROR", "pickle data was truncated")
    with pytest.raises(Fail2banUnavailable, match="shutting down"):
        protocol.interpret_reply(["SHUTDOWN"])
    for bad in ("pong", (2, "x"), (0,), (1, "not an exception"), None):
        with pytest.raises(Fail2banProtocolError):
            protocol.interpret_reply(bad)


def test_describe_builtin_errors() -> None:
    assert protocol.describe_remote_error(Exception("Invalid command")) == (
        "Exception",
        "Invalid command",
    )
    assert protocol.describe_remote_error(KeyError("sshd")) == ("KeyError", "sshd")


# ------------------------------------------------------------------ parsers


def test_parse_jail_list() -> None:
    reply = [("Number of jail", 2), ("Jail list", "blocklist-import, sshd")]
    assert protocol.parse_jail_list(reply) == ["blocklist-import", "sshd"]
    assert protocol.parse_jail_list([("Number of jail", 0), ("Jail list", "")]) == []
    with pytest.raises(Fail2banProtocolError):
        protocol.parse_jail_list([("Number of jail", 0)])
    with pytest.raises(Fail2banProtocolError):
        protocol.parse_jail_list("sshd")


def test_parse_jail_counts_full_and_short() -> None:
    full = [
        ("Filter", [("Currently failed", 2), ("Total failed", 5), ("File list", ["/l"])]),
        (
            "Actions",
            [("Currently banned", 1), ("Total banned", 3), ("Banned IP list", ["1.2.3.4"])],
        ),
    ]
    short = [
        ("Filter", [("Currently failed", 2), ("Total failed", 5)]),
        ("Actions", [("Currently banned", 1), ("Total banned", 3)]),
    ]
    assert protocol.parse_jail_counts(full) == (2, 5, 1, 3)
    assert protocol.parse_jail_counts(short) == (2, 5, 1, 3)
    with pytest.raises(Fail2banProtocolError):
        protocol.parse_jail_counts([("Filter", []), ("Actions", [])])


@pytest.fixture
def utc() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


@pytest.mark.usefixtures("utc")
def test_parse_ban_with_time_in_utc() -> None:
    line = "45.33.12.7 \t2026-11-23 17:37:13 + 3600 = 2026-11-23 18:37:13"
    assert protocol.parse_ban_with_time(line) == ("45.33.12.7", 1795455433, 3600)


@pytest.mark.usefixtures("utc")
def test_parse_ban_with_time_permanent_and_ipv6() -> None:
    # fail2ban prints the end of a permanent ban as the last second of year 9999.
    line = "2001:db8::1 \t2026-11-23 17:37:13 + -1 = 9999-12-31 23:59:59"
    assert protocol.parse_ban_with_time(line) == ("2001:db8::1", 1795455433, -1)


def test_parse_ban_with_time_uses_local_time() -> None:
    epoch = 1_780_000_000
    start = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
    line = f"1.2.3.4 \t{start} + 604800 = whatever"
    assert protocol.parse_ban_with_time(line) == ("1.2.3.4", epoch, 604800)


@pytest.mark.parametrize(
    "bad",
    [
        "1.2.3.4",
        "1.2.3.4 2026-11-23 17:37:13 + 1 = x",
        "1.2.3.4 \t2026-13-45 17:37:13 + 1 = x",
        "1.2.3.4 \t2026-11-23 17:37:13 + soon = x",
        42,
    ],
)
def test_parse_ban_with_time_rejects(bad: object) -> None:
    with pytest.raises(Fail2banProtocolError):
        protocol.parse_ban_with_time(bad)


def test_parse_int_and_str_list() -> None:
    assert protocol.parse_int(3, "x") == 3
    assert protocol.parse_int(86400.0, "x") == 86400
    for bad in (True, 1.5, "3", None):
        with pytest.raises(Fail2banProtocolError):
            protocol.parse_int(bad, "x")
    assert protocol.parse_str_list(["a", "b"], "x") == ["a", "b"]
    assert protocol.parse_str_list(("a",), "x") == ["a"]
    with pytest.raises(Fail2banProtocolError):
        protocol.parse_str_list(["a", 1], "x")
