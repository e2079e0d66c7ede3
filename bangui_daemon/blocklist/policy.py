"""What must never be banned, decided fast enough for 100k-entry lists.

The special-purpose ranges are an explicit table here instead of `ipaddress`'s
``is_private``/``is_reserved`` flags: those flags changed between CPython 3.11 patch
releases (e.g. 2002::/16 and 2001:20::/28 are "private" on 3.11.2 and not on 3.11.7),
and a safety rule must not depend on the interpreter's patch level.

Documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32,
3fff::/20) are deliberately *allowed* by default although `ipaddress` calls them
private: nothing on the internet routes them, so banning one can lock nobody out, and
the daemon's end-to-end tests ban addresses such as 203.0.113.x. Set
``refuse_documentation=True`` to refuse them anyway.

Every protected range (built-in, host address, ignoreip, allowlist) is flattened into
one sorted table of disjoint integer intervals per family, each labelled with the
highest-priority reason covering it, so a check is a bisect instead of a scan.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import re
import socket
import struct
import sys
from bisect import bisect_left
from collections.abc import Iterable
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from typing import Final

from bangui_daemon.blocklist.parse import entry_key, key_to_text
from bangui_daemon.errors import InvalidArgument

DEFAULT_MIN_PREFIX_V4: Final = 16
DEFAULT_MIN_PREFIX_V6: Final = 32


class RefusalReason(StrEnum):
    """Why an entry must not be banned; declaration order is priority order."""

    TOO_WIDE = "too_wide"
    UNSPECIFIED = "unspecified"
    LOOPBACK = "loopback"
    LINK_LOCAL = "link_local"
    MULTICAST = "multicast"
    PRIVATE = "private"
    SHARED = "shared"
    SITE_LOCAL = "site_local"
    DOCUMENTATION = "documentation"
    RESERVED = "reserved"
    HOST_ADDRESS = "host_address"
    IGNOREIP = "ignoreip"
    ALLOWLIST = "allowlist"
    INVALID = "invalid"


_R = RefusalReason
_PRIORITY: Final = {reason: rank for rank, reason in enumerate(RefusalReason)}

_SPECIAL: Final[tuple[tuple[str, RefusalReason], ...]] = (
    ("0.0.0.0/32", _R.UNSPECIFIED),
    ("0.0.0.0/8", _R.RESERVED),  # "this network"
    ("10.0.0.0/8", _R.PRIVATE),
    ("100.64.0.0/10", _R.SHARED),  # carrier-grade NAT
    ("127.0.0.0/8", _R.LOOPBACK),
    ("169.254.0.0/16", _R.LINK_LOCAL),
    ("172.16.0.0/12", _R.PRIVATE),
    ("192.0.0.0/24", _R.RESERVED),  # IETF protocol assignments
    ("192.168.0.0/16", _R.PRIVATE),
    ("198.18.0.0/15", _R.RESERVED),  # benchmarking
    ("224.0.0.0/4", _R.MULTICAST),
    ("240.0.0.0/4", _R.RESERVED),  # includes 255.255.255.255
    ("::", _R.UNSPECIFIED),
    ("::1", _R.LOOPBACK),
    # Everything outside global unicast 2000::/3 (NAT64, discard, ULA, ...); the
    # narrower rows below win where they overlap because of their priority.
    ("::/3", _R.RESERVED),
    ("4000::/2", _R.RESERVED),
    ("8000::/1", _R.RESERVED),
    ("2001::/23", _R.RESERVED),  # IETF protocol assignments (Teredo, ORCHID, ...)
    ("fc00::/7", _R.PRIVATE),  # unique local
    ("fe80::/10", _R.LINK_LOCAL),
    ("fec0::/10", _R.SITE_LOCAL),
    ("ff00::/8", _R.MULTICAST),
)
_DOCUMENTATION: Final = (
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "2001:db8::/32",
    "3fff::/20",
)
_IGNOREIP_SPLIT: Final = re.compile(r"[\s,]+").split


def _span(key: bytes) -> tuple[int, int, int, int]:
    """Return (family bits, first, last, prefix length) of an `entry_key` key."""
    size = len(key)
    bits = 32 if size <= 5 else 128
    prefix = key[-1] if size in (5, 17) else bits
    first = int.from_bytes(key[: bits // 8], "big")
    return bits, first, first | ((1 << (bits - prefix)) - 1), prefix


class _Table:
    """Disjoint, sorted, labelled intervals of one address family."""

    def __init__(self, ranges: list[tuple[int, int, RefusalReason]]) -> None:
        opens: dict[int, list[int]] = {}
        closes: dict[int, list[int]] = {}
        for first, last, reason in ranges:
            opens.setdefault(first, []).append(_PRIORITY[reason])
            closes.setdefault(last + 1, []).append(_PRIORITY[reason])
        points = sorted(opens.keys() | closes.keys())
        active = [0] * len(_PRIORITY)
        reasons = list(RefusalReason)
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.reasons: list[RefusalReason] = []
        for here, after in pairwise(points):
            for rank in closes.get(here, ()):
                active[rank] -= 1
            for rank in opens.get(here, ()):
                active[rank] += 1
            best = next((rank for rank, n in enumerate(active) if n), None)
            if best is None:
                continue
            if self.reasons and self.ends[-1] == here - 1 and self.reasons[-1] is reasons[best]:
                self.ends[-1] = after - 1
            else:
                self.starts.append(here)
                self.ends.append(after - 1)
                self.reasons.append(reasons[best])


class BanPolicy:
    """Decides, per address or network, whether a ban is allowed.

    A network is refused when it overlaps (contains or lies within) any protected
    range, or is wider than the minimum prefix of its family. When an entry lies
    wholly within one protected range that range's reason is reported, so
    10.0.0.0/8 says "private" rather than "too_wide".
    """

    def __init__(
        self,
        *,
        min_prefix_v4: int = DEFAULT_MIN_PREFIX_V4,
        min_prefix_v6: int = DEFAULT_MIN_PREFIX_V6,
        allowlist: Iterable[str] = (),
        host_addresses: Iterable[str] = (),
        ignoreip: Iterable[str] = (),
        refuse_documentation: bool = False,
    ) -> None:
        """Build the tables; a malformed allowlist entry raises `InvalidArgument`.

        Host addresses and ignoreip come from the system and fail2ban, so what does
        not parse there (hostnames, ``file:`` references) is skipped; the allowlist is
        the operator's own promise and must not silently lose an entry.
        Documentation ranges are allowed unless `refuse_documentation` (see module).
        """
        if not 0 <= min_prefix_v4 <= 32 or not 0 <= min_prefix_v6 <= 128:
            raise InvalidArgument("min_prefix_v4 must be 0..32 and min_prefix_v6 0..128")
        self._min_prefix = {32: min_prefix_v4, 128: min_prefix_v6}
        ranges: dict[int, list[tuple[int, int, RefusalReason]]] = {32: [], 128: []}

        def protect(text: str, reason: RefusalReason) -> bool:
            key = entry_key(text)
            if key is None:
                return False
            bits, first, last, _ = _span(key)
            ranges[bits].append((first, last, reason))
            return True

        for text, reason in _SPECIAL:
            protect(text, reason)
        if refuse_documentation:
            for text in _DOCUMENTATION:
                protect(text, RefusalReason.DOCUMENTATION)
        for text in host_addresses:
            protect(_unscoped(text.strip()), RefusalReason.HOST_ADDRESS)
        for item in ignoreip:
            for token in _IGNOREIP_SPLIT(item.strip()):
                if token:
                    protect(_unscoped(token), RefusalReason.IGNOREIP)
        for text in allowlist:
            if not protect(text.strip(), RefusalReason.ALLOWLIST):
                raise InvalidArgument(f"allowlist entry {text[:60]!r} is not an address or network")
        self._tables = {bits: _Table(found) for bits, found in ranges.items()}

    def check(self, entry: str) -> RefusalReason | None:
        """Return why `entry` must not be banned, or None when banning it is safe.

        `entry` should be stripped (parser output is); anything that does not parse
        is refused as "invalid", so a bad entry fails closed.
        """
        key = entry_key(entry)
        if key is None:
            return RefusalReason.INVALID
        bits, first, last, prefix = _span(key)
        table = self._tables[bits]
        too_wide = prefix < self._min_prefix[bits]
        at = bisect_left(table.ends, first)
        starts = table.starts
        if at == len(starts) or starts[at] > last:
            return RefusalReason.TOO_WIDE if too_wide else None
        if starts[at] <= first and last <= table.ends[at]:
            return table.reasons[at]
        if too_wide:
            return RefusalReason.TOO_WIDE
        best = table.reasons[at]
        at += 1
        while at < len(starts) and starts[at] <= last:
            if _PRIORITY[table.reasons[at]] < _PRIORITY[best]:
                best = table.reasons[at]
            at += 1
        return best

    def partition(
        self, entries: Iterable[str]
    ) -> tuple[list[str], list[tuple[str, RefusalReason]]]:
        """Split entries into (allowed, refused with reason), keeping their order."""
        allowed: list[str] = []
        refused: list[tuple[str, RefusalReason]] = []
        check = self.check
        for entry in entries:
            reason = check(entry)
            if reason is None:
                allowed.append(entry)
            else:
                refused.append((entry, reason))
        return allowed, refused


def _unscoped(text: str) -> str:
    """Drop an IPv6 zone ("fe80::1%eth0"), which fail2ban and the kernel may show."""
    return text.split("%", 1)[0] if ":" in text else text


def _parse_fib_trie(text: str) -> set[str]:
    """Return the local IPv4 addresses listed in /proc/net/fib_trie.

    Each leaf line ``|-- A.B.C.D`` is followed by its routes; ``/32 host LOCAL``
    marks an address configured on this host.
    """
    found: set[str] = set()
    leaf = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            leaf = stripped[4:]
        elif stripped == "/32 host LOCAL" and leaf:
            found.add(leaf)
    return found


def _parse_if_inet6(text: str) -> set[str]:
    """Return the addresses in /proc/net/if_inet6 (32 hex digits, then fields)."""
    found: set[str] = set()
    for line in text.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            with contextlib.suppress(ValueError):
                found.add(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(fields[0])))
    return found


def _ioctl_ipv4() -> set[str]:
    """Return interface IPv4 addresses via SIOCGIFCONF, for when /proc/net is hidden."""
    siocgifconf = 0x8912
    record = 40 if struct.calcsize("P") == 8 else 32  # sizeof(struct ifreq)
    buffer = array.array("B", bytes(record * 128))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        # struct ifconf {int ifc_len; char *ifc_buf;}, natively aligned like "iP".
        request = struct.pack("iP", len(buffer), buffer.buffer_info()[0])
        length = struct.unpack("iP", fcntl.ioctl(sock.fileno(), siocgifconf, request))[0]
    data = buffer.tobytes()
    found: set[str] = set()
    for offset in range(0, min(length, len(data)) - record + 1, record):
        family = int.from_bytes(data[offset + 16 : offset + 18], sys.byteorder)
        if family == socket.AF_INET:
            found.add(socket.inet_ntoa(data[offset + 20 : offset + 24]))
    return found


def host_addresses(proc_net: str = "/proc/net") -> list[str]:
    """Return this host's own addresses, normalised and sorted; never raises.

    Combines the hostname's resolution (may consult DNS: call it off the event
    loop), /proc/net/fib_trie and /proc/net/if_inet6, and SIOCGIFCONF for hardened
    units where /proc/net is not visible. Whatever source fails is skipped.
    """
    found: set[str] = set()
    with contextlib.suppress(OSError, UnicodeError, ValueError):
        for *_, sockaddr in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(sockaddr[0]))
    with contextlib.suppress(OSError, ValueError):
        found |= _parse_fib_trie(Path(proc_net, "fib_trie").read_text(errors="replace"))
    with contextlib.suppress(OSError, ValueError):
        found |= _parse_if_inet6(Path(proc_net, "if_inet6").read_text(errors="replace"))
    with contextlib.suppress(OSError, ValueError, struct.error):
        found |= _ioctl_ipv4()
    keys = {key for text in found if (key := entry_key(_unscoped(text))) is not None}
    return [key_to_text(k) for k in sorted(keys, key=lambda k: (len(k) > 5, k))]
