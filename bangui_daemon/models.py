"""Plain records shared by services, tasks and the D-Bus edge."""

from __future__ import annotations

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
