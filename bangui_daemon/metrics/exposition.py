"""Render families in the Prometheus text format; serve it over HTTP; write a textfile.

The only module that imports prometheus_client (and, for the listener, aiohttp's
server). A scrape renders what the daemon already holds in memory: it never waits on
fail2ban's socket.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from bangui_daemon.config import split_listen
from bangui_daemon.metrics.families import Family

log = structlog.get_logger(__name__)

Source = Callable[[], Awaitable[Sequence[Family]]]


class _Collector:
    """prometheus_client's collector protocol over families gathered beforehand."""

    def __init__(self, families: Sequence[Family]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            metric: Metric
            if family.kind == "counter":
                metric = CounterMetricFamily(family.name, family.help, labels=family.labels)
            else:
                metric = GaugeMetricFamily(family.name, family.help, labels=family.labels)
            for label_values, value in family.samples:
                metric.add_metric(list(label_values), value)
            yield metric


def render(families: Sequence[Family]) -> bytes:
    """The Prometheus text format (0.0.4) of `families`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(families))
    return generate_latest(registry)


def write_textfile(path: str, families: Sequence[Family]) -> int:
    """Write the families atomically (temp file in the same directory, then rename).

    node_exporter's textfile collector must never read a half-written file. Returns
    the bytes written; OSError when the directory is missing or not writable.
    """
    data = render(families)
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".bangui-", suffix=".prom.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)  # node_exporter usually runs as its own user
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return len(data)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MetricsServer:
    """`GET /metrics` on one address; anything else is 404."""

    def __init__(self, listen: str, source: Source) -> None:
        self.host, self.port = split_listen(listen)  # validated with the config
        self._source = source
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if not is_loopback(self.host):
            log.warning("metrics_listen_not_loopback", host=self.host, port=self.port)
        log.info("metrics_listening", host=self.host, port=self.port)

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = render(await self._source())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
