"""This host's own addresses, read fresh for every ban decision.

An address the host gains while running (DHCP, a VPN coming up) must be protected
from the next ban on. The kernel's rtnetlink address dump (RTM_GETADDR) answers in
well under a millisecond with every IPv4 and IPv6 address of the daemon's network
namespace, and works under the unit's ``ProcSubset=pid`` (which hides /proc/net) as
long as AF_NETLINK is allowed. Where netlink is refused, /proc/net and SIOCGIFCONF
(IPv4 only) are read instead. The host name's resolution may wait on DNS, so it is
taken once at start (`resolve_hostname`) and added to every answer.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Final

from bangui_daemon.blocklist.parse import entry_key, key_to_text

_RTM_NEWADDR: Final = 20
_RTM_GETADDR: Final = 22
_NLMSG_ERROR: Final = 2
_NLMSG_DONE: Final = 3
_NLM_F_REQUEST_DUMP: Final = 0x1 | 0x300
_IFA_ADDRESS: Final = 1
_IFA_LOCAL: Final = 2
_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
_RTATTR = struct.Struct("=HH")  # len, type


def unscoped(text: str) -> str:
    """Drop an IPv6 zone ("fe80::1%eth0"), which fail2ban and the kernel may show."""
    return text.split("%", 1)[0] if ":" in text else text


def _align(n: int) -> int:
    return (n + 3) & ~3


def _parse_addr_dump(data: bytes, found: set[str]) -> bool:
    """Add the addresses of one netlink reply buffer to `found`; True at the dump's end."""
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size or offset + length > len(data):
            raise OSError("truncated netlink message")
        if kind == _NLMSG_DONE:
            return True
        if kind == _NLMSG_ERROR:
            error = struct.unpack_from("=i", data, offset + _NLMSG.size)[0]
            raise OSError(-error, os.strerror(-error) if error else "netlink error")
        if kind == _RTM_NEWADDR:
            family = data[offset + _NLMSG.size]
            size = 4 if family == socket.AF_INET else 16
            at = offset + _NLMSG.size + _IFADDRMSG.size
            end = offset + length
            while at + _RTATTR.size <= end:
                rta_len, rta_type = _RTATTR.unpack_from(data, at)
                if rta_len < _RTATTR.size:
                    break
                if rta_type in (_IFA_ADDRESS, _IFA_LOCAL) and rta_len == _RTATTR.size + size:
                    raw = data[at + _RTATTR.size : at + rta_len]
                    found.add(socket.inet_ntop(family, raw))
                at += _align(rta_len)
        offset += _align(length)
    return False


def netlink_addresses() -> set[str]:
    """Every address of this network namespace, from one RTM_GETADDR dump (raises OSError)."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.settimeout(1.0)
        header = _NLMSG.pack(_NLMSG.size + _IFADDRMSG.size, _RTM_GETADDR, _NLM_F_REQUEST_DUMP, 1, 0)
        sock.sendall(header + _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
        found: set[str] = set()
        while not _parse_addr_dump(sock.recv(65536), found):
            pass
        return found


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


def _fallback_addresses(proc_net: str) -> set[str]:
    found: set[str] = set()
    with contextlib.suppress(OSError, ValueError):
        found |= _parse_fib_trie(Path(proc_net, "fib_trie").read_text(errors="replace"))
    with contextlib.suppress(OSError, ValueError):
        found |= _parse_if_inet6(Path(proc_net, "if_inet6").read_text(errors="replace"))
    with contextlib.suppress(OSError, ValueError, struct.error):
        found |= _ioctl_ipv4()
    return found


def resolve_hostname() -> set[str]:
    """The addresses this host's name resolves to (may consult DNS: off the loop)."""
    found: set[str] = set()
    with contextlib.suppress(OSError, UnicodeError, ValueError):
        for *_, sockaddr in socket.getaddrinfo(socket.gethostname(), None):
            found.add(str(sockaddr[0]))
    return found


def interface_addresses() -> set[str]:
    """The addresses on this namespace's interfaces now; never raises.

    Netlink first; /proc/net and SIOCGIFCONF only when netlink is refused.
    """
    try:
        return netlink_addresses()
    except OSError:
        return _fallback_addresses("/proc/net")


def normalised(addresses: set[str]) -> list[str]:
    """Canonical text of each parseable address (zones dropped), IPv4 first, sorted."""
    keys = {key for text in addresses if (key := entry_key(unscoped(text))) is not None}
    return [key_to_text(k) for k in sorted(keys, key=lambda k: (len(k) > 5, k))]


class HostAddresses:
    """This host's addresses as of now: the interfaces re-read on every call, plus the
    host name's addresses resolved once at start."""

    def __init__(self, resolved: set[str]) -> None:
        self._resolved = set(resolved)

    def current(self) -> list[str]:
        return normalised(interface_addresses() | self._resolved)
