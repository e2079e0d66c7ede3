"""Builds every repository, client, service and task the daemon runs.

Kept apart from the lifecycle (app.py) and from the D-Bus edge (dbus/server.py):
this is the one place that knows which piece needs which. Every component reads
settings through `config()`, so a SIGHUP reload reaches it without a rebuild.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from bangui_daemon.archive.db import Archive, Migration
from bangui_daemon.archive.events_repo import EventsRepository
from bangui_daemon.archive.geo_repo import GeoCacheRepository
from bangui_daemon.archive.import_runs_repo import ImportRunsRepository
from bangui_daemon.archive.sources_repo import SourcesRepository
from bangui_daemon.blocklist.host import HostAddresses, resolve_hostname
from bangui_daemon.blocklist.importer import Importer
from bangui_daemon.blocklist.safety import SafetyPolicy
from bangui_daemon.config import Config
from bangui_daemon.crowdsec.lapi import LapiClient
from bangui_daemon.errors import ArchiveOpenError, ConfigError
from bangui_daemon.events import EventHub
from bangui_daemon.fail2ban.client import Fail2banClient
from bangui_daemon.fail2ban.db_changes import FileChanges
from bangui_daemon.fail2ban.db_tail import BanRowTail
from bangui_daemon.geo.http_fallback import HttpGeoFallback
from bangui_daemon.geo.lookup import MmdbResolver
from bangui_daemon.services.ban_watch import BanWatch, DiffListener
from bangui_daemon.services.bans import BanService
from bangui_daemon.services.blocklists import BlocklistService
from bangui_daemon.services.crowdsec import SOURCE as CROWDSEC_SOURCE
from bangui_daemon.services.crowdsec import CrowdsecBridge
from bangui_daemon.services.daemon_state import DaemonState
from bangui_daemon.services.fail2ban_setup import Fail2banSetupCheck
from bangui_daemon.services.geo import GeoService
from bangui_daemon.services.history import HistoryService
from bangui_daemon.services.history_sync import HistorySync
from bangui_daemon.services.metrics import MetricsService, TaskStat
from bangui_daemon.services.status import StatusService
from bangui_daemon.services.tasks import TaskService
from bangui_daemon.tasks import ban_watch, blocklist_import, geo_resolve, history_sync, metrics
from bangui_daemon.tasks.ban_watch import BanWatchTask
from bangui_daemon.tasks.blocklist_import import BlocklistImport
from bangui_daemon.tasks.crowdsec import PULL, PUSH, PUSH_INTERVAL, CrowdsecPull, CrowdsecPush
from bangui_daemon.tasks.geo_resolve import GeoResolve
from bangui_daemon.tasks.history_sync import HistorySyncTask
from bangui_daemon.tasks.metrics import MetricsRefresh
from bangui_daemon.tasks.retention import (
    GEO_CACHE_CLEANUP,
    HISTORY_PURGE,
    GeoCacheCleanup,
    HistoryPurge,
)
from bangui_daemon.tasks.scheduler import Scheduler

GEO_RECENT = 7 * 86400  # archived addresses younger than this are kept resolved
GEO_RECENT_LIMIT = 20_000


@dataclass
class Components:
    """Everything the D-Bus edge and the lifecycle need to reach."""

    archive: Archive
    client: Fail2banClient
    scheduler: Scheduler
    tasks: TaskService
    bans: BanService
    watch: BanWatch
    status: StatusService
    history: HistoryService
    blocklists: BlocklistService
    geo: GeoService
    resolver: MmdbResolver
    fallback: HttpGeoFallback | None
    metrics: MetricsService
    crowdsec: CrowdsecBridge | None

    async def close(self) -> None:
        """Persist what is pending and release files and sockets (after the tasks stop)."""
        await self.watch.stop()
        with contextlib.suppress(Exception):
            await self.geo.flush()
        if self.crowdsec is not None:
            await self.crowdsec.close()
        if self.fallback is not None:
            await self.fallback.close()
        self.resolver.close()
        await self.client.close()
        await self.archive.close()


async def _value(value: int) -> int:
    return value


async def build(  # noqa: PLR0915 - one flat page that says which piece needs which
    config: Callable[[], Config],
    hub: EventHub,
    state: DaemonState,
    on_migration: Callable[[Migration], None] = lambda _m: None,
) -> Components:
    """Open the archive (migrating it) and build the rest on top of it."""
    cfg = config()
    try:
        archive = await Archive.open(cfg.archive.path, on_migration=on_migration)
    except ArchiveOpenError as exc:
        raise ConfigError(f"archive.path: {exc}") from None
    client = Fail2banClient(cfg.fail2ban.socket, cfg.fail2ban.timeout)
    scheduler = Scheduler(hub, state.task_result)

    events = EventsRepository(archive)
    await events.load()
    sync = HistorySync(
        archive,
        events,
        lambda: config().fail2ban.database,
        lambda: config().blocklist.jail,
        hub,
    )
    await sync.load()

    resolver = MmdbResolver(cfg.geo.country_db, cfg.geo.asn_db)
    fallback = (
        HttpGeoFallback(cfg.geo.http_fallback_url, cfg.geo.http_fallback_rate_per_minute)
        if cfg.geo.http_fallback
        else None
    )
    geo = GeoService(GeoCacheRepository(archive), resolver, fallback, hub=hub)
    await geo.load()

    # Resolving the host name may wait on DNS: once, off the event loop. The
    # interfaces' addresses are re-read at every decision (see SafetyPolicy).
    host = HostAddresses(await asyncio.to_thread(resolve_hostname))
    safety = SafetyPolicy(lambda: config().blocklist, client, host)
    bans = BanService(
        client,
        state,
        lambda: config().blocklist.jail,
        safety.refusal,
        before_unban=sync.capture_ip,
        after_change=lambda: scheduler.poke(ban_watch.NAME),
    )
    history = HistoryService(events, bans.origin, lambda: scheduler.poke(history_sync.NAME))
    status = StatusService(
        state,
        bans,
        archived_events=lambda: _value(events.count),
        last_history_sync=lambda: _value(sync.last_sync),
        geo_cache_entries=lambda: _value(geo.entries),
    )
    importer = Importer(
        archive,
        client,
        hub,
        lambda: config().blocklist,
        lambda: config().fail2ban.timeout,
        safety,
        fail2ban_db=lambda: config().fail2ban.database,
    )
    blocklists = BlocklistService(
        importer, SourcesRepository(archive), ImportRunsRepository(archive)
    )

    async def geo_addresses() -> list[str]:
        # Banned first: they get the HTTP fallback's quota first.
        since = int(time.time()) - GEO_RECENT
        return bans.banned_ips() + await events.distinct_ips_since(since, GEO_RECENT_LIMIT)

    listeners: list[DiffListener] = [history.record_diff, Fail2banSetupCheck(client, config)]
    crowdsec = None
    if cfg.crowdsec.lapi_url:
        crowdsec = CrowdsecBridge(
            LapiClient(cfg.crowdsec.lapi_url, cfg.blocklist.timeout),
            lambda: config().crowdsec,
            blocklists,
            lambda: config().blocklist.jail,
        )
        listeners.append(crowdsec.on_diff)
    watch = BanWatch(
        bans,
        BanRowTail(cfg.fail2ban.database),
        FileChanges(cfg.fail2ban.database),
        hub,
        geo.resolve_now,
        lambda: config().tasks.ban_watch,
        listeners=listeners,
        quiet_jail=importer.quiet_jail,
        busy_jail=importer.busy_jail,
    )
    tasks = cfg.tasks
    scheduler.add(
        ban_watch.NAME,
        tasks.ban_watch,
        BanWatchTask(watch).run,
        timeout=cfg.fail2ban.timeout * 3,
        quiet=True,
    )
    syncing = HistorySyncTask(sync)
    scheduler.add(history_sync.NAME, tasks.history_sync, syncing.run, timeout=3600)
    purge = HistoryPurge(history, lambda: config().archive.retention_days)
    scheduler.add(HISTORY_PURGE, tasks.history_purge, purge.run, timeout=3600)
    importing = BlocklistImport(
        blocklists,
        lambda: config().tasks.blocklist_import,
        lambda seconds: scheduler.set_interval(blocklist_import.NAME, seconds),
    )
    scheduler.add(blocklist_import.NAME, tasks.blocklist_import, importing.run, timeout=6 * 3600)
    blocklists.on_sources_changed = importing.adjust
    await blocklists.reconcile(cfg.blocklist.source)
    scheduler.add(
        geo_resolve.NAME, tasks.geo_resolve, GeoResolve(geo, geo_addresses).run, timeout=600
    )
    cleanup = GeoCacheCleanup(geo, lambda: config().geo.retention_days)
    scheduler.add(GEO_CACHE_CLEANUP, tasks.geo_cache_cleanup, cleanup.run, timeout=3600)

    def task_stats() -> list[TaskStat]:
        return [
            TaskStat(j.name, j.runs, j.failures, j.running, j.last_duration)
            for j in scheduler.info()
        ]

    metrics_service = MetricsService(
        state, bans, geo, client, events.lifetime_totals, blocklists.list_sources, task_stats
    )
    hub.subscribe(metrics_service.on_event)
    if cfg.metrics.enabled:
        refresh = MetricsRefresh(metrics_service, lambda: config().metrics.textfile)
        scheduler.add(
            metrics.NAME, cfg.metrics.textfile_interval, refresh.run, timeout=600, quiet=True
        )
    if crowdsec is None:
        await blocklists.remove_orphan_feed(CROWDSEC_SOURCE)
    else:
        if cfg.crowdsec.pull:
            await crowdsec.start()
            scheduler.add(
                PULL, cfg.crowdsec.pull_interval, CrowdsecPull(crowdsec).run, timeout=6 * 3600
            )
        if cfg.crowdsec.push:
            scheduler.add(PUSH, PUSH_INTERVAL, CrowdsecPush(crowdsec).run, timeout=300, quiet=True)
    return Components(
        archive,
        client,
        scheduler,
        TaskService(scheduler),
        bans,
        watch,
        status,
        history,
        blocklists,
        geo,
        resolver,
        fallback,
        metrics_service,
        crowdsec,
    )
