"""Ban policy: what must never be banned, and why."""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bangui_daemon.blocklist import host
from bangui_daemon.blocklist.host import (
    HostAddresses,
    _fallback_addresses,
    _ioctl_ipv4,
    _parse_addr_dump,
    _parse_fib_trie,
    _parse_if_inet6,
    netlink_addresses,
    normalised,
)
from bangui_daemon.blocklist.policy import BanPolicy, RefusalReason
from bangui_daemon.errors import InvalidArgument
from tests.unit.iana_registries import OTHER_V4, REGISTRY_V4

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
        ("2001::1", R.RESERVED),
        # documentation and other non-global ranges, however a list spells them
        ("203.0.113.7", R.DOCUMENTATION),
        ("198.51.100.0/24", R.DOCUMENTATION),
        ("192.0.2.1", R.DOCUMENTATION),
        ("192.0.2.0/23", R.DOCUMENTATION),  # overlaps TEST-NET-1
        ("2001:db8::1", R.DOCUMENTATION),
        ("3fff::1", R.DOCUMENTATION),
        ("198.18.0.0/15", R.BENCHMARKING),
        ("198.19.255.255", R.BENCHMARKING),
        ("192.88.99.1", R.RESERVED),  # deprecated 6to4 relay anycast
        ("192.0.0.9", R.RESERVED),  # globally reachable, inside IETF protocol assignments
        ("192.175.48.1", R.SPECIAL_PURPOSE),  # AS112 anycast
        ("2620:4f:8000::1", R.SPECIAL_PURPOSE),
        ("2001:20::1", R.RESERVED),  # ORCHIDv2, inside 2001::/23
        ("64:ff9b:1::1", R.RESERVED),
        ("5f00::1", R.RESERVED),
        ("100::1", R.RESERVED),
        # NAT64 and 6to4 forms are judged by the IPv4 address they carry
        ("64:ff9b::10.1.2.3", R.PRIVATE),
        ("64:ff9b::127.0.0.1", R.LOOPBACK),
        ("64:ff9b::203.0.113.5", R.DOCUMENTATION),
        (f"64:ff9b::{HOST}", R.HOST_ADDRESS),
        ("64:ff9b::47.1.1.1", R.ALLOWLIST),
        ("64:ff9b::11.22.3.4", R.IGNOREIP),
        ("64:ff9b::/96", R.TOO_WIDE),  # the whole IPv4 internet
        ("64:ff9b::2d21:0/112", R.HOST_ADDRESS),  # 45.33.0.0/16, host 45.33.99.1 in it
        ("64:ff9b::2d00:0/104", R.TOO_WIDE),  # 45.0.0.0/8
        ("2002:a01:203::1", R.PRIVATE),  # 6to4 of 10.1.2.3
        ("2002:2d21:6301::/48", R.HOST_ADDRESS),  # 6to4 site of 45.33.99.1
        ("2002:c000:201::/48", R.DOCUMENTATION),
        ("2002::/16", R.TOO_WIDE),
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
        "185.220.101.4",
        "64:ff9b::2d21:c07",  # NAT64 of 45.33.12.7
        "2002:2d21:c07::1",  # 6to4 of 45.33.12.7
        "2002:2d21:c07::/48",
        "64:ff9b::2d21:6200/120",  # 45.33.98.0/24
        "3ffe::1",  # just below 3fff::/20
        "3fff:1000::1",  # just above it
    ],
)
def test_allowed(policy: BanPolicy, entry: str) -> None:
    assert policy.check(entry) is None


def test_reasons_are_short_constant_strings() -> None:
    assert R("loopback") is R.LOOPBACK
    assert isinstance(R.HOST_ADDRESS, str)
    assert f"{R.HOST_ADDRESS}" == "host_address"
    assert all(reason.isidentifier() and len(reason) <= 16 for reason in RefusalReason)


def test_documentation_ranges_are_refused() -> None:
    policy = BanPolicy()
    for entry in ("192.0.2.1", "198.51.100.7", "203.0.113.0/24", "2001:db8::1", "3fff::/24"):
        assert policy.check(entry) == R.DOCUMENTATION
    assert policy.check("45.33.12.7") is None


def test_network_containing_a_protected_range_is_refused() -> None:
    policy = BanPolicy(min_prefix_v4=8, allowlist=["11.2.3.4"])
    assert policy.check("11.0.0.0/8") == R.ALLOWLIST
    assert policy.check("12.0.0.0/8") is None
    assert policy.check("100.0.0.0/8") == R.SHARED  # contains 100.64.0.0/10
    assert policy.check("0.0.0.0/8") == R.UNSPECIFIED  # contains 0.0.0.0 itself
    assert policy.check("198.16.0.0/12") == R.BENCHMARKING  # contains 198.18.0.0/15
    assert policy.check("198.0.0.0/8") == R.DOCUMENTATION  # 198.51.100.0/24 ranks first
    assert BanPolicy().check("0.0.0.0/8") == R.TOO_WIDE
    assert BanPolicy(min_prefix_v6=0).check("2002::/15") == R.TOO_WIDE  # all of 6to4


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


def test_random_ipv4_outside_the_registry_agrees_with_ipaddress() -> None:
    """Outside every special block, ipaddress's is_global is uncontroversial."""
    networks = [ipaddress.ip_network(n) for n, _ in (*REGISTRY_V4, *OTHER_V4)]
    special = [(int(n.network_address), int(n.broadcast_address)) for n in networks]
    policy = BanPolicy()
    rng = random.Random(5)
    for _ in range(20_000):
        value = rng.getrandbits(32)
        address = ipaddress.IPv4Address(value)
        if any(first <= value <= last for first, last in special):
            assert policy.check(str(address)) is not None, address
        else:
            assert address.is_global, address
            assert policy.check(str(address)) is None, address


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


def test_proc_fallback_reads_proc_net(tmp_path: Path) -> None:
    assert _fallback_addresses(str(tmp_path / "nowhere")) <= _ioctl_ipv4()
    (tmp_path / "fib_trie").write_text(FIB_TRIE)
    (tmp_path / "if_inet6").write_bytes(IF_INET6.encode() + b"\xff\xfe\n")
    faked = normalised(_fallback_addresses(str(tmp_path)))
    assert {"127.0.0.1", "203.0.113.9", "2a01:4f8:1:2::5", "fe80::1"} <= set(faked)
    assert BanPolicy(host_addresses=faked).check("2a01:4f8:1:2::5") == R.HOST_ADDRESS


def test_netlink_sees_what_proc_net_lists() -> None:
    """The two readers agree on this host (netlink is what runs under the unit)."""
    assert normalised(netlink_addresses()) == normalised(_fallback_addresses("/proc/net"))
    assert {"127.0.0.1", "::1"} <= set(HostAddresses(set()).current())


def test_netlink_parser_rejects_errors_and_truncation() -> None:
    error = struct.pack("=IHHIIi", 20, 2, 0, 1, 0, -1)  # NLMSG_ERROR, -EPERM
    with pytest.raises(OSError, match="not permitted"):
        _parse_addr_dump(error, set())
    with pytest.raises(OSError, match="truncated"):
        _parse_addr_dump(struct.pack("=IHHII", 64, 20, 0, 1, 0), set())


def test_ipv6_host_addresses_are_seen_where_the_unit_hides_proc_net() -> None:
    """The unit's ProcSubset=pid hides /proc/net: netlink still lists IPv6 addresses
    (SIOCGIFCONF, the old fallback there, knows IPv4 only)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private /proc mount")
    script = (
        "mount -t proc -o subset=pid proc /proc && test ! -e /proc/net && "
        f'exec {sys.executable} -c "from bangui_daemon.blocklist.host import HostAddresses; '
        'print(*HostAddresses(set()).current())"'
    )
    result = subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    if result.returncode != 0 and "mount" in result.stderr:
        pytest.skip(f"cannot mount a private /proc here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) == set(normalised(netlink_addresses()))
    assert "::1" in result.stdout.split()


def test_without_netlink_the_proc_fallback_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit that forbids AF_NETLINK still protects what /proc/net and SIOCGIFCONF show."""

    def refused() -> set[str]:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(host, "netlink_addresses", refused)
    expected = normalised(_fallback_addresses("/proc/net") | {"45.33.99.1"})
    assert HostAddresses({"45.33.99.1"}).current() == expected
    assert "127.0.0.1" in expected
