"""The IANA special-purpose registries as the tests know them, typed in from the
registries themselves (IPv4: iana-ipv4-special-registry, IPv6:
iana-ipv6-special-registry, both as of 2025), independent of the daemon's table.

Each row: (address block, "Globally Reachable"); None where the registry says N/A
or the entry is terminated. A row per block: the registry's one row for
192.0.0.170/32 and 192.0.0.171/32 is two here.
"""

from __future__ import annotations

REGISTRY_V4: tuple[tuple[str, bool | None], ...] = (
    ("0.0.0.0/8", False),
    ("0.0.0.0/32", False),
    ("10.0.0.0/8", False),
    ("100.64.0.0/10", False),
    ("127.0.0.0/8", False),
    ("169.254.0.0/16", False),
    ("172.16.0.0/12", False),
    ("192.0.0.0/24", False),
    ("192.0.0.0/29", False),
    ("192.0.0.8/32", False),
    ("192.0.0.9/32", True),
    ("192.0.0.10/32", True),
    ("192.0.0.170/32", False),
    ("192.0.0.171/32", False),
    ("192.0.2.0/24", False),
    ("192.31.196.0/24", True),
    ("192.52.193.0/24", True),
    ("192.88.99.0/24", None),
    ("192.88.99.2/32", False),
    ("192.168.0.0/16", False),
    ("192.175.48.0/24", True),
    ("198.18.0.0/15", False),
    ("198.51.100.0/24", False),
    ("203.0.113.0/24", False),
    ("240.0.0.0/4", False),
    ("255.255.255.255/32", False),
)

REGISTRY_V6: tuple[tuple[str, bool | None], ...] = (
    ("::1/128", False),
    ("::/128", False),
    ("::ffff:0:0/96", False),
    ("64:ff9b::/96", True),
    ("64:ff9b:1::/48", False),
    ("100::/64", False),
    ("100:0:0:1::/64", False),
    ("2001::/23", False),
    ("2001::/32", None),
    ("2001:1::1/128", True),
    ("2001:1::2/128", True),
    ("2001:1::3/128", True),
    ("2001:2::/48", False),
    ("2001:3::/32", True),
    ("2001:4:112::/48", True),
    ("2001:10::/28", None),
    ("2001:20::/28", True),
    ("2001:30::/28", True),
    ("2001:db8::/32", False),
    ("2002::/16", None),
    ("2620:4f:8000::/48", True),
    ("3fff::/20", False),
    ("5f00::/16", False),
    ("fc00::/7", False),
    ("fe80::/10", False),
)

# Never an internet host either, from the multicast and IPv6 address space registries.
OTHER_V4: tuple[tuple[str, bool | None], ...] = (("224.0.0.0/4", None),)
OTHER_V6: tuple[tuple[str, bool | None], ...] = (
    ("ff00::/8", None),
    ("fec0::/10", None),
    ("::/3", None),
    ("4000::/2", None),
    ("8000::/1", None),
)

# The blocks whose addresses carry an IPv4 address right after the prefix.
EMBEDDING_V4 = ("64:ff9b::/96", "2002::/16")
