"""What the daemon knows, as Prometheus metric families.

Two sets. The `f2b_*` families carry the names and labels of the common fail2ban
exporter (hctrdev/fail2ban-prometheus-exporter), so existing dashboards and alerts
keep working. The `bangui_*` families say what no exporter can: events counted from
the archive (they survive fail2ban's purge and restarts of either daemon), blocklist
sources, tasks, signals, and active bans per country (the top 20 plus "other").
No label value is ever an address: per-address labels have taken Prometheus servers
down.

A scrape reads memory and the archive's two small tables (event totals, sources): it
never waits on fail2ban's single-threaded socket. What needs fail2ban (each jail's
bantime, findtime, maxretry) and what costs a walk over every active ban (the
per-country counts) is refreshed by the `metrics` task.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from bangui_daemon.archive.sources_repo import SourceRow
from bangui_daemon.errors import ConfigError
from bangui_daemon.events import Event, PropertiesChanged, TaskFinished
from bangui_daemon.fail2ban.client import Fail2banClient, JailSettings
from bangui_daemon.metrics.exposition import write_textfile
from bangui_daemon.metrics.families import Family
from bangui_daemon.services.bans import BanService
from bangui_daemon.services.daemon_state import DaemonState
from bangui_daemon.services.geo import GeoService

log = structlog.get_logger(__name__)

TOP_COUNTRIES = 20
COUNTRY_CHUNK = 5000
OTHER = "other"
UNKNOWN_COUNTRY = "unknown"
# f2b_errors{type}: the exporter's two kinds, counted from the tasks that meet them.
ERROR_TYPE_OF_TASK = {"ban_watch": "socket", "history_sync": "db"}


@dataclass(frozen=True)
class TaskStat:
    """A scheduler job as the metrics see it."""

    name: str
    runs: int
    failures: int
    running: bool
    last_duration: float


class MetricsService:
    """Builds the families; `refresh()` updates the parts that cost a socket or a walk."""

    def __init__(
        self,
        state: DaemonState,
        bans: BanService,
        geo: GeoService,
        client: Fail2banClient,
        lifetime_totals: Callable[[], Awaitable[list[tuple[str, str, str, int]]]],
        sources: Callable[[], Awaitable[list[SourceRow]]],
        tasks: Callable[[], Sequence[TaskStat]],
    ) -> None:
        self._state = state
        self._bans = bans
        self._geo = geo
        self._client = client
        self._lifetime_totals = lifetime_totals
        self._sources = sources
        self._tasks = tasks
        self._settings: dict[str, JailSettings] = {}
        self._countries: list[tuple[str, int]] = []
        self._errors: Counter[str] = Counter({"socket": 0, "db": 0})
        self._signals: Counter[str] = Counter()

    # ---- inputs -------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        """EventHub subscriber: count signals sent and the tasks' fail2ban errors."""
        name = "PropertiesChanged" if isinstance(event, PropertiesChanged) else type(event).__name__
        self._signals[name] += 1
        if isinstance(event, TaskFinished) and event.status != "ok":
            kind = ERROR_TYPE_OF_TASK.get(event.name)
            if kind is not None:
                self._errors[kind] += 1

    async def refresh(self) -> dict[str, int]:
        """Re-read each jail's settings from fail2ban and recount bans per country."""
        settings: dict[str, JailSettings] = {}
        if self._state.fail2ban_connected:
            for jail in self._bans.jail_names:
                settings[jail] = await self._client.jail_settings(jail)
        self._settings = settings
        per_country: Counter[str] = Counter()
        ips = self._bans.banned_ips()
        for start in range(0, len(ips), COUNTRY_CHUNK):
            if start:
                await asyncio.sleep(0)  # 100,000 bans: let scrapes and signals in between
            per_country.update(
                self._geo.fields(ip).country_code or UNKNOWN_COUNTRY
                for ip in ips[start : start + COUNTRY_CHUNK]
            )
        top = per_country.most_common(TOP_COUNTRIES)
        rest = sum(per_country.values()) - sum(n for _, n in top)
        self._countries = [*top, *([(OTHER, rest)] if rest else [])]
        return {"jails": len(settings), "countries": len(per_country)}

    # ---- output -------------------------------------------------------------

    async def write_textfile(self, path: str) -> int:
        """Write every family to `path` atomically; the bytes written."""
        families = await self.families()
        try:
            return await asyncio.to_thread(write_textfile, path, families)
        except OSError as exc:
            raise ConfigError(
                f"metrics.textfile: cannot write {path}: {exc.strerror or exc}"
            ) from None

    async def families(self) -> list[Family]:
        """Every family, in a stable order."""
        return [
            *self._fail2ban_families(),
            *self._event_families(await self._lifetime_totals()),
            *self._source_families(await self._sources()),
            *self._daemon_families(),
        ]

    def _fail2ban_families(self) -> list[Family]:
        up = self._state.fail2ban_connected
        jails = self._bans.jails() if up else []
        out = [
            Family(
                "f2b_up", "Whether fail2ban answered the last poll (1) or not (0).", "gauge"
            ).add(1 if up else 0),
            Family(
                "f2b_errors",
                "Errors met talking to fail2ban since the daemon started, by type "
                "(socket: the ban watch; db: the history sync).",
                "gauge",
                ("type",),
            ),
            Family("f2b_jail_count", "Jails fail2ban runs.", "gauge").add(len(jails)),
            Family(
                "f2b_version",
                "fail2ban's version, as the label.",
                "gauge",
                ("version",),
            ),
        ]
        for kind in sorted(self._errors):
            out[1].add(self._errors[kind], kind)
        if up:
            out[3].add(1, self._state.fail2ban_version)
        per_jail = [
            ("f2b_jail_banned_current", "Addresses banned now.", "currently_banned"),
            ("f2b_jail_failed_current", "Addresses with failures counted now.", "currently_failed"),
            ("f2b_jail_banned_total", "Bans since fail2ban started.", "total_banned"),
            ("f2b_jail_failed_total", "Failures since fail2ban started.", "total_failed"),
        ]
        for name, text, attr in per_jail:
            family = Family(name, f"{text} Per jail, from fail2ban.", "gauge", ("jail",))
            for jail in jails:
                family.add(getattr(jail, attr), jail.name)
            out.append(family)
        config = [
            ("f2b_config_jail_ban_time", "Seconds a ban lasts (-1 = for ever).", "bantime"),
            ("f2b_config_jail_find_time", "Seconds failures are counted over.", "findtime"),
            ("f2b_config_jail_max_retries", "Failures that lead to a ban.", "maxretry"),
        ]
        for name, text, attr in config:
            family = Family(name, f"{text} Per jail.", "gauge", ("jail",))
            for jail in jails:
                settings = self._settings.get(jail.name)
                if settings is not None:
                    family.add(getattr(settings, attr), jail.name)
            out.append(family)
        return out

    def _event_families(self, totals: list[tuple[str, str, str, int]]) -> list[Family]:
        events = Family(
            "bangui_ban_events",
            "Ban and unban events ever archived, per jail, action and origin "
            "(kept across fail2ban's purge and restarts).",
            "counter",
            ("jail", "action", "origin"),
        )
        for jail, action, origin, count in totals:
            events.add(count, jail, action, origin)
        active = Family(
            "bangui_active_bans_by_country",
            f"Active bans per country: the top {TOP_COUNTRIES}, the rest as "
            f'"{OTHER}", unresolved addresses as "{UNKNOWN_COUNTRY}".',
            "gauge",
            ("country",),
        )
        for country, count in self._countries:
            active.add(count, country)
        return [events, active]

    def _source_families(self, sources: list[SourceRow]) -> list[Family]:
        entries = Family(
            "bangui_blocklist_source_entries",
            "Addresses and networks the source lists now (as last imported).",
            "gauge",
            ("source",),
        )
        imported = Family(
            "bangui_blocklist_source_last_imported",
            "Addresses the source's last import banned.",
            "gauge",
            ("source",),
        )
        last_run = Family(
            "bangui_blocklist_source_last_run_timestamp_seconds",
            "When the source was last imported (0 = never).",
            "gauge",
            ("source",),
        )
        ok = Family(
            "bangui_blocklist_source_last_import_ok",
            "1 when the source's last import completed or was unchanged, else 0.",
            "gauge",
            ("source",),
        )
        enabled = Family(
            "bangui_blocklist_source_enabled", "1 when the source is enabled.", "gauge", ("source",)
        )
        for src in sources:
            entries.add(src.listed, src.name)
            imported.add(src.last_imported, src.name)
            last_run.add(src.last_run, src.name)
            ok.add(1 if src.last_status in ("completed", "unchanged") else 0, src.name)
            enabled.add(1 if src.enabled else 0, src.name)
        return [entries, imported, last_run, ok, enabled]

    def _daemon_families(self) -> list[Family]:
        runs = Family("bangui_task_runs", "Task runs since start.", "counter", ("task",))
        failures = Family(
            "bangui_task_failures", "Task runs that failed or timed out.", "counter", ("task",)
        )
        duration = Family(
            "bangui_task_last_duration_seconds", "How long the last run took.", "gauge", ("task",)
        )
        running = Family("bangui_task_running", "1 while the task runs.", "gauge", ("task",))
        for task in self._tasks():
            runs.add(task.runs, task.name)
            failures.add(task.failures, task.name)
            duration.add(task.last_duration, task.name)
            running.add(1 if task.running else 0, task.name)
        signals = Family(
            "bangui_dbus_signals", "D-Bus signals sent since start.", "counter", ("signal",)
        )
        for name in sorted(self._signals):
            signals.add(self._signals[name], name)
        info = Family(
            "bangui_info", "The daemon's version, as the label.", "gauge", ("version",)
        ).add(1, self._state.version)
        started = Family("bangui_start_time_seconds", "When the daemon started.", "gauge").add(
            self._state.started_at
        )
        active = Family("bangui_active_bans", "Active bans in every jail.", "gauge").add(
            self._bans.active_bans()
        )
        return [runs, failures, duration, running, signals, active, info, started]
