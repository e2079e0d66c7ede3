"""What a real fail2ban's ban-list replies cost per ban, against the client's reply limit.

Starts a sandboxed fail2ban with a jail without action, bans `--bans` random IPv4
addresses, then as many full-length IPv6 ones, and reads the raw replies of the
commands whose size grows with the bans. Prints bytes per ban, the size of the same
reply for 1M bans, and that size as a share of `protocol.DEFAULT_REPLY_LIMIT` (the
limit's documentation quotes these figures). Never asserts.
Run: .venv/bin/python bench/reply_sizes.py [--bans 50000]
"""

from __future__ import annotations

import argparse
import pickle
import random
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bangui_daemon.fail2ban.protocol import CLOSE_FRAME, DEFAULT_REPLY_LIMIT, END
from tests.harness import F2bSandbox

JAIL = "sizes"
COMMANDS = (
    ("get", JAIL, "banip"),
    ("get", JAIL, "banip", "--with-time"),
    ("status", JAIL),
)


def raw_reply(path: Path, *command: str) -> bytes:
    """The reply's bytes as they arrive on the socket (pickle plus end marker)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(120)
        sock.connect(str(path))
        sock.sendall(pickle.dumps(list(command), protocol=4) + END)
        buf = bytearray()
        while not buf.endswith(END):
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
        sock.sendall(CLOSE_FRAME)
    return bytes(buf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bans", type=int, default=50_000)
    args = parser.parse_args()
    rnd = random.Random(1)

    def ipv4() -> str:
        return ".".join(
            str(rnd.randrange(1, 224) if i == 0 else rnd.randrange(256)) for i in range(4)
        )

    def ipv6() -> str:  # eight full groups: the longest text an address has
        return "2a0" + ":".join(f"{rnd.randrange(0x1000, 0x10000):x}" for _ in range(8))

    families = {
        "IPv4": {ipv4() for _ in range(args.bans)},
        "IPv6": {ipv6() for _ in range(args.bans)},
    }
    print(f"reply limit: {DEFAULT_REPLY_LIMIT} bytes ({DEFAULT_REPLY_LIMIT / 2**20:.0f} MiB)")
    header = f"{'family':<6} {'command':<30}{'bans':>8}{'bytes':>11}{'B/ban':>8}"
    print(f"{header}{'1M bans':>10}{'limit':>8}")
    with F2bSandbox(extra_jails={JAIL: {"action": "", "bantime": "1w"}}) as f2b:
        for family, ips in families.items():
            addresses = sorted(ips)
            for start in range(0, len(addresses), 5000):
                f2b.client("set", JAIL, "banip", *addresses[start : start + 5000])
            for command in COMMANDS:
                size = len(raw_reply(f2b.socket_path, *command))
                per_ban = size / len(addresses)
                million = per_ban * 1_000_000
                print(
                    f"{family:<6} {' '.join(command):<30}{len(addresses):>8}{size:>11}"
                    f"{per_ban:>8.1f}{million / 1e6:>8.0f} MB{million / DEFAULT_REPLY_LIMIT:>7.0%}"
                )
            f2b.client("set", JAIL, "unbanip", "--all")


if __name__ == "__main__":
    main()
