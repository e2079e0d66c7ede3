"""Every real list format, checked against a reference computed here (issue 11).

Each list is parsed by this test's own small reader of that format, and the never-ban
rules are applied with `ipaddress` alone; PreviewSource's counts and the blocklist
jail's bans after ImportSource must equal that reference. The real data is ipsum's
level-4 list (The Unlicense, `tests/data/blocklists/ipsum-level4.LICENSE`); the other
formats are look-alikes generated from their documented layouts (their data is under
third-party terms), with the private, documentation and bogon ranges real lists carry.
"""

from __future__ import annotations

import ipaddress
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.daemon import DaemonProcess
from tests.harness.fail2ban import F2bSandbox
from tests.harness.util import REPO_ROOT
from tests.integration.dbus_calls import BLOCKLISTS, Runner, call

FAST = "fast-blocklist"  # no action: thousands of bans in a second
DATA = REPO_ROOT / "tests" / "data" / "blocklists"
MIN_PREFIX = {4: 16, 6: 32}  # the daemon's defaults
PUBLIC_FIRST_OCTETS = (5, 23, 31, 37, 45, 46, 62, 77, 78, 80, 85, 91, 103, 109, 176, 185, 212)
# what real lists carry that must never be banned (FireHOL's fullbogons among them)
PROTECTED = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "10.1.2.3", "192.168.1.1", "198.51.100.7", "203.0.113.9", "100.64.1.1",
)  # fmt: skip
DaemonStarter = Callable[..., DaemonProcess]
Reader = Callable[[str], list[str | None]]
"""A format's reader: the entry text of each data line (None = not an entry)."""


def _public_v4(rng: random.Random) -> str:
    return f"{rng.choice(PUBLIC_FIRST_OCTETS)}.{rng.randrange(256)}.{rng.randrange(256)}"


def _public_v6(rng: random.Random) -> str:
    return f"2a0{rng.randrange(1, 10)}:{rng.randrange(1, 0xFFFF):x}:{rng.randrange(0xFFFF):x}"


# --------------------------------------------------------------- generated lists
def ipsum_full(rng: random.Random) -> str:
    head = "".join(f"# IPsum Threat Intelligence Feed line {i}\n" for i in range(7))
    rows = [
        f"{_public_v4(rng)}.{rng.randrange(1, 255)}\t{rng.randrange(1, 10)}" for _ in range(3000)
    ]
    rows += [f"{ip}\t3" for ip in PROTECTED if "/" not in ip]
    rows += ["not-an-address\t2", "999.1.1.1\t4"]
    rng.shuffle(rows)
    return head + "\n".join(rows) + "\n"


def firehol_level1(rng: random.Random) -> str:
    head = "#\n# firehol_level1\n#\n# Maintainer: FireHOL look-alike\n#\n"
    rows = [f"{_public_v4(rng)}.0/24" for _ in range(400)]
    rows += [f"{_public_v4(rng)}.{rng.randrange(1, 255)}" for _ in range(400)]
    rows += [
        f"{rng.choice(PUBLIC_FIRST_OCTETS)}.{rng.randrange(0, 256, 8)}.0.0/13" for _ in range(5)
    ]
    rows += list(PROTECTED)
    rng.shuffle(rows)
    return head + "\n".join(rows) + "\n"


def spamhaus_drop(rng: random.Random) -> str:
    head = "; Spamhaus DROP List 2026/11/25 - (c) look-alike\n; Last-Modified: today\n"
    rows = [
        f"{_public_v4(rng)}.0/{rng.choice((20, 22, 24))} ; SBL{rng.randrange(10**6):06d}"
        for _ in range(800)
    ]
    rows += ["198.51.100.0/24 ; SBL000001", "10.0.0.0/8 ; SBL000002"]
    return head + "\n".join(rows) + "\n"


def spamhaus_drop_json(rng: random.Random) -> str:
    rows = [
        json.dumps(
            {
                "cidr": f"{_public_v4(rng)}.0/{rng.choice((22, 24))}",
                "sblid": f"SBL{i:06d}",
                "rir": "ripencc",
            }
        )
        for i in range(600)
    ]
    rows.append(json.dumps({"cidr": "203.0.113.0/24", "sblid": "SBL999999", "rir": "arin"}))
    rows.append(
        json.dumps(
            {"type": "metadata", "timestamp": 1795600000, "size": len(rows), "records": len(rows)}
        )
    )
    return "\n".join(rows) + "\n"


def spamhaus_dropv6_json(rng: random.Random) -> str:
    rows = [
        json.dumps(
            {"cidr": f"{_public_v6(rng)}::/{rng.choice((32, 40, 48))}", "sblid": f"SBL{i:06d}"}
        )
        for i in range(200)
    ]
    rows += [
        json.dumps({"cidr": "2001:db8::/32", "sblid": "SBL1"}),
        json.dumps({"cidr": "2a01::/16", "sblid": "SBL2"}),
    ]
    rows.append(json.dumps({"type": "metadata", "timestamp": 1795600000, "records": len(rows)}))
    return "\n".join(rows) + "\n"


def blocklist_de(rng: random.Random) -> str:
    rows = [f"{_public_v4(rng)}.{rng.randrange(1, 255)}" for _ in range(2500)]
    rows += [f"{_public_v6(rng)}::{rng.randrange(1, 0xFFFF):x}" for _ in range(200)]
    rows += rows[:300]  # duplicates
    rows += ["192.168.1.1", "fe80::1", "::1"]
    rng.shuffle(rows)
    return "\r\n".join(rows)  # CRLF, no final newline


# ------------------------------------------------------- this test's own readers
def _plain(line: str) -> str | None:
    text = line.strip()
    return None if not text or text[0] in "#;" else text.split()[0]


def read_ipsum(text: str) -> list[str | None]:
    return [_plain(line) for line in text.splitlines()]


def read_drop(text: str) -> list[str | None]:
    return [
        _plain(line.split(";")[0]) if line.strip() and line[0] != ";" else None
        for line in text.splitlines()
    ]


def read_ndjson(text: str) -> list[str | None]:
    out: list[str | None] = []
    for line in text.splitlines():
        record = json.loads(line)
        out.append(None if record.get("type") == "metadata" else record["cidr"])
    return out


def reference(values: list[str | None]) -> tuple[set[str], set[str], int]:
    """(allowed, refused, invalid): distinct normalised entries by the rules, and the
    count of data lines that are no address or network."""
    allowed: set[str] = set()
    refused: set[str] = set()
    invalid = 0
    for value in values:
        if value is None:
            continue
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            invalid += 1
            continue
        text = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
        ok = (
            net.prefixlen >= MIN_PREFIX[net.version]
            and net.network_address.is_global
            and net.broadcast_address.is_global
        )
        (allowed if ok else refused).add(text)
    return allowed, refused - allowed, invalid


def _normal(entry: str) -> str:
    net = ipaddress.ip_network(entry, strict=False)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


FORMATS: dict[str, tuple[Callable[[random.Random], str] | Path, Reader]] = {
    "ipsum-level4 (real)": (DATA / "ipsum-level4.txt", read_ipsum),
    "ipsum.txt": (ipsum_full, read_ipsum),
    "firehol-level1": (firehol_level1, read_ipsum),
    "spamhaus-drop.txt": (spamhaus_drop, read_drop),
    "spamhaus-drop.json": (spamhaus_drop_json, read_ndjson),
    "spamhaus-dropv6.json": (spamhaus_dropv6_json, read_ndjson),
    "blocklist.de": (blocklist_de, read_ipsum),
}


@pytest.mark.f2b_options(extra_jails={FAST: {"action": "", "bantime": "1d"}})
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_real_formats_match_an_independent_reference(
    fmt: str, f2b: F2bSandbox, start_daemon: DaemonStarter, busctl: Runner, tmp_path: Path
) -> None:
    make, read = FORMATS[fmt]
    text = make.read_text() if isinstance(make, Path) else make(random.Random(fmt))
    folder = tmp_path / "lists"
    folder.mkdir()
    path = folder / "list"
    path.write_bytes(text.encode())
    allowed, refused, invalid = reference(read(text))
    assert allowed  # the reference is not vacuous
    start_daemon(blocklist={"file_dir": str(folder), "jail": FAST, "batch_size": 1000})

    url = f"file://{path}"
    (preview,) = call(busctl, BLOCKLISTS, "PreviewSource", "s", url)
    got: dict[str, Any] = preview
    assert (got["entries"], got["refused"], got["invalid"]) == (
        len(allowed) + len(refused),
        len(refused),
        invalid,
    ), (fmt, sorted(refused)[:10])
    (source_id,) = call(busctl, BLOCKLISTS, "AddSource", "ssb", "l", url, "false")
    (result,) = call(busctl, BLOCKLISTS, "ImportSource", "u", str(source_id))
    assert result["status"] == "completed", result
    assert result["added"] == len(allowed)
    assert {_normal(e) for e in f2b.banned(FAST)} == allowed
