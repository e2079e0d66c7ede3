"""The one table of special addresses against the IANA registries (issue 9, finding 9)."""

from __future__ import annotations

import ipaddress
from collections import Counter

import pytest

from bangui_daemon.blocklist.policy import BanPolicy, RefusalReason
from bangui_daemon.blocklist.special import IPV4_SPECIAL, IPV6_SPECIAL, OTHER_NON_UNICAST
from tests.unit.iana_registries import (
    EMBEDDING_V4,
    OTHER_V4,
    OTHER_V6,
    REGISTRY_V4,
    REGISTRY_V6,
)

R = RefusalReason
ALL_ROWS = (*REGISTRY_V4, *REGISTRY_V6, *OTHER_V4, *OTHER_V6)


def test_the_table_is_the_registries_row_for_row() -> None:
    def rows(table: object) -> Counter[tuple[str, bool | None]]:
        return Counter((b.network, b.globally_reachable) for b in table)  # type: ignore[attr-defined]

    assert rows(IPV4_SPECIAL) == Counter(REGISTRY_V4)
    assert rows(IPV6_SPECIAL) == Counter(REGISTRY_V6)
    assert rows(OTHER_NON_UNICAST) == Counter((*OTHER_V4, *OTHER_V6))
    for block in (*IPV4_SPECIAL, *IPV6_SPECIAL, *OTHER_NON_UNICAST):
        assert block.name, block
        assert block.rfc.startswith("RFC "), block
        assert (block.reason is None) == (block.network in EMBEDDING_V4), block


def _samples(network: str) -> list[str]:
    net = ipaddress.ip_network(network)
    first = int(net.network_address)
    last = int(net.broadcast_address)
    return [str(ipaddress.ip_address(n)) for n in {first, (first + last) // 2, last}]


@pytest.mark.parametrize(("network", "_reachable"), ALL_ROWS)
def test_every_block_is_refused_as_address_and_as_network(
    network: str, _reachable: bool | None
) -> None:
    """Whatever the registry's "Globally Reachable" says: see special.py's decision.

    NAT64 and 6to4 carry an IPv4 address after their prefix; their first, middle and
    last addresses carry 0.0.0.0, a 127.x or 128.x address and 255.255.255.255, and
    only the middle one may be global (128.0.0.0 is).
    """
    policy = BanPolicy(min_prefix_v4=0, min_prefix_v6=0)
    assert policy.check(network) is not None
    for address in _samples(network):
        reason = policy.check(address)
        if network in EMBEDDING_V4 and address == _samples(network)[1]:
            continue
        assert reason is not None, address


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        # Python 3.11.2 and 3.11.7 disagree with the registries, and with each other,
        # on these (is_global True on one or both); the table decides, the same on both.
        ("192.0.0.8", R.RESERVED),
        ("192.0.0.9", R.RESERVED),
        ("192.31.196.1", R.SPECIAL_PURPOSE),
        ("192.52.193.1", R.SPECIAL_PURPOSE),
        ("192.88.99.1", R.RESERVED),
        ("192.88.99.2", R.RESERVED),
        ("192.175.48.1", R.SPECIAL_PURPOSE),
        ("64:ff9b:1::1", R.RESERVED),
        ("100:0:0:1::1", R.RESERVED),
        ("2001:1::1", R.RESERVED),
        ("2001:3::1", R.RESERVED),
        ("2001:4:112::1", R.RESERVED),
        ("2001:20::1", R.RESERVED),
        ("2001:30::1", R.RESERVED),
        ("2620:4f:8000::1", R.SPECIAL_PURPOSE),
        ("3fff::1", R.DOCUMENTATION),
        ("5f00::1", R.RESERVED),
        ("fec0::1", R.SITE_LOCAL),
        ("::1.2.3.4", R.RESERVED),  # IPv4-compatible (deprecated), in ::/8
        ("2002::1", R.UNSPECIFIED),  # 6to4 of 0.0.0.0
        ("2002:102:304::1", None),  # 6to4 of 1.2.3.4
        ("64:ff9b::1.2.3.4", None),
        ("::ffff:1.2.3.4", None),  # the parser reads it as 1.2.3.4
        ("::ffff:192.0.2.1", R.DOCUMENTATION),
    ],
)
def test_the_table_not_ipaddress_decides(entry: str, reason: RefusalReason | None) -> None:
    assert BanPolicy().check(entry) == reason


def test_ranges_overlapping_a_special_block_are_refused() -> None:
    policy = BanPolicy(min_prefix_v4=8, min_prefix_v6=16)
    assert policy.check("0.0.0.0/8") == R.UNSPECIFIED
    assert policy.check("198.18.0.0/15") == R.BENCHMARKING
    assert policy.check("198.16.0.0/12") == R.BENCHMARKING
    assert policy.check("203.0.112.0/23") == R.DOCUMENTATION
    assert policy.check("192.88.0.0/16") == R.RESERVED
    assert policy.check("2001:db8::/31") == R.DOCUMENTATION
    assert policy.check("3fff::/16") == R.DOCUMENTATION
    assert policy.check("198.20.0.0/14") is None
    assert policy.check("2a00::/16") is None
