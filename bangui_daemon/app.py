"""The daemon's lifecycle: start in order, run until SIGTERM, tell systemd how it goes.

Start order matters to systemd: READY=1 is sent only after the archive is migrated
and the bus name is owned, so `systemctl start` returning means clients can call.
Signal handlers are installed before anything else, so an early SIGTERM is clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from dataclasses import replace

import structlog

from bangui_daemon.archive.db import Migration
from bangui_daemon.config import Config, load_config
from bangui_daemon.dbus.names import BUS_NAME
from bangui_daemon.dbus.server import DbusServer
from bangui_daemon.errors import BanguiError, ConfigError
from bangui_daemon.events import EventHub
from bangui_daemon.logs import configure_logging
from bangui_daemon.metrics.exposition import MetricsServer
from bangui_daemon.notify import Notifier
from bangui_daemon.services.daemon_state import RUNNING, STOPPING, DaemonState
from bangui_daemon.services.status import StatusService
from bangui_daemon.tasks.scheduler import Scheduler
from bangui_daemon.wiring import Components, build

log = structlog.get_logger(__name__)

STATUS_EVERY = 10.0
# While a schema step runs (a table rebuild: ~10 s per million events), systemd is
# asked for EXTEND_STEP more seconds every EXTEND_EVERY: a long step is never killed
# by TimeoutStartSec, and a hang after it still is, EXTEND_STEP later at most.
EXTEND_STEP = 30
EXTEND_EVERY = 10.0
# SIGTERM to exit: at most STOP_BUDGET, then the exit guard forces it (README: "within
# 5 s"). The unit's TimeoutStopSec=15s is the margin for a hung process, not the plan.
STOP_BUDGET = 4.0


class Daemon:
    """The running daemon; `await Daemon(config, path).run()` until stopped."""

    def __init__(self, config: Config, config_path: str | None) -> None:
        self.config = config
        self._config_path = config_path
        self.hub = EventHub()
        self.state = DaemonState(self.hub)
        self.notifier = Notifier()
        self._stop = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._migration_status = ""
        self._extending: asyncio.Task[None] | None = None

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the process exit code."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_requested.set)
        try:
            self.notifier.status("opening the archive")
            try:
                parts = await build(lambda: self.config, self.hub, self.state, self._migrating)
            finally:
                if self._extending is not None:
                    self._extending.cancel()
            try:
                return await self._serve(parts)
            finally:
                await parts.close()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)

    def _migrating(self, migration: Migration) -> None:
        self._migration_status = f"migrating the archive to schema {migration.version}"
        if self._extending is None:
            self._extending = asyncio.get_running_loop().create_task(self._extend_startup())

    async def _extend_startup(self) -> None:
        while True:
            self.notifier.extend_startup(EXTEND_STEP, self._migration_status)
            await asyncio.sleep(EXTEND_EVERY)

    async def _serve(self, parts: Components) -> int:
        cfg = self.config
        self.notifier.status("connecting to D-Bus")
        server = await DbusServer.start(
            cfg.dbus.bus, lambda: self.config.dbus.admin_group, self.hub, self.state, parts
        )
        # One bounded first snapshot, so READY comes with a true State and jail list.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(parts.watch.start(), cfg.fail2ban.timeout)
        metrics_server = None
        if cfg.metrics.listen:
            metrics_server = MetricsServer(cfg.metrics.listen, parts.metrics.families)
            try:
                await metrics_server.start()
            except OSError as exc:  # a taken port must not take the daemon down
                log.error("metrics_listen_failed", listen=cfg.metrics.listen, error=str(exc))
                metrics_server = None
        parts.scheduler.start()
        self.state.set_phase(RUNNING)
        self.notifier.ready(f"serving {BUS_NAME}")
        log.info("daemon_ready", bus=cfg.dbus.bus, name=BUS_NAME, archive=cfg.archive.path)

        background = [
            asyncio.create_task(self._watchdog(), name="watchdog"),
            asyncio.create_task(self._status_lines(parts.status), name="status-lines"),
            asyncio.create_task(self._reloader(parts), name="reloader"),
        ]
        disconnected = asyncio.create_task(server.wait_for_disconnect(), name="bus-watch")
        stopping = asyncio.create_task(self._stop.wait(), name="stop-wait")
        done, _ = await asyncio.wait({disconnected, stopping}, return_when=asyncio.FIRST_COMPLETED)
        connected = disconnected not in done
        if not connected:
            log.error("dbus_connection_lost")
        log.info("daemon_stopping")
        _arm_exit_guard(0 if connected else 1)
        self.state.set_phase(STOPPING)
        self.notifier.stopping()
        for task in (*background, stopping, disconnected):
            task.cancel()
        try:
            await asyncio.wait_for(parts.scheduler.stop(), STOP_BUDGET / 2)
        except TimeoutError:
            log.warning("tasks_not_stopped_in_time")
        if metrics_server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(metrics_server.stop(), STOP_BUDGET / 8)
        await server.stop(STOP_BUDGET / 4, connected)
        exit_code = 0 if connected else 1
        log.info("daemon_stopped", exit_code=exit_code)
        return exit_code

    async def _watchdog(self) -> None:
        """WATCHDOG=1 from the event loop itself: a stuck loop stops the pings."""
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _status_lines(self, status: StatusService) -> None:
        while True:
            with contextlib.suppress(Exception):
                self.notifier.status(await status.summary())
            await asyncio.sleep(STATUS_EVERY)

    async def _reloader(self, parts: Components) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            self.notifier.reloading()
            await self.reload(parts.scheduler)
            try:
                # [[blocklist.source]] tables: added, changed and removed ones
                counts = await parts.blocklists.reconcile(self.config.blocklist.source)
            except Exception as exc:  # noqa: BLE001 - one bad source must not stop the reload
                log.error("blocklist_sources_reconcile_failed", error=str(exc))
            else:
                log.info("blocklist_sources_reconciled", **counts)
            self.notifier.ready("configuration reloaded")

    async def reload(self, scheduler: Scheduler) -> None:
        """Re-read the config file; apply what can change live, keep the rest.

        Reading it stats every configured path: in a thread, as a hung mount would
        stall the loop.
        """
        try:
            new = await asyncio.to_thread(load_config, self._config_path)
        except ConfigError as exc:
            log.error("config_reload_failed", error=str(exc))
            return
        needs_restart = [
            key
            for key, old_value, new_value in (
                ("fail2ban", self.config.fail2ban, new.fail2ban),
                ("archive.path", self.config.archive.path, new.archive.path),
                ("dbus.bus", self.config.dbus.bus, new.dbus.bus),
                ("metrics.listen", self.config.metrics.listen, new.metrics.listen),
                # the MMDB readers and the HTTP fallback are built once at start
                (
                    "geo",
                    replace(self.config.geo, retention_days=0),
                    replace(new.geo, retention_days=0),
                ),
            )
            if old_value != new_value
        ]
        if needs_restart:
            log.warning("config_reload_needs_restart", keys=needs_restart)
            new = replace(
                new,
                fail2ban=self.config.fail2ban,
                archive=replace(new.archive, path=self.config.archive.path),
                dbus=replace(new.dbus, bus=self.config.dbus.bus),
                metrics=replace(new.metrics, listen=self.config.metrics.listen),
                geo=replace(self.config.geo, retention_days=new.geo.retention_days),
            )
        configure_logging(new.log.level, new.log.format)
        for name in scheduler.names():
            interval = getattr(new.tasks, name, None)
            if isinstance(interval, int | float):
                scheduler.set_interval(name, float(interval))
        self.config = new
        log.info("config_reloaded", path=self._config_path)


def _arm_exit_guard(code: int) -> threading.Timer:
    """Exit within the stop budget even if a stray worker thread would hold the
    interpreter (Python waits for non-daemon threads and executor jobs at exit).

    Everything is flushed and closed by then; the guard only names what was left.
    """

    def force() -> None:
        left = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        log.warning("forced_exit", exit_code=code, threads_left=left)
        logging.shutdown()
        os._exit(code)

    guard = threading.Timer(STOP_BUDGET, force)
    guard.daemon = True
    guard.start()
    return guard


def run_daemon(config: Config, config_path: str | None) -> int:
    """Entry point used by the command line: run the loop, map failures to exit codes."""
    configure_logging(config.log.level, config.log.format)
    try:
        return asyncio.run(Daemon(config, config_path).run())
    except ConfigError:
        raise  # a path that stat() could not judge: the command line says it, exit 2
    except BanguiError as exc:
        log.error("daemon_start_failed", error=str(exc))
        return 1
