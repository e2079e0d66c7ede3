"""banguictl's pure formatting: durations, times, tables, bar charts, progress."""

from __future__ import annotations

import re
import time
from datetime import UTC

import pytest

from bangui_daemon.cli import render

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (-1, "permanent"),
        (-5, "permanent"),
        (0, "0s"),
        (59, "59s"),
        (60, "1m"),
        (90, "1m30s"),
        (600, "10m"),
        (3600, "1h"),
        (5400, "1h30m"),
        (3601, "1h"),  # two adjacent units at most: 1h0m1s reads as 1h
        (86400, "1d"),
        (90000, "1d1h"),
        (604800, "7d"),
        (31536000, "365d"),
    ],
)
def test_format_duration(seconds: int, expected: str) -> None:
    assert render.format_duration(seconds) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("24h", 86400),
        ("7d", 604800),
        ("2w", 1209600),
        ("1h30m", 5400),
        ("1H", 3600),
        (" 1d 12h ", 129600),
    ],
)
def test_parse_duration(text: str, expected: int) -> None:
    assert render.parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "h", "5x", "1h 2", "1.5h", "-1h", "h1"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        render.parse_duration(text)


def test_duration_round_trip() -> None:
    for seconds in (60, 3600, 5400, 86400, 604800):
        assert render.parse_duration(render.format_duration(seconds)) == seconds


def test_format_timestamp_utc_and_local() -> None:
    assert render.format_timestamp(0, UTC) == "1970-01-01 00:00:00"
    assert render.format_timestamp(1_700_000_000, UTC) == "2023-11-14 22:13:20"
    local = render.format_timestamp(1_700_000_000)
    assert local == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1_700_000_000))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", local)


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        (0, "just now"),
        (-5, "just now"),
        (-30, "30 s ago"),
        (-120, "2 min ago"),
        (-3 * 3600, "3 h ago"),
        (-2 * 86400, "2 d ago"),
        (-90 * 86400, "3 mo ago"),
        (-800 * 86400, "2 y ago"),
        (300, "in 5 min"),
        (7200, "in 2 h"),
    ],
)
def test_format_relative(offset: int, expected: str) -> None:
    assert render.format_relative(int(NOW) + offset, NOW) == expected


def test_format_when() -> None:
    assert render.format_when(0, NOW) == "never"
    assert render.format_when(0, NOW, never="-") == "-"
    assert render.format_when(int(NOW) - 120, NOW, UTC) == "2023-11-14 22:11:20 (2 min ago)"
    assert render.format_when(int(NOW) + 600, NOW, UTC).endswith("(in 10 min)")


def test_table_aligns_and_right_aligns_numbers() -> None:
    out = render.table(
        ["jail", "ip", "count"], [["sshd", "192.0.2.1", 5], ["recidive", "198.51.100.10", 12]]
    )
    assert out.splitlines() == [
        "JAIL      IP             COUNT",
        "sshd      192.0.2.1          5",
        "recidive  198.51.100.10     12",
    ]


def test_table_explicit_right_columns_and_no_trailing_spaces() -> None:
    out = render.table(["a", "b"], [["1", "x"], ["22", ""]], right=())
    assert out.splitlines() == ["A   B", "1   x", "22"]


def test_table_empty_shows_the_message() -> None:
    assert render.table(["jail"], [], empty="no bans") == "no bans"
    assert render.table(["jail"], []) == "(none)"


def test_table_cleans_control_characters() -> None:
    out = render.table(["name"], [["evil\x1b[31mred"]])
    assert "\x1b" not in out
    assert "evil?[31mred" in out


def test_table_rejects_ragged_rows() -> None:
    with pytest.raises(ValueError, match="2 cells"):
        render.table(["a"], [["1", "2"]])


def test_key_values() -> None:
    assert render.key_values([("state", "running"), ("active bans", 3)]).splitlines() == [
        "state:       running",
        "active bans: 3",
    ]
    assert render.key_values([]) == ""


def test_bar_chart_fills_width_and_scales() -> None:
    out = render.bar_chart([("sshd", 100), ("recidive", 50), ("nginx", 1), ("x", 0)], width=60)
    lines = out.splitlines()
    assert all(len(line) == 60 for line in lines)
    bar_w = 60 - len("recidive") - len("100") - 4
    assert lines[0] == f"sshd      {'█' * bar_w}  100"
    assert lines[1].count("█") == round(bar_w / 2)
    assert lines[2].count("█") == 1  # a tiny non-zero count stays visible
    assert lines[3].count("█") == 0
    assert lines[3].endswith("    0")


def test_bar_chart_narrow_terminal_keeps_a_minimum_bar() -> None:
    out = render.bar_chart([("a-very-long-label", 7)], width=10, char="#")
    assert "#" * render.MIN_BAR in out


def test_bar_chart_empty_and_all_zero() -> None:
    assert render.bar_chart([]) == "(no data)"
    assert render.bar_chart([], empty="no bans") == "no bans"
    assert "█" not in render.bar_chart([("a", 0), ("b", 0)], 40)


def test_progress_bar() -> None:
    assert render.progress_bar(500, 1000, 20) == "[##########..........]  50%  500/1000"
    assert render.progress_bar(1000, 1000, 10) == "[##########] 100%  1000/1000"
    assert render.progress_bar(2000, 1000, 10).startswith("[##########] 100%")
    assert render.progress_bar(7, 0, 10) == "[..........]  7"


def test_clean() -> None:
    assert render.clean("a\tb\nc\x07") == "a?b?c?"
    assert render.clean(42) == "42"
