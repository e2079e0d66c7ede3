"""Plain records shared by services, tasks and the D-Bus edge."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ORIGIN_BLOCKLIST = "blocklist"
ORIGIN_SELFBLOCK = "selfblock"


@dataclass(frozen=True)
class JailInfo:
    name: str
    currently_banned: int
    total_banned: int
    currently_failed: int
    total_failed: int


@dataclass(frozen=True)
class ActiveBan:
    jail: str
    ip: str
    timeofban: int
    bantime: int  # seconds, -1 = permanent

    @property
    def expires(self) -> int:
        """Unix time the ban ends, -1 for a permanent ban."""
        return -1 if self.bantime < 0 else self.timeofban + self.bantime


@dataclass(frozen=True)
class GeoFields:
    country_code: str = ""
    asn: str = ""
    org: str = ""


NO_GEO = GeoFields()


TaskResult = Mapping[str, object]  # what a task run returns, shown by RunTask


@dataclass(frozen=True)
class JobInfo:
    """One scheduled task as ListTasks and the metrics show it."""

    name: str
    interval: float
    running: bool
    last_run: int
    last_status: str
    next_run: int
    runs: int
    failures: int
    last_duration: float = 0.0
