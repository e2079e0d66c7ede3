"""ImportSource against hostile HTTP servers: a named error, no partial state, bounded memory.

A raw threaded server on 127.0.0.1 answers each path with one trick: a gzip bomb
(1 GB of zeros in ~1 MB), a Content-Length longer than the body, headers without
end, a redirect loop and a chain of four redirects. The daemon runs with the default
50 MiB cap; every import must fail with the cause in its result, leave no pending
run, ban nothing, and the daemon's peak RSS must stay under 150 MB. About 5 s.
(Oversized, trickling and file:// redirects: test_blocklists.py.)
"""

from __future__ import annotations

import contextlib
import gzip
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.daemon import DaemonProcess
from tests.harness.fail2ban import F2bSandbox
from tests.integration.dbus_calls import BLOCKLISTS, Runner, call
from tests.integration.test_hostile_fail2ban import RSS_BOUND, memory

JAIL = "blocklist-import"
LIST = b"45.19.0.1\n45.19.0.2\n"


def gzip_bomb(megabytes: int = 1000) -> bytes:
    """`megabytes` MB of zeros as gzip members of 1 MiB each (~1 KB apiece): cheap to build."""
    return gzip.compress(b"\0" * (1024 * 1024), 9) * megabytes


class Tricks(socketserver.StreamRequestHandler):
    bomb = b""

    def handle(self) -> None:
        line = self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        path = line.split(b" ")[1].decode()
        with contextlib.suppress(OSError):
            self.answer(path)

    def answer(self, path: str) -> None:
        # One request per connection, said so: aiohttp 3.8 would otherwise send the
        # next hop on this connection and meet it closed.
        def out(data: bytes) -> None:
            if data.startswith(b"HTTP/1.1 "):
                status, rest = data.split(b"\r\n", 1)
                data = status + b"\r\nConnection: close\r\n" + rest
            self.wfile.write(data)

        if path == "/bomb":
            head = f"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {len(self.bomb)}"
            out(head.encode() + b"\r\n\r\n" + self.bomb)
        elif path == "/longer":
            out(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + LIST)
        elif path == "/headers":
            out(b"HTTP/1.1 200 OK\r\n")
            for _ in range(10_000):  # the daemon hangs up long before 1 GB
                out((b"X-Junk: " + b"a" * 100 + b"\r\n") * 1000)
        elif path == "/loop":
            out(b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n")
        elif path.startswith("/hops/"):
            left = int(path.rsplit("/", 1)[1])
            if left == 0:
                out(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(LIST) + LIST)
            else:
                where = f"/hops/{left - 1}".encode()
                out(b"HTTP/1.1 302 Found\r\nLocation: " + where + b"\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture
def tricks() -> Iterator[str]:
    Tricks.bomb = gzip_bomb()
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Tricks)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


CASES = {
    "bomb": "larger than 52428800 bytes",
    "longer": "payload is not completed",
    "headers": "Too many headers",
    "loop": "redirected more than 3 times",
    "hops/4": "redirected more than 3 times",
}


@pytest.mark.daemon_config({"blocklist": {"timeout": 10}})
def test_hostile_servers_fail_imports_cleanly(
    f2b: F2bSandbox, daemon: DaemonProcess, busctl: Runner, tricks: str, tmp_path: Path
) -> None:
    for path, message in CASES.items():
        (source,) = call(busctl, BLOCKLISTS, "AddSource", "ssb", path, f"{tricks}/{path}", "false")
        (result,) = call(busctl, BLOCKLISTS, "ImportSource", "u", str(source))
        assert result["status"] == "failed", (path, result)
        assert message in result["error"], (path, result["error"])
        assert len(result["error"]) < 300, result["error"]
        runs, _ = call(busctl, BLOCKLISTS, "ListImportRuns", "uuu", str(source), "1", "10")
        assert all(r["status"] == "failed" for r in runs), (path, runs)  # none pending
        (listed,) = [s for s in call(busctl, BLOCKLISTS, "ListSources")[0] if s["id"] == source]
        assert (listed["last_status"], listed["last_imported"]) == ("failed", 0), listed
    # Three redirects are still followed: the limit is not off by one.
    (source,) = call(busctl, BLOCKLISTS, "AddSource", "ssb", "hops", f"{tricks}/hops/3", "false")
    (result,) = call(busctl, BLOCKLISTS, "ImportSource", "u", str(source))
    assert result["status"] == "completed", result
    assert set(f2b.banned(JAIL)) == {"45.19.0.1", "45.19.0.2"}  # and nothing before
    assert daemon.running
    _rss, peak = memory(daemon.pid)
    assert peak < RSS_BOUND, f"peak RSS {peak / 1e6:.0f} MB"
