"""What must never be banned, decided fast enough for 100k-entry lists.

The special addresses come from the one table in `special` (the IANA registries,
followed completely; see there for what is refused and why). Every protected range
(special, host address, ignoreip, allowlist) is flattened into one sorted table of
disjoint integer intervals per family, each labelled with the highest-priority
reason covering it, so a check is a bisect instead of a scan.

An IPv6 entry inside NAT64's 64:ff9b::/96 or 6to4's 2002::/16 is judged, once its
own IPv6 protections pass, by the IPv4 address or network it embeds: a NAT64 or 6to4
form of a private, allow-listed or host address is refused like the address itself.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_left
from collections.abc import Iterable
from itertools import pairwise
from typing import Final

from bangui_daemon.blocklist.host import unscoped
from bangui_daemon.blocklist.parse import entry_key
from bangui_daemon.blocklist.special import SPECIAL_BLOCKS, RefusalReason
from bangui_daemon.errors import InvalidArgument

__all__ = ["DEFAULT_MIN_PREFIX_V4", "DEFAULT_MIN_PREFIX_V6", "BanPolicy", "RefusalReason"]

DEFAULT_MIN_PREFIX_V4: Final = 16
DEFAULT_MIN_PREFIX_V6: Final = 32

_PRIORITY: Final = {reason: rank for rank, reason in enumerate(RefusalReason)}
_IGNOREIP_SPLIT: Final = re.compile(r"[\s,]+").split
_V4_MASK: Final = (1 << 32) - 1


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


def _spans(text: str) -> tuple[int, int, int, int]:
    """(family bits, first, last, prefix) of a table row, in its own family: unlike
    `entry_key`, ::ffff:0:0/96 stays IPv6."""
    network = ipaddress.ip_network(text)
    first = int(network.network_address)
    return network.max_prefixlen, first, int(network.broadcast_address), network.prefixlen


def _without(
    ranges: list[tuple[int, int, RefusalReason]], holes: list[tuple[int, int]]
) -> list[tuple[int, int, RefusalReason]]:
    """`ranges` with every (first, last) of `holes` cut out."""
    for hole_first, hole_last in holes:
        cut: list[tuple[int, int, RefusalReason]] = []
        for first, last, reason in ranges:
            if last < hole_first or first > hole_last:
                cut.append((first, last, reason))
                continue
            if first < hole_first:
                cut.append((first, hole_first - 1, reason))
            if last > hole_last:
                cut.append((hole_last + 1, last, reason))
        ranges = cut
    return ranges


def _special_ranges() -> dict[int, list[tuple[int, int, RefusalReason]]]:
    ranges: dict[int, list[tuple[int, int, RefusalReason]]] = {32: [], 128: []}
    for block in SPECIAL_BLOCKS:
        bits, first, last, _ = _spans(block.network)
        if block.reason is not None:
            ranges[bits].append((first, last, block.reason))
    ranges[128] = _without(ranges[128], [(first, last) for first, last, _ in _EMBEDDING])
    return ranges


# (first, last, bit offset of the IPv4 address) of each block embedding one: the
# table's rows without a reason; in both the IPv4 address follows the prefix.
_EMBEDDING: Final = tuple(
    (first, last, prefix)
    for block in SPECIAL_BLOCKS
    if block.reason is None
    for _, first, last, prefix in [_spans(block.network)]
)
_SPECIAL_RANGES: Final = _special_ranges()


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
    ) -> None:
        """Build the tables; a malformed allowlist entry raises `InvalidArgument`.

        Host addresses and ignoreip come from the system and fail2ban, so what does
        not parse there (hostnames, ``file:`` references) is skipped; the allowlist is
        the operator's own promise and must not silently lose an entry.
        """
        if not 0 <= min_prefix_v4 <= 32 or not 0 <= min_prefix_v6 <= 128:
            raise InvalidArgument("min_prefix_v4 must be 0..32 and min_prefix_v6 0..128")
        self._min_prefix = {32: min_prefix_v4, 128: min_prefix_v6}
        ranges = {bits: list(found) for bits, found in _SPECIAL_RANGES.items()}

        def protect(text: str, reason: RefusalReason) -> bool:
            key = entry_key(text)
            if key is None:
                return False
            bits, first, last, _ = _span(key)
            ranges[bits].append((first, last, reason))
            return True

        for text in host_addresses:
            protect(unscoped(text.strip()), RefusalReason.HOST_ADDRESS)
        for item in ignoreip:
            for token in _IGNOREIP_SPLIT(item.strip()):
                if token:
                    protect(unscoped(token), RefusalReason.IGNOREIP)
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
        reason = self._check(bits, first, last, prefix)
        if reason is not None or bits == 32:
            return reason
        for block_first, block_last, offset in _EMBEDDING:
            if first <= block_last and block_first <= last:
                # Nested or disjoint (CIDR): clipped, the entry is the block or inside it.
                shift = 128 - offset - 32
                v4_first = (max(first, block_first) >> shift) & _V4_MASK
                v4_last = (min(last, block_last) >> shift) & _V4_MASK
                v4_prefix = min(32, max(0, prefix - offset))
                reason = self._check(32, v4_first, v4_last, v4_prefix)
                if reason is not None:
                    return reason
        return None

    def _check(self, bits: int, first: int, last: int, prefix: int) -> RefusalReason | None:
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
