"""A hostile fail2ban: whoever binds fail2ban's socket path and answers with malice.

Run as ``python -m tests.harness.hostile_f2b SOCKET MODE [--marker PATH]`` (a separate
process, so streaming 200 MB never slows the test itself). Each connection gets a
thread; every request read is answered according to MODE:

    pickle      a pickle whose ``__reduce__`` would run ``touch MARKER``
    garbage     random bytes plus the end marker
    truncated   the first half of a valid reply, then the connection is closed
    oversized   a 200 MB reply (a bytes object's pickle), streamed in 1 MiB chunks
    trickle     a valid 1 KB reply, one byte per 100 ms
    silence     nothing, ever (until the daemon closes the connection)

Counters (JSON: connections, requests, replies, bytes_sent) are
rewritten to ``SOCKET.stats`` after every change, so a test can wait on them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import random
import select
import socket
import struct
import threading
from pathlib import Path
from typing import Any

END = b"<F2B_END_COMMAND>"
CLOSE = b"<F2B_CLOSE_COMMAND>"
MODES = ("pickle", "garbage", "truncated", "oversized", "trickle", "silence")
OVERSIZED = 200 * 1000 * 1000
_CHUNK = 1024 * 1024
_TRICKLE_DELAY = 0.1


def evil_pickle(marker: str) -> bytes:
    """`(0, os.system("touch MARKER"))` as a pickle, built without an importable class."""
    command = f"touch {marker}".encode()
    return (
        b"\x80\x02K\x00cposix\nsystem\nX"
        + struct.pack("<I", len(command))
        + command
        + b"\x85R\x86."
    )


def oversized_header(size: int) -> bytes:
    """PROTO 5, then BINBYTES8 announcing `size` bytes: a valid pickle's beginning."""
    return b"\x80\x05\x8e" + struct.pack("<Q", size)


class HostileServer:
    """The unix-socket server; one thread per connection."""

    def __init__(self, path: str, mode: str, marker: str) -> None:
        if mode not in MODES:
            raise SystemExit(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        self.path = path
        self.mode = mode
        self.marker = marker
        self.stats_path = Path(path + ".stats")
        self.lock = threading.Lock()
        self.stats: dict[str, int] = {
            "connections": 0,
            "requests": 0,
            "replies": 0,
            "bytes_sent": 0,
        }
        self.rnd = random.Random(9)
        self._write_stats()

    def _bump(self, **deltas: int) -> None:
        with self.lock:
            for key, delta in deltas.items():
                self.stats[key] += delta
            self._write_stats()

    def _write_stats(self) -> None:
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.stats))
        tmp.replace(self.stats_path)

    def serve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(1)  # like fail2ban
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        self._bump(connections=1)
        try:
            buf = b""
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
                while END in buf:
                    request, buf = buf.split(END, 1)
                    if request == CLOSE:
                        return
                    self._bump(requests=1)
                    if not self._answer(conn):
                        return
        except OSError:
            pass  # the daemon dropped us: exactly what it should do
        finally:
            conn.close()

    def _send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        self._bump(bytes_sent=len(data))

    def _answer(self, conn: socket.socket) -> bool:
        """Answer one request; False closes the connection."""
        mode = self.mode
        if mode == "pickle":
            self._send(conn, evil_pickle(self.marker) + END)
        elif mode == "garbage":
            self._send(conn, self.rnd.randbytes(4096) + END)
        elif mode == "truncated":
            reply = pickle.dumps((0, ["x" * 100] * 50), protocol=5)
            self._send(conn, reply[: len(reply) // 2])
            self._bump(replies=1)
            return False
        elif mode == "oversized":
            self._send(conn, oversized_header(OVERSIZED))
            chunk = b"\0" * _CHUNK
            for _ in range(OVERSIZED // _CHUNK):
                self._send(conn, chunk)
            self._send(conn, b"." + END)
        elif mode == "trickle":
            for byte in pickle.dumps((0, "x" * 1000), protocol=5) + END:
                self._send(conn, bytes([byte]))
                readable, _, _ = select.select([conn], [], [], _TRICKLE_DELAY)
                if readable and not conn.recv(1, socket.MSG_PEEK):
                    return False  # the daemon gave up and closed

        else:  # silence: until the daemon gives up and closes
            while conn.recv(65536):
                pass
            return False
        self._bump(replies=1)
        return True


def read_stats(path: str | Path) -> dict[str, Any]:
    """The server's counters (an empty dict before it wrote any)."""
    try:
        stats: dict[str, Any] = json.loads(Path(str(path) + ".stats").read_text())
    except (OSError, ValueError):
        return {}
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("socket")
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--marker", default="/nonexistent/hostile-f2b-marker")
    args = parser.parse_args()
    HostileServer(args.socket, args.mode, args.marker).serve()


if __name__ == "__main__":
    main()
