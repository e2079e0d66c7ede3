"""Decode the `data` column of fail2ban's `bans` table.

fail2ban stores it as JSON (a BLOB under Python 3) and shapes each match either as a
plain string or as a `[prefix, date, rest]` list, so readers must accept both.
"""

from __future__ import annotations

import contextlib
import json


def _as_int(value: object, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str | bytes):
        with contextlib.suppress(ValueError):
            return int(value)
    return default


def decode_data(raw: object) -> tuple[int, list[str]]:
    """(failures, matches) from the JSON `data` column (a BLOB under Python 3).

    Each match is either `[prefix, date, rest]` or a plain string; lists are joined
    back into the original log line. Anything undecodable yields (0, []).
    """
    if isinstance(raw, memoryview):
        raw = raw.tobytes()
    if not isinstance(raw, bytes | str):
        return 0, []
    try:
        data = json.loads(raw)
    except ValueError:
        return 0, []
    if not isinstance(data, dict):
        return 0, []
    failures = _as_int(data.get("failures"), 0)
    matches: list[str] = []
    raw_matches = data.get("matches")
    if isinstance(raw_matches, list):
        for item in raw_matches:
            if isinstance(item, str):
                matches.append(item)
            elif isinstance(item, list) and all(isinstance(part, str) for part in item):
                matches.append("".join(item))
    return failures, matches
