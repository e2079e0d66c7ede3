"""The one table of special addresses: what the IANA registries set apart, and why.

Rows transcribe, completely, the IANA IPv4 and IPv6 Special-Purpose Address
Registries (name, RFC and "Globally Reachable" as published; None where the registry
says N/A or the entry is terminated), plus what lies outside them but is never a
unicast host: IPv4 multicast (RFC 5771), and every IPv6 block the IPv6 Address Space
registry does not allocate as global unicast (2000::/3), site-local fec0::/10 and
multicast ff00::/8 among them.

Decision (design.md never bans reserved addresses; read here as: nothing the
registries set apart from ordinary internet hosts):
- every row is refused, whatever its "Globally Reachable" flag: the blocks marked
  reachable are anycast infrastructure (PCP, TURN, AS112, AMT, DNS-SD SRP) or
  identifiers that are not locators (ORCHIDv2, DETs); a ban there cannot single out
  an attacker and can break the protocol for everyone behind it. Documentation
  ranges, benchmarking and deprecated blocks (6to4 relay anycast, ORCHID) are refused
  like the rest;
- except the two blocks whose addresses embed an IPv4 address a real client may
  sit behind: NAT64's well-known prefix 64:ff9b::/96 (RFC 6052; the IPv4 address is
  the last 32 bits) and 6to4 2002::/16 (RFC 3056; bits 16-47): in both the IPv4
  address follows the block's prefix. Their `reason` is None:
  the policy judges such an address by the IPv4 address it carries (and its own IPv6
  protections), so 64:ff9b::10.0.0.1 is refused as private, 64:ff9b::45.1.2.3 is not.
  An IPv4-mapped address (::ffff:0:0/96) is checked as the IPv4 address it maps:
  the parser turns it into that address before the policy sees it.

The table is explicit, instead of `ipaddress`'s ``is_global``/``is_private``, because
those flags changed between CPython 3.11 patch releases (3.11.2 and 3.11.7 disagree,
e.g. on 2001:20::/28 and 2002::/16) and lag the registries (3fff::/20, 5f00::/16):
a safety rule must not depend on the interpreter's patch level.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


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
    BENCHMARKING = "benchmarking"
    RESERVED = "reserved"
    SPECIAL_PURPOSE = "special_purpose"
    HOST_ADDRESS = "host_address"
    IGNOREIP = "ignoreip"
    ALLOWLIST = "allowlist"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class SpecialBlock:
    """One row: the block, its registry name and RFC, the registry's "Globally
    Reachable" (None = N/A or terminated), and why a ban there is refused (None:
    judged by the embedded IPv4 address, see the module)."""

    network: str
    name: str
    rfc: str
    globally_reachable: bool | None
    reason: RefusalReason | None


_R = RefusalReason
_B = SpecialBlock

IPV4_SPECIAL: Final[tuple[SpecialBlock, ...]] = (
    _B("0.0.0.0/8", '"This network"', "RFC 791", False, _R.RESERVED),
    _B("0.0.0.0/32", '"This host on this network"', "RFC 1122", False, _R.UNSPECIFIED),
    _B("10.0.0.0/8", "Private-Use", "RFC 1918", False, _R.PRIVATE),
    _B("100.64.0.0/10", "Shared Address Space", "RFC 6598", False, _R.SHARED),
    _B("127.0.0.0/8", "Loopback", "RFC 1122", False, _R.LOOPBACK),
    _B("169.254.0.0/16", "Link Local", "RFC 3927", False, _R.LINK_LOCAL),
    _B("172.16.0.0/12", "Private-Use", "RFC 1918", False, _R.PRIVATE),
    _B("192.0.0.0/24", "IETF Protocol Assignments", "RFC 6890", False, _R.RESERVED),
    _B("192.0.0.0/29", "IPv4 Service Continuity Prefix", "RFC 7335", False, _R.RESERVED),
    _B("192.0.0.8/32", "IPv4 dummy address", "RFC 7600", False, _R.RESERVED),
    _B("192.0.0.9/32", "Port Control Protocol Anycast", "RFC 7723", True, _R.SPECIAL_PURPOSE),
    _B("192.0.0.10/32", "TURN Anycast", "RFC 8155", True, _R.SPECIAL_PURPOSE),
    _B("192.0.0.170/32", "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050", False, _R.RESERVED),
    _B("192.0.0.171/32", "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050", False, _R.RESERVED),
    _B("192.0.2.0/24", "Documentation (TEST-NET-1)", "RFC 5737", False, _R.DOCUMENTATION),
    _B("192.31.196.0/24", "AS112-v4", "RFC 7535", True, _R.SPECIAL_PURPOSE),
    _B("192.52.193.0/24", "AMT", "RFC 7450", True, _R.SPECIAL_PURPOSE),
    _B("192.88.99.0/24", "Deprecated (6to4 Relay Anycast)", "RFC 7526", None, _R.RESERVED),
    _B("192.88.99.2/32", "6a44-relay anycast address", "RFC 6751", False, _R.RESERVED),
    _B("192.168.0.0/16", "Private-Use", "RFC 1918", False, _R.PRIVATE),
    _B("192.175.48.0/24", "Direct Delegation AS112 Service", "RFC 7534", True, _R.SPECIAL_PURPOSE),
    _B("198.18.0.0/15", "Benchmarking", "RFC 2544", False, _R.BENCHMARKING),
    _B("198.51.100.0/24", "Documentation (TEST-NET-2)", "RFC 5737", False, _R.DOCUMENTATION),
    _B("203.0.113.0/24", "Documentation (TEST-NET-3)", "RFC 5737", False, _R.DOCUMENTATION),
    _B("240.0.0.0/4", "Reserved", "RFC 1112", False, _R.RESERVED),
    _B("255.255.255.255/32", "Limited Broadcast", "RFC 8190, RFC 919", False, _R.RESERVED),
)

IPV6_SPECIAL: Final[tuple[SpecialBlock, ...]] = (
    _B("::1/128", "Loopback Address", "RFC 4291", False, _R.LOOPBACK),
    _B("::/128", "Unspecified Address", "RFC 4291", False, _R.UNSPECIFIED),
    _B("::ffff:0:0/96", "IPv4-mapped Address", "RFC 4291", False, _R.RESERVED),
    _B("64:ff9b::/96", "IPv4-IPv6 Translat.", "RFC 6052", True, None),
    _B("64:ff9b:1::/48", "IPv4-IPv6 Translat.", "RFC 8215", False, _R.RESERVED),
    _B("100::/64", "Discard-Only Address Block", "RFC 6666", False, _R.RESERVED),
    _B("100:0:0:1::/64", "Dummy IPv6 Prefix", "RFC 9780", False, _R.RESERVED),
    _B("2001::/23", "IETF Protocol Assignments", "RFC 2928", False, _R.RESERVED),
    _B("2001::/32", "TEREDO", "RFC 4380, RFC 8190", None, _R.RESERVED),
    _B("2001:1::1/128", "Port Control Protocol Anycast", "RFC 7723", True, _R.SPECIAL_PURPOSE),
    _B("2001:1::2/128", "TURN Anycast", "RFC 8155", True, _R.SPECIAL_PURPOSE),
    _B(
        "2001:1::3/128",
        "DNS-SD Service Registration Protocol Anycast",
        "RFC 9665",
        True,
        _R.SPECIAL_PURPOSE,
    ),
    _B("2001:2::/48", "Benchmarking", "RFC 5180", False, _R.BENCHMARKING),
    _B("2001:3::/32", "AMT", "RFC 7450", True, _R.SPECIAL_PURPOSE),
    _B("2001:4:112::/48", "AS112-v6", "RFC 7535", True, _R.SPECIAL_PURPOSE),
    _B("2001:10::/28", "Deprecated (previously ORCHID)", "RFC 4843", None, _R.RESERVED),
    _B("2001:20::/28", "ORCHIDv2", "RFC 7343", True, _R.SPECIAL_PURPOSE),
    _B(
        "2001:30::/28",
        "Drone Remote ID Protocol Entity Tags (DETs) Prefix",
        "RFC 9374",
        True,
        _R.SPECIAL_PURPOSE,
    ),
    _B("2001:db8::/32", "Documentation", "RFC 3849", False, _R.DOCUMENTATION),
    _B("2002::/16", "6to4", "RFC 3056", None, None),
    _B(
        "2620:4f:8000::/48", "Direct Delegation AS112 Service", "RFC 7534", True, _R.SPECIAL_PURPOSE
    ),
    _B("3fff::/20", "Documentation", "RFC 9637", False, _R.DOCUMENTATION),
    _B("5f00::/16", "Segment Routing (SRv6) SIDs", "RFC 9602", False, _R.RESERVED),
    _B("fc00::/7", "Unique-Local", "RFC 4193, RFC 8190", False, _R.PRIVATE),
    _B("fe80::/10", "Link-Local Unicast", "RFC 4291", False, _R.LINK_LOCAL),
)

# Not in the special-purpose registries, never an internet host all the same.
OTHER_NON_UNICAST: Final[tuple[SpecialBlock, ...]] = (
    _B("224.0.0.0/4", "Multicast", "RFC 5771", None, _R.MULTICAST),
    _B("ff00::/8", "Multicast", "RFC 4291", None, _R.MULTICAST),
    _B("fec0::/10", "Site-Local (deprecated)", "RFC 3879", None, _R.SITE_LOCAL),
    # The IPv6 Address Space registry: all but 2000::/3 is reserved by the IETF or
    # assigned to the special uses above (fc00::/7, fe80::/10, fec0::/10, ff00::/8).
    _B("::/3", "Reserved by IETF", "RFC 4291", None, _R.RESERVED),
    _B("4000::/2", "Reserved by IETF", "RFC 4291", None, _R.RESERVED),
    _B("8000::/1", "Reserved by IETF", "RFC 4291", None, _R.RESERVED),
)

SPECIAL_BLOCKS: Final = IPV4_SPECIAL + IPV6_SPECIAL + OTHER_NON_UNICAST
