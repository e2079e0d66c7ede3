"""Country and ASN answers from MaxMind MMDB files (Country or City, plus ASN).

Why it is shaped this way:

- The daemon must work with empty geo fields when no database is installed, so a
  missing, unreadable or wrong-type file never raises: its fields stay empty and ONE
  warning is logged per problem and file version, never one per lookup.
- Updaters (``geoipupdate``, cron jobs) replace the files while the daemon runs, so
  every lookup first calls :meth:`MmdbResolver.maybe_reload`, which costs at most one
  ``os.stat`` per file every ``check_interval`` seconds and reopens a file whose
  device, inode, size or mtime changed. Replace files atomically (write a temporary
  file, then ``rename``): the C extension memory-maps the file, and a file rewritten in
  place under a reader can be seen half-written.
- A cache wants to store one entry per network and to throw away answers of an old
  build, hence :attr:`GeoAnswer.network` and :meth:`MmdbResolver.database_build_id`.

Works with geoip2 2.9 / maxminddb 2.1-2.2 (Debian bookworm) and geoip2 5.x /
maxminddb 3.x. Differences handled here:

- geoip2 >= 4 gives ``AddressNotFoundError.network`` and ``model.traits.network`` /
  ``ASN.network``; geoip2 2.9 has neither, so ``GeoAnswer.network`` is ``None`` there
  and a cache falls back to one entry per address.
- geoip2 2.9 reads ``metadata()`` on every lookup to check the database type; 5.x
  caches it. We pick the method (``city``/``country``/``asn``) once per opened file from
  ``metadata().database_type``, because calling the wrong one raises ``TypeError``.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal

import geoip2.database
import geoip2.errors
import maxminddb
import structlog

from bangui_daemon.errors import InvalidArgument, quote

__all__ = [
    "GEO_DATABASE_LOADED",
    "GEO_DATABASE_LOOKUP_FAILED",
    "GEO_DATABASE_MISSING",
    "GEO_DATABASE_NOT_CONFIGURED",
    "GEO_DATABASE_UNREADABLE",
    "GEO_DATABASE_WRONG_TYPE",
    "GeoAnswer",
    "GeoSource",
    "IPNetwork",
    "MmdbResolver",
    "normalise_ip",
]

log = structlog.get_logger()

GEO_DATABASE_NOT_CONFIGURED: Final = "geo_database_not_configured"
GEO_DATABASE_MISSING: Final = "geo_database_missing"
GEO_DATABASE_UNREADABLE: Final = "geo_database_unreadable"
GEO_DATABASE_WRONG_TYPE: Final = "geo_database_wrong_type"
GEO_DATABASE_LOADED: Final = "geo_database_loaded"
GEO_DATABASE_LOOKUP_FAILED: Final = "geo_database_lookup_failed"

GeoSource = Literal["mmdb", "api", "none", "cache"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Role = Literal["country", "asn"]

DEFAULT_CHECK_INTERVAL: Final = 5.0


@dataclass(frozen=True, slots=True)
class GeoAnswer:
    """What is known about one address.

    ``asn`` is ``"AS<number>"`` (``"AS29518"``) or ``""``: the D-Bus contract types it
    ``s``, and the prefixed form reads unambiguously in ``GetTop("asn")`` and tables.
    Unknown text fields are ``""``, never ``None``, because D-Bus has no null.

    ``source``: ``"mmdb"`` when at least one MMDB was consulted (even if it had no
    data: that negative holds for the whole build), ``"api"`` when the HTTP fallback
    answered or failed, ``"cache"`` when a cache served it, ``"none"`` when nothing was
    consulted (no database; or, from the HTTP fallback, "not attempted, retry later").

    ``network`` is the largest network the whole answer holds for (the narrower of the
    Country and ASN networks), so a cache may store one entry for it; ``None`` when it
    is not known (geoip2 2.9, the HTTP fallback, or a lookup error).
    """

    ip: str
    country_code: str = ""
    country_name: str = ""
    asn: str = ""
    org: str = ""
    source: GeoSource = "none"
    network: IPNetwork | None = None

    @property
    def found(self) -> bool:
        """True when a country or an AS is known for the address."""
        return bool(self.country_code or self.asn)


@dataclass(frozen=True, slots=True)
class _Part:
    """The fields one database contributed, and the network they hold for."""

    fields: dict[str, str]
    network: IPNetwork | None
    consulted: bool


_UNCONSULTED: Final = _Part({}, None, consulted=False)


class _Database:
    """One configured MMDB path: its open reader, file identity and warning state."""

    def __init__(self, role: Role, path: str, mode: int) -> None:
        self.role: Role = role
        self.path = path
        self.mode = mode
        self.reader: geoip2.database.Reader | None = None
        self.method: str = ""
        self.build: str = "absent"
        # File identity of the current reader, or of the last failed attempt, so an
        # unchanged file is not retried (and not warned about) on every check.
        self.identity: tuple[int, int, int, int] | None = None
        self.warned: set[tuple[str, tuple[int, int, int, int] | None]] = set()

    def warn_once(self, event: str, **fields: Any) -> None:
        """Log ``event`` once per (event, file version): repeated checks stay quiet."""
        key = (event, self.identity)
        if key in self.warned:
            return
        self.warned.add(key)
        log.warning(event, role=self.role, path=self.path, **fields)

    def check(self) -> bool:
        """Reopen the file if it changed since the last look; True when reopened."""
        if not self.path:
            self.warn_once(GEO_DATABASE_NOT_CONFIGURED)
            return False
        try:
            st = os.stat(self.path)
        except OSError as exc:
            # Keep a reader that is already open: its mapping outlives an unlink, and
            # a non-atomic updater may be halfway through delete-then-copy.
            self.identity = None
            self.warn_once(GEO_DATABASE_MISSING, error=exc.strerror or str(exc))
            return False
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if identity == self.identity:
            return False
        self.identity = identity
        return self._open()

    def _open(self) -> bool:
        try:
            reader = geoip2.database.Reader(self.path, mode=self.mode)
        except (OSError, ValueError, RuntimeError) as exc:
            # maxminddb.InvalidDatabaseError is a RuntimeError; a bad mode or an
            # empty file gives ValueError; permissions give OSError.
            self.warn_once(GEO_DATABASE_UNREADABLE, error=str(exc))
            return False
        meta = reader.metadata()
        db_type = str(meta.database_type)
        method = _method_for(self.role, db_type)
        if not method:
            reader.close()
            self.warn_once(GEO_DATABASE_WRONG_TYPE, database_type=db_type)
            return False
        old, self.reader = self.reader, reader
        self.method = method
        self.warned.clear()  # a later problem with this good file deserves a warning
        self.build = f"{db_type}@{int(meta.build_epoch)}"
        if old is not None:
            old.close()
        log.info(
            GEO_DATABASE_LOADED,
            role=self.role,
            path=self.path,
            database_type=db_type,
            build_epoch=int(meta.build_epoch),
        )
        return True

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
            self.build = "absent"

    def lookup(self, ip: str) -> _Part:
        """Fields of this database for ``ip``; never raises for a valid address."""
        reader = self.reader
        if reader is None:
            return _UNCONSULTED
        try:
            model = getattr(reader, self.method)(ip)
        except geoip2.errors.AddressNotFoundError as exc:
            # geoip2 >= 4 knows the largest empty network; 2.9 has no attribute.
            return _Part({}, getattr(exc, "network", None), consulted=True)
        except (ValueError, RuntimeError) as exc:
            # An IPv6 address in an IPv4-only tree (ValueError) or corrupt data
            # (InvalidDatabaseError): answer empty, say so once per file version.
            self.warn_once(GEO_DATABASE_LOOKUP_FAILED, error=str(exc))
            return _Part({}, None, consulted=True)
        if self.role == "asn":
            number = model.autonomous_system_number
            return _Part(
                {
                    "asn": f"AS{number}" if number is not None else "",
                    "org": model.autonomous_system_organization or "",
                },
                getattr(model, "network", None),
                consulted=True,
            )
        country = model.country
        if not country.iso_code:
            # No geolocated country (e.g. satellite or anycast networks): the
            # registered country is the best answer a fail2ban operator can use.
            country = model.registered_country
        return _Part(
            {"country_code": country.iso_code or "", "country_name": country.name or ""},
            getattr(model.traits, "network", None),
            consulted=True,
        )


def _method_for(role: Role, database_type: str) -> str:
    """The geoip2 Reader method for this database, or ``""`` when it cannot serve
    ``role``. geoip2 checks the same substrings and raises ``TypeError`` otherwise."""
    if role == "asn":
        if "GeoLite2-ASN" in database_type:
            return "asn"
        return "isp" if "GeoIP2-ISP" in database_type else ""
    if "City" in database_type:
        return "city"
    if "Country" in database_type:
        return "country"
    return "enterprise" if "Enterprise" in database_type else ""


def _narrower(a: IPNetwork | None, b: IPNetwork | None) -> IPNetwork | None:
    """The network both answers hold for: both contain the address, so it is the
    longer prefix (same family, as both come from one address string)."""
    if a is None or b is None:
        return None
    return a if a.prefixlen >= b.prefixlen else b


class MmdbResolver:
    """Resolves addresses with a Country/City MMDB and an ASN MMDB.

    An empty path means "not configured". Lookups are synchronous and fast (the C
    extension when available, ``MODE_AUTO``); a lock makes them safe to run in a
    worker thread while another thread triggers a reload.
    """

    def __init__(
        self,
        country_db: str,
        asn_db: str,
        *,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        mode: int = maxminddb.MODE_AUTO,
    ) -> None:
        self._dbs = (_Database("country", country_db, mode), _Database("asn", asn_db, mode))
        self._check_interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._next_check = 0.0
        self.maybe_reload(force=True)

    def maybe_reload(self, *, force: bool = False) -> bool:
        """Reopen changed files; True when any was (re)opened.

        Without ``force`` it stats the files at most once per ``check_interval``
        (by the injected clock), so calling it before every lookup stays cheap.
        """
        with self._lock:
            return self._maybe_reload_locked(force)

    def _maybe_reload_locked(self, force: bool) -> bool:
        now = self._clock()
        if not force and now < self._next_check:
            return False
        self._next_check = now + self._check_interval
        changed = False
        for db in self._dbs:
            changed = db.check() or changed
        return changed

    def database_build_id(self) -> str:
        """Identifies the open databases, e.g.
        ``"country=GeoLite2-Country@1770245369;asn=absent"``: answers cached under a
        different id came from other data and should be looked up again."""
        with self._lock:
            return ";".join(f"{db.role}={db.build}" for db in self._dbs)

    def lookup(self, ip: str) -> GeoAnswer:
        """Answer for one address. Raises InvalidArgument for a malformed address."""
        return self.lookup_many([ip])[0]

    def lookup_many(self, ips: Iterable[str]) -> list[GeoAnswer]:
        """Answers in the order asked. Validates every address before looking any up,
        so a malformed one raises InvalidArgument without partial work."""
        addresses = [normalise_ip(ip) for ip in ips]
        with self._lock:
            self._maybe_reload_locked(force=False)
            return [self._lookup_locked(ip) for ip in addresses]

    def _lookup_locked(self, ip: str) -> GeoAnswer:
        country, asn = (db.lookup(ip) for db in self._dbs)
        if not (country.consulted or asn.consulted):
            return GeoAnswer(ip=ip, source="none")
        if country.consulted and asn.consulted:
            network = _narrower(country.network, asn.network)
        else:
            network = country.network if country.consulted else asn.network
        return GeoAnswer(ip=ip, source="mmdb", network=network, **country.fields, **asn.fields)

    def close(self) -> None:
        """Close the readers; later lookups answer empty until maybe_reload(force)."""
        with self._lock:
            for db in self._dbs:
                db.close()
                db.identity = None

    def __enter__(self) -> MmdbResolver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def normalise_ip(ip: str) -> str:
    """Canonical text of ``ip``; IPv4-mapped addresses keep the dotted tail on every
    Python (3.11 prints ``::ffff:5102:45a0``, 3.13 ``::ffff:81.2.69.160``)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        raise InvalidArgument(f"{quote(ip)} is not an IP address.") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return f"::ffff:{addr.ipv4_mapped}"
    return str(addr)
