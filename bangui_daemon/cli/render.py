"""Pure text formatting for banguictl: tables, bar charts, durations and times.

No I/O and no clock reads here (callers pass `now` and the width), so every output
is reproducible in unit tests.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, tzinfo

_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
_DURATION_RE = re.compile(r"(\d+)([smhdw])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

MIN_BAR = 10
"""Bars never get narrower than this, even on a very small terminal."""


def clean(text: object) -> str:
    """Return `text` as a string without control characters.

    Values come from fail2ban logs and downloaded blocklists: an escape sequence in a
    jail or source name must not reach the user's terminal.
    """
    return _CONTROL_RE.sub("?", str(text))


def format_duration(seconds: int) -> str:
    """Render a ban time compactly: 3600 -> "1h", 604800 -> "7d", -1 -> "permanent".

    At most the two largest units are shown ("1h30m"), which is what a ban time needs.
    """
    if seconds < 0:
        return "permanent"
    if seconds == 0:
        return "0s"
    parts: list[str] = []
    rest = seconds
    for unit, size in _UNITS:
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
        elif parts:
            # keep the two units adjacent: 1d0h5m would read badly, so stop here
            break
        if len(parts) == 2:
            break
    return "".join(parts)


def parse_duration(text: str) -> int:
    """Parse "90", "90s", "15m", "24h", "7d", "2w" or "1h30m" into seconds.

    Raises ValueError on anything else (argparse turns it into a usage error).
    """
    stripped = re.sub(r"\s+", "", text)
    if stripped.isdigit():
        return int(stripped)
    pos = 0
    total = 0
    for match in _DURATION_RE.finditer(stripped):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        pos = match.end()
    if not stripped or pos != len(stripped):
        raise ValueError(f"not a duration: {text!r} (try 90, 15m, 24h or 7d)")
    return total


def format_timestamp(ts: int, tz: tzinfo | None = None) -> str:
    """Render Unix seconds as "YYYY-MM-DD HH:MM:SS" in local time (or `tz`)."""
    return datetime.fromtimestamp(ts, tz=UTC).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def format_relative(ts: int, now: float) -> str:
    """Render how far `ts` is from `now`: "just now", "2 min ago", "in 3 h"."""
    delta = int(now - ts)
    ahead = delta < 0
    span = -delta if ahead else delta
    if span < 10:
        return "just now"
    if span < 60:
        amount = f"{span} s"
    elif span < 3600:
        amount = f"{span // 60} min"
    elif span < 86400:
        amount = f"{span // 3600} h"
    elif span < 86400 * 60:
        amount = f"{span // 86400} d"
    elif span < 86400 * 730:
        amount = f"{span // (86400 * 30)} mo"
    else:
        amount = f"{span // (86400 * 365)} y"
    return f"in {amount}" if ahead else f"{amount} ago"


def format_when(ts: int, now: float, tz: tzinfo | None = None, never: str = "never") -> str:
    """Render "2024-05-01 12:00:00 (2 min ago)"; 0 (the contract's "never") -> `never`."""
    if ts <= 0:
        return never
    return f"{format_timestamp(ts, tz)} ({format_relative(ts, now)})"


def _is_number(cell: str) -> bool:
    return bool(cell) and cell.lstrip("-+").replace(".", "", 1).isdigit()


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    empty: str = "(none)",
    right: Iterable[int] | None = None,
) -> str:
    """Render rows as aligned columns under a header line, two spaces apart.

    Numeric columns (every non-empty cell a number) are right-aligned unless `right`
    names the columns explicitly. No rows -> the `empty` message alone, so an empty
    result is obvious rather than a bare header.
    """
    cells = [[clean(cell) for cell in row] for row in rows]
    if not cells:
        return empty
    ncols = len(headers)
    for row in cells:
        if len(row) != ncols:
            raise ValueError(f"row has {len(row)} cells, the table has {ncols} columns")
    widths = [max(len(headers[i]), *(len(row[i]) for row in cells)) for i in range(ncols)]
    if right is None:
        right_cols = {
            i
            for i in range(ncols)
            if any(row[i] for row in cells) and all(_is_number(row[i]) for row in cells if row[i])
        }
    else:
        right_cols = set(right)

    def line(values: Sequence[str]) -> str:
        out = [
            value.rjust(widths[i]) if i in right_cols else value.ljust(widths[i])
            for i, value in enumerate(values)
        ]
        return "  ".join(out).rstrip()

    return "\n".join([line([h.upper() for h in headers]), *(line(row) for row in cells)])


def key_values(pairs: Iterable[tuple[str, object]]) -> str:
    """Render "key: value" lines with the values aligned, for single records."""
    items = [(clean(k), clean(v)) for k, v in pairs]
    if not items:
        return ""
    width = max(len(k) for k, _ in items) + 1
    return "\n".join(f"{(k + ':').ljust(width)} {v}".rstrip() for k, v in items)


def bar_chart(
    items: Sequence[tuple[str, int]],
    width: int = 80,
    *,
    char: str = "█",
    empty: str = "(no data)",
) -> str:
    """Render labelled horizontal bars scaled to the largest count, within `width`.

    Each line is `label  bar  count`; a non-zero count always gets at least one block
    so that small values stay visible, and zero gets none.
    """
    if not items:
        return empty
    labels = [clean(label) for label, _ in items]
    counts = [str(count) for _, count in items]
    label_w = max(len(label) for label in labels)
    count_w = max(len(c) for c in counts)
    bar_w = max(MIN_BAR, width - label_w - count_w - 4)
    top = max((count for _, count in items), default=0)
    lines = []
    for label, count_text, (_, count) in zip(labels, counts, items, strict=True):
        size = 0
        if top > 0 and count > 0:
            size = max(1, round(count * bar_w / top))
        bar = (char * size).ljust(bar_w)
        lines.append(f"{label.ljust(label_w)}  {bar}  {count_text.rjust(count_w)}")
    return "\n".join(lines)


def progress_bar(done: int, total: int, width: int = 40, *, char: str = "#") -> str:
    """Render "[#####.....]  50%  500/1000"; an unknown total (0) shows the count only."""
    inner = max(MIN_BAR, width)
    if total <= 0:
        return f"[{'.' * inner}]  {done}"
    fraction = min(max(done / total, 0.0), 1.0)
    filled = int(fraction * inner)
    return f"[{char * filled}{'.' * (inner - filled)}] {int(fraction * 100):3d}%  {done}/{total}"
