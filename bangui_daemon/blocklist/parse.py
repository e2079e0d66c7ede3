"""Streaming parser for IP blocklists as published in the wild.

Pure: the caller hands in the bytes (chunk by chunk, as they arrive from HTTP) and gets
a `ParseResult` back; nothing here reads files or sockets.

Understood line formats, mixable within one file:

- one address or CIDR network a line (IPv4 or IPv6), FireHOL ``.ipset``/``.netset``;
- ``#`` and ``;`` comments, whole-line or trailing (so Spamhaus DROP ``CIDR ; SBLnnn``);
- ipsum's ``IP<TAB>count``: entries below ``min_count`` are counted, not kept;
- Spamhaus DROP NDJSON (``{"cidr": ...}`` lines; the ``{"type": "metadata"}`` line
  is skipped).

Entries are normalised the way `ipaddress` would (networks masked, a /32 or /128 is
the plain address, IPv4-mapped IPv6 is IPv4) and deduplicated, so the content hash
only changes when the set of entries does. Dotted-quad IPv4 takes a regex +
`socket.inet_aton` fast path because `ipaddress` costs several microseconds a line.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from socket import inet_aton, inet_ntoa
from typing import Final

from bangui_daemon.errors import InvalidArgument

DEFAULT_MAX_ENTRIES: Final = 100_000
DEFAULT_MIN_COUNT: Final = 1
MAX_LINE_CHARS: Final = 4096
"""Longer lines are invalid: no list format needs them, and it bounds buffering."""
SAMPLE_COUNT: Final = 5
SAMPLE_CHARS: Final = 40

_BOM: Final = "\xef\xbb\xbf"  # UTF-8 BOM as decoded by latin-1
_WS: Final = " \t\r\n\v\f"  # ASCII only: str.strip() would also eat \x85 and \xa0
_CAP_CHECK_LINES: Final = 4096

# An octet without leading zeros (ipaddress rejects "01" as ambiguous octal) and a
# prefix length without them; [0-9] because \d also matches non-ASCII digits.
_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_V4_ADDR: Final = rf"({_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET})"
_V4_PREFIX: Final = r"(?:/([0-9]|[12][0-9]|3[0-2]))?"
_V4_RE: Final = re.compile(_V4_ADDR + _V4_PREFIX)
# The hot loop's pattern also takes ipsum's "IP<TAB>count" so whole ipsum files stay fast.
_V4_LINE_RE: Final = re.compile(_V4_ADDR + _V4_PREFIX + r"(?:[ \t]+([0-9]{1,9}))?")
_FIELD_SPLIT: Final = re.compile(r"[ \t]+").split
_COUNT_RE: Final = re.compile(r"[0-9]{1,9}")

_V4_ALL: Final = 0xFFFFFFFF
_MAPPED_PREFIX: Final = 0xFFFF << 32  # ::ffff:0:0/96


class TooManyEntries(InvalidArgument):
    """A list has more valid entries than the per-source cap allows."""

    def __init__(self, limit: int, message: str = "") -> None:
        super().__init__(message or f"the blocklist has more than {limit:,} entries")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class ParseResult:
    """What a blocklist contained, counted so a preview can explain itself."""

    entries: list[str]
    """Normalised, deduplicated, IPv4 before IPv6, each by address then prefix."""
    invalid: int
    invalid_sample: list[str]
    """At most `SAMPLE_COUNT` escaped, truncated invalid lines, for diagnostics."""
    below_min_count: int
    lines: int
    content_hash: str
    """sha256 hex over `entries`: independent of order, format, comments, dupes."""


def entry_key(text: str) -> bytes | None:
    """Return the canonical key of one address or network, or None if it is not one.

    The key is the packed network address, followed by one prefix-length byte unless
    the entry is a single address: 4/5 bytes for IPv4, 16/17 for IPv6. Byte order of
    keys is the sort order of entries within a family, and equal keys mean equal
    entries, which makes deduplication and sorting cheap. `text` must be stripped.
    """
    m = _V4_RE.fullmatch(text)
    if m is not None:
        prefix = m[2]
        if prefix is None:
            return inet_aton(text)
        return _v4_key(int.from_bytes(inet_aton(m[1]), "big"), int(prefix))
    if not text.isascii() or "%" in text:  # no scoped addresses in a blocklist
        return None
    try:
        if "/" in text:
            return _network_key(ipaddress.ip_network(text, strict=False))
        return _address_key(ipaddress.ip_address(text))
    except ValueError:
        return None


def key_to_text(key: bytes) -> str:
    """Return the normalised text form of an `entry_key` key."""
    size = len(key)
    if size == 4:
        return inet_ntoa(key)
    if size == 5:
        return f"{inet_ntoa(key[:4])}/{key[4]}"
    if size == 16:
        return str(ipaddress.IPv6Address(key))
    return f"{ipaddress.IPv6Address(key[:16])}/{key[16]}"


def _v4_key(network: int, prefix: int) -> bytes:
    if prefix == 32:
        return network.to_bytes(4, "big")
    network &= (_V4_ALL << (32 - prefix)) & _V4_ALL
    return network.to_bytes(4, "big") + bytes((prefix,))


def _address_key(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.packed
    return address.packed


def _network_key(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bytes:
    prefix = network.prefixlen
    if network.version == 4:
        return _v4_key(int(network.network_address), prefix)
    value = int(network.network_address)
    if prefix >= 96 and value >> 32 == 0xFFFF:  # IPv4-mapped: the IPv4 network it maps
        return _v4_key(value & _V4_ALL, prefix - 96)
    packed = network.network_address.packed
    return packed if prefix == 128 else packed + bytes((prefix,))


def _escape(line: str) -> str:
    """Return a short printable rendering of an invalid line, never its full text."""
    head = "".join(
        c if " " <= c <= "~" and c != "\\" else f"\\x{ord(c):02x}" for c in line[:SAMPLE_CHARS]
    )
    return head + "..." if len(line) > SAMPLE_CHARS else head


class BlocklistParser:
    """Incremental parser: `feed` chunks as they arrive, then `finish` once.

    Chunks are decoded as latin-1, which never fails and maps every byte to one
    character: valid entries are ASCII, so garbage simply fails to match and is
    counted as invalid, and a line split across chunks (even inside a multi-byte
    sequence) reassembles byte-exactly.
    """

    def __init__(
        self, *, min_count: int = DEFAULT_MIN_COUNT, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        if min_count < 0:
            raise InvalidArgument("min_count must not be negative")
        if max_entries < 0:
            raise InvalidArgument("max_entries must not be negative")
        self._min_count = min_count
        self._max_entries = max_entries
        # Keys from `entry_key`, split by kind so `finish` can sort and format the
        # dominant kind (plain IPv4) with C-level calls only.
        self._v4: set[bytes] = set()
        self._v4_nets: set[bytes] = set()
        self._v6: set[bytes] = set()
        self._invalid = 0
        self._samples: list[str] = []
        self._below = 0
        self._lines = 0
        self._tail = ""
        self._skipping = False  # inside an over-long line, dropping until its newline
        self._finished = False

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Parse every complete line in `chunk`; keep a trailing partial line."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        text = str(chunk, "latin-1")
        if self._skipping:
            newline = text.find("\n")
            if newline < 0:
                return
            text = text[newline + 1 :]
            self._skipping = False
        if "\n" not in text:
            self._tail += text
        else:
            parts = (self._tail + text).split("\n")
            self._tail = parts.pop()
            self._process(parts)
        if len(self._tail) > MAX_LINE_CHARS:
            self._lines += 1
            self._reject(self._tail)
            self._tail = ""
            self._skipping = True

    def finish(self) -> ParseResult:
        """Parse the last line (one without a newline) and return the result."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        if self._tail:
            self._process([self._tail])
            self._tail = ""
        self._check_cap()
        plain = sorted(self._v4)
        entries = list(map(inet_ntoa, plain))
        if self._v4_nets:
            entries = _merge_v4(plain, entries, sorted(self._v4_nets))
        entries += [key_to_text(k) for k in sorted(self._v6)]
        digest = hashlib.sha256("\n".join(entries).encode("ascii")).hexdigest()
        return ParseResult(
            entries=entries,
            invalid=self._invalid,
            invalid_sample=list(self._samples),
            below_min_count=self._below,
            lines=self._lines,
            content_hash=digest,
        )

    def _process(self, lines: list[str]) -> None:
        """Handle complete lines; plain IPv4 and ipsum lines are inlined: they dominate."""
        if self._lines == 0 and lines[0].startswith(_BOM):
            lines[0] = lines[0][len(_BOM) :]
        self._lines += len(lines)
        v4_add = self._v4.add
        net_add = self._v4_nets.add
        fast = _V4_LINE_RE.fullmatch
        slow = self._slow
        min_count = self._min_count
        below = 0
        try:
            for start in range(0, len(lines), _CAP_CHECK_LINES):
                for raw in lines[start : start + _CAP_CHECK_LINES]:
                    line = raw.strip(_WS)
                    if not line:
                        continue
                    m = fast(line)
                    if m is not None:
                        address, prefix, count = m.groups()
                        if count is not None and int(count) < min_count:
                            below += 1
                        elif prefix is None or prefix == "32":
                            v4_add(inet_aton(address))
                        else:
                            network = int.from_bytes(inet_aton(address), "big")
                            net_add(_v4_key(network, int(prefix)))
                        continue
                    first = line[0]
                    if first != "#" and first != ";":  # noqa: PLR1714 - two compares beat `in` here
                        slow(line)
                self._check_cap()
        finally:
            self._below += below

    def _slow(self, line: str) -> None:
        """Handle every line that is not a bare dotted-quad address or network."""
        if len(line) > MAX_LINE_CHARS:
            self._reject(line)
            return
        if line[0] == "{":
            self._json_line(line)
            return
        cut = len(line)
        for marker in ("#", ";"):
            at = line.find(marker)
            if 0 <= at < cut:
                cut = at
        fields = _FIELD_SPLIT(line[:cut].strip(_WS))
        count: int | None = None
        if len(fields) == 2 and _COUNT_RE.fullmatch(fields[1]):
            count = int(fields[1])
        elif len(fields) != 1:
            self._reject(line)
            return
        key = entry_key(fields[0])
        if key is None:
            self._reject(line)
        elif count is not None and count < self._min_count:
            self._below += 1
        else:
            self._add(key)

    def _json_line(self, line: str) -> None:
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if isinstance(record, dict):
            if record.get("type") == "metadata":
                return
            cidr = record.get("cidr")
            if isinstance(cidr, str):
                key = entry_key(cidr.strip(_WS))
                if key is not None:
                    self._add(key)
                    return
        self._reject(line)

    def _add(self, key: bytes) -> None:
        size = len(key)
        (self._v4 if size == 4 else self._v4_nets if size == 5 else self._v6).add(key)

    def _reject(self, line: str) -> None:
        self._invalid += 1
        if len(self._samples) < SAMPLE_COUNT:
            self._samples.append(_escape(line))

    def _check_cap(self) -> None:
        if len(self._v4) + len(self._v4_nets) + len(self._v6) > self._max_entries:
            raise TooManyEntries(self._max_entries)


def _merge_v4(plain: list[bytes], texts: list[str], networks: list[bytes]) -> list[str]:
    """Merge sorted network keys into the sorted plain addresses (and their texts).

    Same order as sorting all keys together (an address sorts before a network that
    starts at it), but the bulk of plain addresses is only sliced, never revisited.
    """
    merged: list[str] = []
    done = 0
    for key in networks:
        at = bisect_right(plain, key[:4], done)
        merged += texts[done:at]
        merged.append(key_to_text(key))
        done = at
    merged += texts[done:]
    return merged


def parse_blocklist(
    chunks: Iterable[bytes | bytearray | memoryview],
    *,
    min_count: int = DEFAULT_MIN_COUNT,
    max_entries: int = DEFAULT_MAX_ENTRIES,
) -> ParseResult:
    """Parse a whole blocklist from an iterable of byte chunks.

    Raises `TooManyEntries` as soon as more than `max_entries` distinct entries have
    been seen, so a runaway list stops early instead of being parsed to the end.
    """
    parser = BlocklistParser(min_count=min_count, max_entries=max_entries)
    for chunk in chunks:
        parser.feed(chunk)
    return parser.finish()
