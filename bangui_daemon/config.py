"""The daemon's configuration: one TOML file, every key optional, every problem named.

Each TOML section is a frozen dataclass whose fields carry their own validator, so the
parser, the error messages and `dump_config` share one schema. Validation collects
every problem before failing: an operator fixing a config should see all of them in
one `--check-config` run, not one per restart.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar, cast
from urllib.parse import urlsplit

from bangui_daemon.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "ArchiveConfig",
    "BlocklistConfig",
    "BlocklistSource",
    "Config",
    "CrowdsecConfig",
    "DbusConfig",
    "Fail2banConfig",
    "GeoConfig",
    "LogConfig",
    "LogFormat",
    "LogLevel",
    "MetricsConfig",
    "TasksConfig",
    "dump_config",
    "load_config",
    "parse_config",
    "split_listen",
]

DEFAULT_CONFIG_PATH: Final = "/etc/bangui/bangui.toml"

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "logfmt", "console"]
LOG_LEVELS: Final[tuple[LogLevel, ...]] = ("debug", "info", "warning", "error")
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("auto", "json", "logfmt", "console")

# Transports of the D-Bus specification's server address syntax.
_DBUS_TRANSPORTS: Final = frozenset(
    {"unix", "tcp", "nonce-tcp", "unixexec", "launchd", "autolaunch", "systemd"}
)
_JAIL_NAME: Final = re.compile(r"[A-Za-z0-9_.@:+-]+")
_CHECK: Final = "bangui_check"

T = TypeVar("T")


class _InvalidError(Exception):
    """One value failed its check; the message completes `section.key: ...`."""


Check = Callable[[object], object]


def _show(value: object) -> str:
    """Render a value as the operator wrote it (TOML spelling), truncated."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, dict):
        text = "a table"
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _integer(minimum: int, maximum: int | None = None) -> Check:
    if maximum is None:
        expected = f"must be an integer >= {minimum}"
    else:
        expected = f"must be an integer from {minimum} to {maximum}"

    def check(value: object) -> object:
        # bool is an int subclass, but `max_entries = true` is a mistake, not 1.
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < minimum
            or (maximum is not None and value > maximum)
        ):
            raise _InvalidError(f"{expected}, got {_show(value)}")
        return value

    return check


def _positive_number(value: object) -> object:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise _InvalidError(f"must be a number > 0 (seconds), got {_show(value)}")
    return value


def _boolean(value: object) -> object:
    if not isinstance(value, bool):
        raise _InvalidError(f"must be true or false, got {_show(value)}")
    return value


def _nonempty_string(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise _InvalidError(f"must be a non-empty string, got {_show(value)}")
    return value


def _absolute_path(value: object) -> str:
    path = _nonempty_string(value)
    if not os.path.isabs(path):
        # The daemon runs with cwd "/" under systemd; a relative path is a mistake.
        raise _InvalidError(f"must be an absolute path, got {_show(value)}")
    return path


_KERNEL_FILESYSTEMS: Final = ("/proc", "/sys")


def _path(kind: Literal["file", "directory", "socket"]) -> Check:
    """An absolute path that can be what `kind` says, judged by stat() alone.

    Catches, for --check-config and at start alike, what can never work: a parent
    that is a regular file, a kernel filesystem, an existing path of the wrong kind.
    Whatever stat() cannot tell (a permission) is left to the daemon, which names
    the key when the path then fails.
    """

    def check(value: object) -> object:
        path = _absolute_path(value)
        real = os.path.realpath(path)
        for top in _KERNEL_FILESYSTEMS:
            if real == top or real.startswith(top + "/"):
                raise _InvalidError(
                    f"must not be under {top} (a kernel filesystem), got {_show(value)}"
                )
        probe = real
        while True:
            try:
                mode = os.stat(probe).st_mode
            except (FileNotFoundError, NotADirectoryError):
                probe = os.path.dirname(probe)
                continue
            except OSError:
                return path
            break
        if probe != real and not stat.S_ISDIR(mode):
            raise _InvalidError(f"cannot exist: {_show(probe)} is not a directory")
        if probe == real and stat.S_ISDIR(mode) != (kind == "directory"):
            wrong = "is a directory" if kind != "directory" else "is not a directory"
            raise _InvalidError(f"must name a {kind}, but {_show(value)} {wrong}")
        return path

    return check


def _name(value: object) -> object:
    name = _nonempty_string(value)
    if not _JAIL_NAME.fullmatch(name):
        raise _InvalidError(
            f"must be a name without spaces or special characters, got {_show(value)}"
        )
    return name


def _choice(*choices: str) -> Check:
    def check(value: object) -> object:
        if isinstance(value, str) and value.lower() in choices:
            return value.lower()
        raise _InvalidError(f"must be one of {', '.join(choices)}, got {_show(value)}")

    return check


def _bus(value: object) -> object:
    bus = _nonempty_string(value)
    if bus in ("system", "session"):
        return bus
    parts = [part for part in bus.split(";") if part]
    if not parts or any(part.partition(":")[0] not in _DBUS_TRANSPORTS for part in parts):
        raise _InvalidError(
            'must be "system", "session" or a D-Bus address such as '
            f'"unix:path=/run/dbus/system_bus_socket", got {_show(value)}'
        )
    return bus


def _http_url(value: object) -> object:
    url = _nonempty_string(value)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _InvalidError(f"must be an http:// or https:// URL, got {_show(value)}")
    return url


def _network_text(item: object) -> str | None:
    """The canonical text of an address or network written as a string, else None."""
    if not isinstance(item, str):
        return None
    try:
        return str(ipaddress.ip_network(item.strip(), strict=False))
    except ValueError:
        return None


def _networks(value: object) -> object:
    if not isinstance(value, list | tuple):
        raise _InvalidError(f"must be a list of addresses or networks, got {_show(value)}")
    result: list[str] = []
    problems: list[str] = []
    for index, item in enumerate(value):
        network = _network_text(item)
        if network is None:
            problems.append(f"[{index}] is not an IP address or network: {_show(item)}")
            continue
        if network not in result:
            result.append(network)
    if problems:
        raise _InvalidError("; ".join(problems))
    return tuple(result)


def split_listen(listen: str) -> tuple[str, int]:
    """ "HOST:PORT" or "[V6]:PORT" -> (host, port); ValueError saying what is wrong."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError('must be "HOST:PORT", e.g. "127.0.0.1:9191"')
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be from 1 to 65535, got {port}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError('an IPv6 address must be in brackets, e.g. "[::1]:9191"')
    return host, port


def _listen_or_empty(value: object) -> object:
    if value == "":
        return value
    text = _nonempty_string(value)
    try:
        split_listen(text)
    except ValueError as exc:
        raise _InvalidError(f"{exc}, got {_show(value)}") from None
    return text


def _path_or_empty(kind: Literal["file", "directory", "socket"]) -> Check:
    check = _path(kind)
    return lambda value: value if value == "" else check(value)


def _http_url_or_empty(value: object) -> object:
    return value if value == "" else _http_url(value)


def _names(value: object) -> object:
    if not isinstance(value, list | tuple):
        raise _InvalidError(f"must be a list of jail names, got {_show(value)}")
    problems = []
    for index, item in enumerate(value):
        try:
            _name(item)
        except _InvalidError as exc:
            problems.append(f"[{index}] {exc}")
    if problems:
        raise _InvalidError("; ".join(problems))
    return tuple(dict.fromkeys(value))


@dataclass(frozen=True, kw_only=True, slots=True)
class BlocklistSource:
    """One `[[blocklist.source]]` table: a source managed by the config file."""

    name: str
    """The source's name, as ListSources shows it."""
    url: str
    """http://, https:// or file:// (below blocklist.file_dir)."""
    enabled: bool = True
    """false: kept, but not imported."""
    interval: int = 0
    """Seconds between imports of this source; 0 = tasks.blocklist_import."""
    max_entries: int = 0
    """This source's entry cap; 0 = blocklist.max_entries."""


# Sources the daemon manages itself: a config table may not take their name.
RESERVED_SOURCE_NAMES: Final = ("crowdsec",)
_SOURCE_SCHEMES: Final = ("http", "https", "file")


def _source_table(index: int, table: object) -> tuple[BlocklistSource | None, list[str]]:
    where = f"[{index}]"
    if not isinstance(table, Mapping):
        return None, [f"{where} must be a table ([[blocklist.source]]), got {_show(table)}"]
    problems: list[str] = []
    known = {f.name for f in dataclasses.fields(BlocklistSource)}
    problems.extend(
        f"{where}.{key}: unknown key (known: {', '.join(sorted(known))})"
        for key in table
        if key not in known
    )
    problems.extend(f"{where}.{key}: is required" for key in ("name", "url") if key not in table)
    values: dict[str, object] = {}
    checks: dict[str, Check] = {
        "name": _nonempty_string,
        "url": _nonempty_string,
        "enabled": _boolean,
        "interval": _integer(0, 366 * 86400),
        "max_entries": _integer(0, 10_000_000),
    }
    for key, check in checks.items():
        if key in table:
            try:
                values[key] = check(table[key])
            except _InvalidError as exc:
                problems.append(f"{where}.{key}: {exc}")
    url = values.get("url")
    if isinstance(url, str):
        parts = urlsplit(url)
        if parts.scheme not in _SOURCE_SCHEMES or (parts.scheme != "file" and not parts.hostname):
            problems.append(
                f"{where}.url: must be an http://, https:// or file:// URL, got {_show(url)}"
            )
    if values.get("name") in RESERVED_SOURCE_NAMES:
        problems.append(f"{where}.name: {values['name']!r} is reserved for its own section")
    if problems:
        return None, problems
    return BlocklistSource(**values), []  # type: ignore[arg-type]


def _sources(value: object) -> object:
    if not isinstance(value, list | tuple):
        raise _InvalidError(f"must be [[blocklist.source]] tables, got {_show(value)}")
    sources: list[BlocklistSource] = []
    problems: list[str] = []
    for index, table in enumerate(value):
        source, found = _source_table(index, table)
        problems.extend(found)
        if source is not None:
            if any(s.name == source.name for s in sources):
                problems.append(f"[{index}].name: {source.name!r} is declared twice")
            sources.append(source)
    if problems:
        raise _InvalidError("; ".join(problems))
    return tuple(sources)


def _option(default: T, check: Check) -> T:
    """Declare a config key: its default and the check its TOML value must pass."""
    return field(default=default, metadata={_CHECK: check})


@dataclass(frozen=True, kw_only=True, slots=True)
class Fail2banConfig:
    """How to reach fail2ban: its control socket and its sqlite database."""

    socket: str = _option("/run/fail2ban/fail2ban.sock", _path("socket"))
    """fail2ban's control socket (fail2ban.conf's socket)."""
    database: str = _option("/var/lib/fail2ban/fail2ban.sqlite3", _path("file"))
    """fail2ban's sqlite database (fail2ban.conf's dbfile); read only, to copy ban events into the
    archive.
    """
    timeout: float = _option(10.0, _positive_number)
    """Seconds to wait for the answer to one socket command; blocklist imports size their ban
    batches to fit.
    """


@dataclass(frozen=True, kw_only=True, slots=True)
class ArchiveConfig:
    """The daemon's own history database; retention_days 0 keeps history forever."""

    path: str = _option("/var/lib/bangui/archive.sqlite3", _path("file"))
    """The daemon's own history database (sqlite); created with its folder when missing."""
    retention_days: int = _option(365, _integer(0))
    """Archived ban events older than this many days are purged; 0 keeps them forever."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DbusConfig:
    """Which bus to serve on and who may call the admin methods."""

    bus: str = _option("system", _bus)
    """The bus to serve org.bangui.Daemon1 on: "system", "session" or a D-Bus address such as
    "unix:path=/run/dbus/system_bus_socket".
    """
    admin_group: str = _option("bangui-admin", _name)
    """Members of this group (and root) may call the admin methods: ban, unban, blocklist sources
    and imports, RunTask.
    """


@dataclass(frozen=True, kw_only=True, slots=True)
class TasksConfig:
    """How often each task runs, in seconds (fractions allowed)."""

    ban_watch: float = _option(2, _positive_number)
    """How often fail2ban's current bans are compared with the last look, to send BanAdded,
    BanRemoved and BansChanged.
    """
    history_sync: float = _option(300, _positive_number)
    """How often new ban events are copied from fail2ban's database into the archive; keep it
    shorter than fail2ban's dbpurgeage.
    """
    geo_resolve: float = _option(60, _positive_number)
    """How often archived addresses without country and ASN are looked up."""
    blocklist_import: float = _option(86400, _positive_number)
    """How often every enabled blocklist source is downloaded and imported."""
    geo_cache_cleanup: float = _option(86400, _positive_number)
    """How often geo answers not used within [geo] retention_days are deleted."""
    history_purge: float = _option(86400, _positive_number)
    """How often archived events older than [archive] retention_days are deleted."""


@dataclass(frozen=True, kw_only=True, slots=True)
class BlocklistConfig:
    """Blocklist imports: target jail, download limits, and what is never banned."""

    jail: str = _option("blocklist-import", _name)
    """The fail2ban jail blocklist imports ban into (a jail of its own, see README.Debian)."""
    max_bytes: int = _option(52428800, _integer(1))
    """Largest blocklist download accepted, in bytes; a larger one fails the import and bans
    nothing.
    """
    timeout: float = _option(60, _positive_number)
    """Seconds one blocklist download may take."""
    max_entries: int = _option(250000, _integer(1))
    """Most addresses and networks one blocklist may hold (ipsum lists about 120,000); a
    longer one fails the import and says its size. A source may set its own cap.
    """
    min_prefix_v4: int = _option(16, _integer(0, 32))
    """IPv4 networks wider than this prefix length are never banned."""
    min_prefix_v6: int = _option(32, _integer(0, 128))
    """IPv6 networks wider than this prefix length are never banned."""
    allowlist: tuple[str, ...] = _option((), _networks)
    """Addresses and networks never banned (by BanIp or an import), e.g. ["45.33.12.0/24"];
    the special-purpose ranges, the host's own addresses and the jail's ignoreip are
    refused anyway.
    """
    file_dir: str = _option("/etc/bangui/lists", _path("directory"))
    """file:// blocklist sources must lie below this folder."""
    ipsum_min_count: int = _option(1, _integer(1))
    """In ipsum lists (address TAB count), entries listed by fewer blocklists than this are
    skipped.
    """
    batch_size: int = _option(200, _integer(1))
    """Addresses per fail2ban banip/unbanip command during an import."""
    source: tuple[BlocklistSource, ...] = _option((), _sources)
    """Sources managed by this file, one [[blocklist.source]] table each (name, url,
    enabled, interval, max_entries); reconciled at start and on SIGHUP, and refused to
    D-Bus callers. A source removed here is removed with the bans only it held.
    """


@dataclass(frozen=True, kw_only=True, slots=True)
class GeoConfig:
    """MMDB paths, cache retention and the optional (off by default) HTTP fallback."""

    country_db: str = _option("/usr/share/GeoIP/GeoLite2-Country.mmdb", _path("file"))
    """MaxMind Country or City database (Debian: geoipupdate); missing means empty country fields.
    """
    asn_db: str = _option("/usr/share/GeoIP/GeoLite2-ASN.mmdb", _path("file"))
    """MaxMind ASN database; missing means empty ASN fields."""
    retention_days: int = _option(90, _integer(0))
    """Cached geo answers not used for this many days are deleted; 0 keeps them forever."""
    http_fallback: bool = _option(False, _boolean)
    """Ask an ip-api.com style HTTP batch service for addresses the databases do not answer (sends
    those addresses to that service).
    """
    http_fallback_url: str = _option("http://ip-api.com/batch", _http_url)
    """The batch endpoint of the HTTP fallback."""
    http_fallback_rate_per_minute: int = _option(15, _integer(1))
    """Most requests a minute sent to the HTTP fallback."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MetricsConfig:
    """Prometheus metrics: a /metrics listener and a node_exporter textfile; "" = off."""

    listen: str = _option("", _listen_or_empty)
    """HOST:PORT to serve /metrics on, e.g. "127.0.0.1:9191" ("[::1]:9191" for IPv6); a
    non-loopback address is logged as a warning. Empty: no listener.
    """
    textfile: str = _option("", _path_or_empty("file"))
    """A file for node_exporter's textfile collector, rewritten atomically, e.g.
    "/var/lib/prometheus/node-exporter/bangui.prom". Empty: none.
    """
    textfile_interval: float = _option(60, _positive_number)
    """Seconds between textfile writes (and refreshes of each jail's settings)."""

    @property
    def enabled(self) -> bool:
        return bool(self.listen or self.textfile)


@dataclass(frozen=True, kw_only=True, slots=True)
class CrowdsecConfig:
    """A CrowdSec Local API: pull its decisions (a bouncer), push our bans (a machine)."""

    lapi_url: str = _option("", _http_url_or_empty)
    """The Local API's URL, e.g. "http://127.0.0.1:8080/". Empty: CrowdSec is off (and a
    crowdsec source left from before is removed with its bans).
    """
    bouncer_key_file: str = _option("", _path_or_empty("file"))
    """A file holding a bouncer key (cscli bouncers add): pull decisions into the source
    "crowdsec".
    """
    pull_interval: float = _option(10, _positive_number)
    """Seconds between pulls of the decision stream."""
    machine_id: str = _option("", lambda v: v if v == "" else _name(v))
    """A machine login (cscli machines add): push our own bans as alerts."""
    machine_password_file: str = _option("", _path_or_empty("file"))
    """A file holding that machine's password."""
    push_jails: tuple[str, ...] = _option((), _names)
    """Jails whose bans are pushed; empty = every jail but the blocklist jail."""

    @property
    def pull(self) -> bool:
        return bool(self.lapi_url and self.bouncer_key_file)

    @property
    def push(self) -> bool:
        return bool(self.lapi_url and self.machine_id and self.machine_password_file)

    def problems(self, blocklist_jail: str) -> list[str]:
        """What the keys say together that no single key shows."""
        out = []
        if self.lapi_url and not (self.bouncer_key_file or self.machine_id):
            out.append(
                "crowdsec.lapi_url: set bouncer_key_file (pull), or machine_id and "
                "machine_password_file (push), or both"
            )
        if bool(self.machine_id) != bool(self.machine_password_file):
            out.append("crowdsec.machine_id: needs machine_password_file too (and the reverse)")
        if (self.bouncer_key_file or self.machine_id) and not self.lapi_url:
            out.append("crowdsec.lapi_url: must be set when credentials are given")
        if blocklist_jail in self.push_jails:
            out.append(
                f"crowdsec.push_jails: must not name the blocklist jail {blocklist_jail!r} "
                "(pulled decisions would be pushed back)"
            )
        return out


@dataclass(frozen=True, kw_only=True, slots=True)
class LogConfig:
    """Log threshold and renderer ("auto" picks console, logfmt or JSON)."""

    # _option returns the (immutable) default; ruff cannot see that through a Literal.
    level: LogLevel = _option("info", _choice(*LOG_LEVELS))  # noqa: RUF009
    """Lowest level logged: debug, info, warning or error."""
    format: LogFormat = _option("auto", _choice(*LOG_FORMATS))  # noqa: RUF009
    """Log format: auto (console on a terminal, logfmt under systemd, else json), json, logfmt or
    console.
    """


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    """The whole effective configuration; one attribute per TOML section."""

    fail2ban: Fail2banConfig = field(default_factory=Fail2banConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    dbus: DbusConfig = field(default_factory=DbusConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    blocklist: BlocklistConfig = field(default_factory=BlocklistConfig)
    geo: GeoConfig = field(default_factory=GeoConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    crowdsec: CrowdsecConfig = field(default_factory=CrowdsecConfig)
    log: LogConfig = field(default_factory=LogConfig)


# TOML section name -> its dataclass, in the order of config.md (and of dump_config).
_SECTIONS: Final[dict[str, type[Any]]] = {
    "fail2ban": Fail2banConfig,
    "archive": ArchiveConfig,
    "dbus": DbusConfig,
    "tasks": TasksConfig,
    "blocklist": BlocklistConfig,
    "geo": GeoConfig,
    "metrics": MetricsConfig,
    "crowdsec": CrowdsecConfig,
    "log": LogConfig,
}


def _unknown(what: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown {what} {name}{hint}"


def parse_config(data: Mapping[str, object]) -> Config:
    """Validate parsed TOML; raise one ConfigError listing every problem, one a line."""
    problems: list[str] = []
    sections: dict[str, object] = {}
    problems.extend(
        _unknown("section", name, list(_SECTIONS)) for name in data if name not in _SECTIONS
    )
    for name, cls in _SECTIONS.items():
        table = data.get(name, {})
        if not isinstance(table, Mapping):
            problems.append(f"{name}: must be a table ([{name}]), got {_show(table)}")
            continue
        options = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, object] = {}
        for key, value in table.items():
            if key not in options:
                problems.append(_unknown("key", f"{name}.{key}", [f"{name}.{k}" for k in options]))
                continue
            check = cast(Check, options[key].metadata[_CHECK])
            try:
                values[key] = check(value)
            except _InvalidError as exc:
                problems.append(f"{name}.{key}: {exc}")
        sections[name] = cls(**values)
    if not problems:
        crowdsec = cast(CrowdsecConfig, sections["crowdsec"])
        problems.extend(crowdsec.problems(cast(BlocklistConfig, sections["blocklist"]).jail))
    if problems:
        raise ConfigError("\n".join(problems))
    return Config(**cast(dict[str, Any], sections))


def load_config(path: str | None = None) -> Config:
    """Read and validate the TOML file; only a missing *default* file means defaults."""
    explicit = path is not None
    path = DEFAULT_CONFIG_PATH if path is None else path
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path}: config file does not exist") from None
        return Config()
    except tomllib.TOMLDecodeError as exc:
        # The message carries "(at line N, column M)".
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror or exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        lines = str(exc).splitlines()
        raise ConfigError("\n".join(f"{path}: {line}" for line in lines)) from None


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are a subset of TOML basic-string escapes.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_config(cfg: Config) -> str:
    """Render the effective config as TOML that parse_config reads back unchanged."""
    lines: list[str] = []
    for name in _SECTIONS:
        section = getattr(cfg, name)
        if lines:
            lines.append("")
        lines.append(f"[{name}]")
        tables: list[tuple[str, tuple[Any, ...]]] = []
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
                tables.append((f.name, value))  # arrays of tables come after the keys
            else:
                lines.append(f"{f.name} = {_toml_value(value)}")
        for key, items in tables:
            for item in items:
                lines.extend(("", f"[[{name}.{key}]]"))
                lines.extend(
                    f"{g.name} = {_toml_value(getattr(item, g.name))}"
                    for g in dataclasses.fields(item)
                )
    return "\n".join(lines) + "\n"
