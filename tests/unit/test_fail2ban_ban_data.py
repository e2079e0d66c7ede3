"""decode_data on the shapes fail2ban writes into the `data` column of `bans`."""

from __future__ import annotations

import json

import pytest

from bangui_daemon.fail2ban.ban_data import decode_data


def blob(data: object) -> bytes:
    """fail2ban's sqlite adapter stores `data` as UTF-8 JSON bytes."""
    return json.dumps(data).encode("utf-8")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            blob({"matches": [["", "Nov 23", " sshd: fail"], "Nov 24 sshd: x"], "failures": 3}),
            (3, ["Nov 23 sshd: fail", "Nov 24 sshd: x"]),
        ),
        (json.dumps({"matches": ["x"], "failures": 2}), (2, ["x"])),
        (b'{"matches": [], "failures": 0}', (0, [])),
        (memoryview(b'{"failures": 5}'), (5, [])),
        (b'{"matches": [1, ["a", 2], ["b", "c"]], "failures": "7"}', (7, ["bc"])),
        (b"not json", (0, [])),
        (b"[1, 2]", (0, [])),
        (None, (0, [])),
        (42, (0, [])),
    ],
)
def test_decode_data(raw: object, expected: tuple[int, list[str]]) -> None:
    assert decode_data(raw) == expected
