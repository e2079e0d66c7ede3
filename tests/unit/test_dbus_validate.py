"""The D-Bus edge's integer ranges (`bangui_daemon.dbus.validate`) and the error quoting."""

from __future__ import annotations

import pytest
from dbus_fast import Variant

from bangui_daemon.dbus.validate import (
    BUCKET,
    MAX_PAGE_SIZE,
    PAGE,
    PAGE_SIZE,
    TIME,
    ArgumentCheck,
    IntRange,
)
from bangui_daemon.errors import InvalidArgument, quote


def test_every_integer_argument_must_declare_a_range() -> None:
    with pytest.raises(TypeError, match="since"):
        ArgumentCheck("GetTop", ["dimension", "since", "limit"], "sxu", {"limit": PAGE_SIZE})
    with pytest.raises(TypeError, match="nope"):
        ArgumentCheck("M", ["a"], "u", {"a": PAGE, "nope": PAGE})
    with pytest.raises(TypeError, match="takes no range"):
        ArgumentCheck("M", ["a"], "s", {"a": PAGE})


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ((-1, 3600), "since"),
        ((2**63 - 1, 3600), "since"),
        ((0, 0), "bucket_seconds"),
        ((0, 2**63 - 1), "bucket_seconds"),
    ],
)
def test_a_value_outside_its_range_names_the_argument(args: tuple[int, int], named: str) -> None:
    check = ArgumentCheck(
        "GetTimeline", ["since", "bucket_seconds"], "xx", {"since": TIME, "bucket_seconds": BUCKET}
    )
    with pytest.raises(InvalidArgument, match=f"^{named} must be from") as caught:
        check(args)
    assert str(args[1] if named == "bucket_seconds" else args[0]) in str(caught.value)


def test_ends_are_included() -> None:
    check = ArgumentCheck("M", ["page", "page_size"], "uu", {"page": PAGE, "page_size": PAGE_SIZE})
    check((1, 1))
    check((2**32 - 1, 1000))
    with pytest.raises(InvalidArgument, match="page_size"):
        check((1, 1001))


def test_integer_keys_of_a_dictionary_are_checked_by_key() -> None:
    check = ArgumentCheck(
        "GetHistory",
        ["filter_", "page"],
        ["a{sv}", "u"],
        {"filter_": {"until": TIME}, "page": PAGE},
    )
    check(({"until": Variant("x", 5), "jail": Variant("s", "sshd")}, 1))
    check(({"until": Variant("s", "later")}, 1))  # a wrong type is the service's to name
    with pytest.raises(InvalidArgument, match=r"^filter until must be from 0"):
        check(({"until": Variant("x", -(2**63))}, 1))


@pytest.mark.parametrize("limit", [0, MAX_PAGE_SIZE + 1])
def test_a_page_size_out_of_range_is_refused(limit: int) -> None:
    """ListBans, GetHistory, GetTop, ListImportRuns: one rule, at the edge."""
    with pytest.raises(InvalidArgument, match=f"^limit must be from 1 to {MAX_PAGE_SIZE},"):
        PAGE_SIZE.check("limit", limit)


def test_int_range_message() -> None:
    with pytest.raises(InvalidArgument, match=r"^limit must be from 1 to 9, got 10$"):
        IntRange(1, 9).check("limit", 10)


# --------------------------------------------------------------------- quote
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("sshd", "'sshd'"),
        ("", "''"),
        ("it's", "'it\\'s'"),
        ("a\\b", "'a\\\\b'"),
        ("\x1b[2J\r\n", "'\\x1b[2J\\r\\n'"),
        ("\u200b", "'\\u200b'"),
        ("été", "'\\xe9t\\xe9'"),
        ("\U0001f600", "'\\U0001f600'"),
        (42, "'42'"),
    ],
)
def test_quote_escapes_what_could_forge_a_line(value: object, shown: str) -> None:
    assert quote(value) == shown


@pytest.mark.parametrize("char", ["A", "é", "\U0001f600", "\x00", "\U000e0001"])
def test_quote_is_short_whatever_the_input(char: str) -> None:
    text = char * (1 << 20)
    shown = quote(text)
    assert shown.endswith(f"... ({1 << 20} chars)")
    assert len(shown.encode()) <= 64 + len(f"''... ({1 << 20} chars)")
    assert shown.startswith("'" + quote(char)[1:-1])
