"""Ban policy: what must never be banned, and why."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest

from bangui_daemon.blocklist.policy import (
    BanPolicy,
    RefusalReason,
    _parse_fib_trie,
    _parse_if_inet6,
    host_addresses,
)
from bangui_daemon.errors import InvalidArgument

R = RefusalReason
HOST = "45.33.99.1"


@pytest.fixture
def policy() -> BanPolicy:
    return BanPolicy(
        min_prefix_v4=16,
        min_prefix_v6=32,
        allowlist=["46.1.0.0/16", "47.1.1.1", "2a02:1::/48"],
        host_addresses=[HOST, "2a01:4f8:1:2::5", "fe80::1%eth0", "not-an-address"],
        ignoreip=["127.0.0.1/8 ::1 fail2ban.example.org 11.22.0.0/16,11.99.0.1", "file:/x"],
    )


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("10.0.0.0/8", R.PRIVATE),
        ("10.1.2.3", R.PRIVATE),
        ("172.16.5.4", R.PRIVATE),
        ("192.168.1.0/24", R.PRIVATE),
        ("127.0.0.1", R.LOOPBACK),
        ("0.0.0.0/0", R.TOO_WIDE),
        ("0.0.0.0", R.UNSPECIFIED),
        ("::", R.UNSPECIFIED),
        ("::1", R.LOOPBACK),
        ("::/0", R.TOO_WIDE),
        ("16.0.0.0/4", R.TOO_WIDE),
        ("45.0.0.0/15", R.TOO_WIDE),
        ("2a01::/16", R.TOO_WIDE),
        (HOST, R.HOST_ADDRESS),
        ("45.33.99.0/24", R.HOST_ADDRESS),
        ("2a01:4f8:1:2::5", R.HOST_ADDRESS),
        ("2a01:4f8:1::/48", R.HOST_ADDRESS),
        ("47.1.1.1", R.ALLOWLIST),
        ("47.1.1.0/24", R.ALLOWLIST),
        ("46.1.7.0/24", R.ALLOWLIST),
        ("46.1.7.9", R.ALLOWLIST),
        ("46.0.0.0/15", R.TOO_WIDE),
        ("2a02:1:0:5::/64", R.ALLOWLIST),
        ("11.22.33.44", R.IGNOREIP),
        ("11.22.0.0/24", R.IGNOREIP),
        ("11.99.0.1", R.IGNOREIP),
        ("11.99.0.0/24", R.IGNOREIP),
        ("169.254.1.1", R.LINK_LOCAL),
        ("fe80::1", R.LINK_LOCAL),
        ("224.0.0.1", R.MULTICAST),
        ("ff02::1", R.MULTICAST),
        ("240.1.2.3", R.RESERVED),
        ("255.255.255.255", R.RESERVED),
        ("100.64.1.1", R.SHARED),
        ("fec0::1", R.SITE_LOCAL),
        ("fd12:3456::1", R.PRIVATE),
        ("::ffff:10.1.2.3", R.PRIVATE),
        ("64:ff9b::1.2.3.4", R.RESERVED),
        ("2001::1", R.RESERVED),
        ("example.com", R.INVALID),
        ("", R.INVALID),
    ],
)
def test_refused(policy: BanPolicy, entry: str, reason: RefusalReason) -> None:
    assert policy.check(entry) == reason


@pytest.mark.parametrize(
    "entry",
    [
        "45.33.12.7",
        "2a01:4f8::1",
        "11.1.2.3",
        "45.33.98.0/24",
        "46.2.0.0/16",
        "2a01:4f8:2::/48",
        "203.0.113.7",
        "198.51.100.0/24",
        "192.0.2.1",
        "2001:db8::1",
        "185.220.101.4",
    ],
)
def test_allowed(policy: BanPolicy, entry: str) -> None:
    assert policy.check(entry) is None


def test_reasons_are_short_constant_strings() -> None:
    assert R("loopback") is R.LOOPBACK
    assert isinstance(R.HOST_ADDRESS, str)
    assert f"{R.HOST_ADDRESS}" == "host_address"
    assert all(reason.isidentifier() and len(reason) <= 16 for reason in RefusalReason)


def test_documentation_ranges_refused_on_request() -> None:
    strict = BanPolicy(refuse_documentation=True)
    for entry in ("192.0.2.1", "198.51.100.7", "203.0.113.0/24", "2001:db8::1"):
        assert strict.check(entry) == R.DOCUMENTATION
    assert strict.check("45.33.12.7") is None


def test_network_containing_a_protected_range_is_refused() -> None:
    policy = BanPolicy(min_prefix_v4=8, allowlist=["11.2.3.4"])
    assert policy.check("11.0.0.0/8") == R.ALLOWLIST
    assert policy.check("12.0.0.0/8") is None
    assert policy.check("100.0.0.0/8") == R.SHARED  # contains 100.64.0.0/10
    assert policy.check("0.0.0.0/8") == R.UNSPECIFIED  # contains 0.0.0.0 itself


def test_default_prefixes_follow_the_config_defaults() -> None:
    policy = BanPolicy()
    assert policy.check("45.0.0.0/16") is None
    assert policy.check("45.0.0.0/15") == R.TOO_WIDE
    assert policy.check("2a01::/32") is None
    assert policy.check("2a01::/31") == R.TOO_WIDE


def test_bad_allowlist_entry_is_an_error_not_ignored() -> None:
    with pytest.raises(InvalidArgument, match="allowlist"):
        BanPolicy(allowlist=["intranet.example"])


def test_bad_prefix_setting_is_an_error() -> None:
    with pytest.raises(InvalidArgument):
        BanPolicy(min_prefix_v4=33)


def test_partition_keeps_order_and_reasons(policy: BanPolicy) -> None:
    allowed, refused = policy.partition(
        ["45.33.12.7", "10.0.0.1", "2a01:4f8::1", HOST, "bogus", "11.1.2.3"]
    )
    assert allowed == ["45.33.12.7", "2a01:4f8::1", "11.1.2.3"]
    assert refused == [("10.0.0.1", R.PRIVATE), (HOST, R.HOST_ADDRESS), ("bogus", R.INVALID)]


def test_agrees_with_ipaddress_on_random_ipv4() -> None:
    """Cross-check the explicit table against ipaddress's idea of "global".

    Known, deliberate differences are skipped: documentation ranges (allowed here)
    and 192.0.0.0/24 (refused whole here; ipaddress calls two anycast hosts global).
    ipaddress calls multicast "global"; a ban of multicast is refused here.
    """
    skip = [
        ipaddress.ip_network(n)
        for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "192.0.0.0/24")
    ]
    policy = BanPolicy()
    rng = random.Random(5)
    for _ in range(20_000):
        address = ipaddress.IPv4Address(rng.getrandbits(32))
        if any(address in network for network in skip):
            continue
        expected_allowed = address.is_global and not address.is_multicast
        assert (policy.check(str(address)) is None) == expected_allowed, address


def test_many_protected_networks_many_entries() -> None:
    rng = random.Random(9)
    allow = [
        f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.0/24"
        for _ in range(300)
    ]
    policy = BanPolicy(allowlist=allow)
    allow_nets = [ipaddress.ip_network(n) for n in allow]
    entries = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(2000)]
    entries += [n.replace(".0/24", ".77") for n in allow[:50]]
    allowed, refused = policy.partition(entries)
    for entry, reason in refused:
        if reason == R.ALLOWLIST:
            assert any(ipaddress.ip_address(entry) in n for n in allow_nets)
    assert sum(reason == R.ALLOWLIST for _, reason in refused) >= 50
    for entry in allowed:
        assert not any(ipaddress.ip_address(entry) in n for n in allow_nets)


FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 203.0.113.0/24 2 0 2
        |-- 203.0.113.0
           /24 link UNICAST
        |-- 203.0.113.9
           /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     |-- 203.0.113.9
        /32 host LOCAL
"""

IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo
2a0104f8000100020000000000000005 02 40 00 00     eth0
fe800000000000000000000000000001 02 40 20 80     eth0
garbage
"""


def test_proc_parsers() -> None:
    assert _parse_fib_trie(FIB_TRIE) == {"127.0.0.1", "203.0.113.9"}
    assert _parse_if_inet6(IF_INET6) == {"::1", "2a01:4f8:1:2::5", "fe80::1"}


def test_host_addresses_never_raises(tmp_path: Path) -> None:
    real = host_addresses()
    assert all(isinstance(address, str) for address in real)
    missing = host_addresses(str(tmp_path / "nowhere"))
    assert all(isinstance(address, str) for address in missing)
    (tmp_path / "fib_trie").write_text(FIB_TRIE)
    (tmp_path / "if_inet6").write_bytes(IF_INET6.encode() + b"\xff\xfe\n")
    faked = host_addresses(str(tmp_path))
    assert {"127.0.0.1", "203.0.113.9", "2a01:4f8:1:2::5", "fe80::1"} <= set(faked)
    assert BanPolicy(host_addresses=faked).check("203.0.113.9") == R.HOST_ADDRESS
