"""Composition root: build every piece, run until SIGTERM, tell systemd how it goes.

Start order matters to systemd: READY=1 is sent only after the archive is migrated
and the bus name is owned, so `systemctl start` returning means clients can call.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import replace

import structlog
from dbus_fast import BusType, NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus

from bangui_daemon.archive.db import Archive
from bangui_daemon.archive.events_repo import EventsRepository
from bangui_daemon.archive.geo_repo import GeoCacheRepository
from bangui_daemon.blocklist.importer import Importer
from bangui_daemon.blocklist.policy import host_addresses
from bangui_daemon.config import Config, load_config
from bangui_daemon.dbus.auth import Authorizer, remember_message
from bangui_daemon.dbus.blocklists import BlocklistsInterface
from bangui_daemon.dbus.core import CoreInterface
from bangui_daemon.dbus.geo import GeoInterface
from bangui_daemon.dbus.history import HistoryInterface
from bangui_daemon.dbus.names import BUS_NAME, OBJECT_PATH
from bangui_daemon.dbus.signals import SignalPump
from bangui_daemon.errors import BanguiError, ConfigError
from bangui_daemon.events import EventHub
from bangui_daemon.fail2ban.client import Fail2banClient
from bangui_daemon.geo.http_fallback import HttpGeoFallback
from bangui_daemon.geo.lookup import MmdbResolver
from bangui_daemon.logging import configure_logging
from bangui_daemon.notify import Notifier
from bangui_daemon.services.bans import BanService
from bangui_daemon.services.blocklists import BlocklistService
from bangui_daemon.services.geo import GeoService
from bangui_daemon.services.history import HistoryService
from bangui_daemon.services.safety import SafetyPolicy
from bangui_daemon.services.state import RUNNING, STOPPING, DaemonState
from bangui_daemon.services.status import StatusService
from bangui_daemon.tasks import (
    ban_watch,
    blocklist_import,
    geo_cache_cleanup,
    geo_resolve,
    history_purge,
    history_sync,
)
from bangui_daemon.tasks.ban_watch import BanWatch
from bangui_daemon.tasks.blocklist_import import BlocklistImport
from bangui_daemon.tasks.geo_cache_cleanup import GeoCacheCleanup
from bangui_daemon.tasks.geo_resolve import GeoResolve
from bangui_daemon.tasks.history_purge import HistoryPurge
from bangui_daemon.tasks.history_sync import HistorySync
from bangui_daemon.tasks.scheduler import Scheduler

log = structlog.get_logger(__name__)

STATUS_EVERY = 10.0
GEO_RECENT = 7 * 86400  # archived addresses younger than this are kept resolved
STOP_BUDGET = 4.0  # systemd and the tests expect an exit within 5 s of SIGTERM


class StartupError(BanguiError):
    """The daemon cannot start; the message says why in one sentence."""


def bus_for(config: Config) -> MessageBus:
    """Return an unconnected bus for config's `dbus.bus` value."""
    where = config.dbus.bus
    if where == "system":
        return MessageBus(bus_type=BusType.SYSTEM)
    if where == "session":
        return MessageBus(bus_type=BusType.SESSION)
    return MessageBus(bus_address=where)


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
        self.archive: Archive | None = None
        self.bus: MessageBus | None = None

    def _cfg(self) -> Config:
        return self.config

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the process exit code."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_requested.set)
        try:
            return await self._run()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)

    async def _run(self) -> int:
        cfg = self.config
        self.notifier.status("opening the archive")
        self.archive = await Archive.open(cfg.archive.path)
        archive = self.archive
        client = Fail2banClient(cfg.fail2ban.socket, cfg.fail2ban.timeout)
        scheduler = Scheduler(self.hub, self.state.task_result)
        events = EventsRepository(archive)
        await events.load()
        sync = HistorySync(
            archive,
            lambda: self.config.fail2ban.database,
            lambda: self.config.blocklist.jail,
            self.hub,
            on_added=events.added,
        )
        await sync.load()
        # Resolving the host name may wait on DNS: keep it off the event loop.
        resolver = MmdbResolver(cfg.geo.country_db, cfg.geo.asn_db)
        fallback = (
            HttpGeoFallback(cfg.geo.http_fallback_url, cfg.geo.http_fallback_rate_per_minute)
            if cfg.geo.http_fallback
            else None
        )
        geo = GeoService(GeoCacheRepository(archive), resolver, fallback, hub=self.hub)
        await geo.load()
        safety = SafetyPolicy(lambda: self.config, await asyncio.to_thread(host_addresses))
        bans = BanService(
            client,
            self.state,
            lambda: self.config.blocklist.jail,
            safety.checker,
            before_unban=sync.capture_ip,
        )
        history = HistoryService(events, bans.origin, lambda: scheduler.poke(history_sync.NAME))
        purge = HistoryPurge(events, lambda: self.config.archive.retention_days)
        status = StatusService(
            self.state,
            bans,
            archived_events=lambda: _value(events.count),
            last_history_sync=lambda: _value(sync.last_sync),
            geo_cache_entries=lambda: _value(geo.entries),
        )

        async def geo_addresses() -> list[str]:
            # Banned first: they get the HTTP fallback's quota first.
            recent = await events.distinct_ips_since(int(time.time()) - GEO_RECENT, 20_000)
            return bans.banned_ips() + recent

        importer = Importer(
            archive,
            client,
            self.hub,
            lambda: self.config.blocklist,
            lambda: self.config.fail2ban.timeout,
            safety.host_addresses,
        )
        blocklists = BlocklistService(importer)
        watch = BanWatch(bans, self.hub, [history.record_diff], quiet_jail=importer.quiet_jail)
        tasks = cfg.tasks
        scheduler.add(
            ban_watch.NAME, tasks.ban_watch, watch.run, timeout=cfg.fail2ban.timeout * 3, quiet=True
        )
        scheduler.add(history_sync.NAME, tasks.history_sync, sync.run, timeout=3600)
        scheduler.add(history_purge.NAME, tasks.history_purge, purge.run, timeout=3600)
        scheduler.add(
            blocklist_import.NAME,
            tasks.blocklist_import,
            BlocklistImport(blocklists).run,
            timeout=6 * 3600,
        )
        scheduler.add(
            geo_resolve.NAME, tasks.geo_resolve, GeoResolve(geo, geo_addresses).run, timeout=600
        )
        scheduler.add(
            geo_cache_cleanup.NAME,
            tasks.geo_cache_cleanup,
            GeoCacheCleanup(geo, lambda: self.config.geo.retention_days).run,
            timeout=3600,
        )

        self.notifier.status("connecting to D-Bus")
        bus = bus_for(cfg)
        try:
            await bus.connect()
        except Exception as exc:
            raise StartupError(f"cannot connect to the {cfg.dbus.bus} D-Bus: {exc}") from exc
        self.bus = bus
        bus.add_message_handler(remember_message)
        auth = Authorizer(bus, lambda: self.config.dbus.admin_group)
        pump = SignalPump(bus)
        core = CoreInterface(self.state, bans, scheduler, status, auth, geo=geo.fields)
        interfaces = (
            core,
            HistoryInterface(history),
            BlocklistsInterface(blocklists, auth),
            GeoInterface(geo),
        )
        for iface in interfaces:
            iface.connect_signals(pump)
            bus.export(OBJECT_PATH, iface)
        self.hub.subscribe(pump.publish)
        reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            bus.disconnect()
            raise StartupError(f"{BUS_NAME} is already owned on the bus by another process")
        pump.start()
        # One bounded refresh first, so READY comes with a true State and jail list.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(bans.refresh(), cfg.fail2ban.timeout)
        scheduler.start()
        self.state.set_phase(RUNNING)
        self.notifier.ready(f"serving {BUS_NAME}")
        log.info("daemon_ready", bus=cfg.dbus.bus, name=BUS_NAME, archive=cfg.archive.path)

        background = [
            asyncio.create_task(self._watchdog(), name="watchdog"),
            asyncio.create_task(self._status_lines(status), name="status-lines"),
            asyncio.create_task(self._reloader(scheduler), name="reloader"),
        ]
        disconnected = asyncio.create_task(bus.wait_for_disconnect(), name="bus-watch")  # type: ignore[no-untyped-call]
        stopping = asyncio.create_task(self._stop.wait(), name="stop-wait")
        done, _ = await asyncio.wait({disconnected, stopping}, return_when=asyncio.FIRST_COMPLETED)
        exit_code = 0
        if disconnected in done:
            log.error("dbus_connection_lost")
            exit_code = 1
        log.info("daemon_stopping")
        self.state.set_phase(STOPPING)
        self.notifier.stopping()
        for task in (*background, stopping, disconnected):
            task.cancel()
        try:
            await asyncio.wait_for(scheduler.stop(), STOP_BUDGET / 2)
        except TimeoutError:
            log.warning("tasks_not_stopped_in_time")
        if exit_code == 0:
            await pump.flush(STOP_BUDGET / 4)
        await pump.stop()
        with contextlib.suppress(Exception):
            await geo.flush()
        if fallback is not None:
            await fallback.close()
        resolver.close()
        await client.close()
        if exit_code == 0:
            bus.disconnect()
        await self.archive.close()
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

    async def _reloader(self, scheduler: Scheduler) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            self.notifier.reloading()
            self.reload(scheduler)
            self.notifier.ready("configuration reloaded")

    def reload(self, scheduler: Scheduler) -> None:
        """Re-read the config file; apply what can change live, keep the rest."""
        try:
            new = load_config(self._config_path)
        except ConfigError as exc:
            log.error("config_reload_failed", error=str(exc))
            return
        needs_restart = [
            key
            for key, old_value, new_value in (
                ("fail2ban", self.config.fail2ban, new.fail2ban),
                ("archive.path", self.config.archive.path, new.archive.path),
                ("dbus.bus", self.config.dbus.bus, new.dbus.bus),
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
            )
        configure_logging(new.log.level, new.log.format)
        for name in scheduler.names():
            interval = getattr(new.tasks, name, None)
            if isinstance(interval, int | float):
                scheduler.set_interval(name, float(interval))
        self.config = new
        log.info("config_reloaded", path=self._config_path)


async def _value(value: int) -> int:
    return value


def run_daemon(config: Config, config_path: str | None) -> int:
    """Entry point used by the command line: run the loop, map failures to exit codes."""
    configure_logging(config.log.level, config.log.format)
    try:
        return asyncio.run(Daemon(config, config_path).run())
    except BanguiError as exc:
        log.error("daemon_start_failed", error=str(exc))
        return 1
