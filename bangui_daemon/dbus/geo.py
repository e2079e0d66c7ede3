"""org.bangui.Daemon1.Geo: country/ASN of addresses, from the MMDB and the geo cache."""

from __future__ import annotations

from dbus_fast import Variant
from dbus_fast.service import ServiceInterface

from bangui_daemon.dbus.names import GEO_INTERFACE
from bangui_daemon.dbus.shim import dbus_method, dbus_read_property
from bangui_daemon.dbus.signals import SignalPump
from bangui_daemon.events import PropertiesChanged
from bangui_daemon.services.geo import GeoAnswer, GeoService


def geo_record(answer: GeoAnswer) -> dict[str, Variant]:
    """One answer with the contract's field types (unknown fields are "")."""
    return {
        "ip": Variant("s", answer.ip),
        "country_code": Variant("s", answer.country_code),
        "country_name": Variant("s", answer.country_name),
        "asn": Variant("s", answer.asn),
        "org": Variant("s", answer.org),
        "source": Variant("s", answer.source),
    }


RECORD_CACHE = 50_000


class GeoInterface(ServiceInterface):
    """Read-only lookups; the HTTP fallback is never used from here (see GeoService)."""

    def __init__(self, geo: GeoService) -> None:
        super().__init__(GEO_INTERFACE)
        self._geo = geo
        # Building six Variants costs more than the lookup itself: reuse the record of
        # an answer seen before (answers are frozen, so equal answers share one).
        self._records: dict[GeoAnswer, dict[str, Variant]] = {}

    def _record(self, answer: GeoAnswer) -> dict[str, Variant]:
        record = self._records.get(answer)
        if record is None:
            if len(self._records) >= RECORD_CACHE:
                self._records.clear()
            record = self._records[answer] = geo_record(answer)
        return record

    def connect_signals(self, pump: SignalPump) -> None:
        pump.on(PropertiesChanged, self._properties_changed)

    def _properties_changed(self, event: PropertiesChanged) -> None:
        if event.interface == "geo":
            self.emit_properties_changed(dict(event.values))

    @dbus_read_property("CacheEntries", "x")
    def cache_entries(self) -> int:
        return self._geo.entries

    @dbus_method("LookupIp", args=("s",), returns="a{sv}")
    async def lookup_ip(self, ip: str) -> dict[str, Variant]:
        return self._record(await self._geo.lookup_ip(ip))

    @dbus_method("LookupIps", args=("as",), returns="aa{sv}")
    async def lookup_ips(self, ips: list[str]) -> list[dict[str, Variant]]:
        record = self._record
        return [record(a) for a in await self._geo.lookup_ips(ips)]
