"""A local aiohttp.web server on 127.0.0.1 that serves blocklists to the daemon under test.

It runs its own event loop in a thread, so the (synchronous) tests drive the daemon
with busctl while the daemon downloads from here. Routes:

    /list/NAME            the bytes in ``server.lists[NAME]`` (no validators)
    /etag/NAME            the same with an ETag, answering 304 to a matching If-None-Match
    /gated/NAME           the same, but held until ``server.release(NAME)``
    /trickle              a never-ending list, one line every 0.2 s
    /chunked?size=N       N bytes of valid lines without a Content-Length
    /to-file?path=P       302 to file://P

Every request is recorded (path and headers) in ``server.requests``.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from tests.harness.util import wait_until


class ListServer:
    def __init__(self) -> None:
        self.lists: dict[str, bytes] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._gates: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="list-server")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    # ------------------------------------------------------------------ control
    def gate(self, name: str) -> None:
        """Hold requests for /gated/NAME until `release`."""
        self._gates[name] = threading.Event()

    def release(self, name: str) -> None:
        self._gates[name].set()

    def hits(self, prefix: str) -> list[dict[str, str]]:
        """Headers of the requests whose path starts with `prefix`."""
        with self._lock:
            return [headers for path, headers in self.requests if path.startswith(prefix)]

    def wait_hits(self, prefix: str, n: int, timeout: float = 10.0) -> None:
        wait_until(lambda: len(self.hits(prefix)) >= n, timeout, f"{n} request(s) for {prefix}")

    # ----------------------------------------------------------------- handlers
    def _record(self, request: web.Request) -> None:
        with self._lock:
            self.requests.append((request.path_qs, dict(request.headers)))

    async def _list(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        name = request.match_info["name"]
        body = self.lists.get(name)
        if body is None:
            raise web.HTTPNotFound
        return web.Response(body=body, content_type="text/plain")

    async def _etag(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        body = self.lists[request.match_info["name"]]
        tag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers={"ETag": tag})
        return web.Response(body=body, content_type="text/plain", headers={"ETag": tag})

    async def _gated(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        name = request.match_info["name"]
        await asyncio.to_thread(self._gates[name].wait, 30.0)
        return web.Response(body=self.lists[name], content_type="text/plain")

    async def _trickle(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for i in range(150):  # 30 s at most; the daemon gives up long before
            if self._stopping.is_set():
                break
            try:
                await resp.write(f"45.77.{i // 250}.{i % 250 + 1}\n".encode())
            except (ConnectionError, RuntimeError):
                break
            await asyncio.sleep(0.2)
        return resp

    async def _chunked(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        size = int(request.query["size"])
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        line = b"45.78.1.1\n"
        sent = 0
        try:
            while sent < size:
                await resp.write(line * 100)
                sent += len(line) * 100
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def _to_file(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        raise web.HTTPFound("file://" + request.query["path"])

    # ---------------------------------------------------------------- lifecycle
    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/list/{name}", self._list)
        app.router.add_get("/etag/{name}", self._etag)
        app.router.add_get("/gated/{name}", self._gated)
        app.router.add_get("/trickle", self._trickle)
        app.router.add_get("/chunked", self._chunked)
        app.router.add_get("/to-file", self._to_file)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        self._stopping.set()
        for gate in self._gates.values():
            gate.set()
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._sock.close()


def addresses(second: int, n: int) -> list[str]:
    """`n` distinct global unicast addresses 45.<second>.x.y (up to 62,500)."""
    return [f"45.{second}.{i // 250}.{i % 250 + 1}" for i in range(n)]


@contextmanager
def serving() -> Iterator[ListServer]:
    server = ListServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
