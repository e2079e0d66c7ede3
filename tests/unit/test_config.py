"""Config: defaults of config.md, every bad key named, all problems at once, dump."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from bangui_daemon import config
from bangui_daemon.config import (
    BlocklistConfig,
    Config,
    dump_config,
    load_config,
    parse_config,
)
from bangui_daemon.errors import ConfigError

# The example file of shared/spec/config.md (one comment less indented): the defaults.
CONFIG_MD_EXAMPLE = """
[fail2ban]
socket = "/run/fail2ban/fail2ban.sock"
database = "/var/lib/fail2ban/fail2ban.sqlite3"
timeout = 10.0                    # seconds for one socket command (imports size batches to fit)

[archive]
path = "/var/lib/bangui/archive.sqlite3"
retention_days = 365              # 0 = keep forever

[dbus]
bus = "system"                    # "system", "session", or a bus address "unix:path=..."
admin_group = "bangui-admin"

[tasks]                           # intervals in seconds
ban_watch = 2
history_sync = 300
geo_resolve = 60
blocklist_import = 86400
geo_cache_cleanup = 86400
history_purge = 86400

[blocklist]
jail = "blocklist-import"
max_bytes = 52428800
timeout = 60
max_entries = 250000             # raised from config.md's 100000: ipsum lists ~120,000
min_prefix_v4 = 16
min_prefix_v6 = 32
allowlist = []                    # addresses and networks never banned by anything
file_dir = "/etc/bangui/lists"    # file:// sources must live below this directory

[geo]
country_db = "/usr/share/GeoIP/GeoLite2-Country.mmdb"   # a Country or City database
asn_db = "/usr/share/GeoIP/GeoLite2-ASN.mmdb"
retention_days = 90
http_fallback = false

[metrics]                         # Prometheus; both off when empty
listen = ""                       # "127.0.0.1:9191": serve /metrics
textfile = ""                     # e.g. "/var/lib/prometheus/node-exporter/bangui.prom"
textfile_interval = 60

[crowdsec]                        # a CrowdSec Local API; off when lapi_url is empty
lapi_url = ""                     # "http://127.0.0.1:8080/"
bouncer_key_file = ""             # pull: decisions become the source "crowdsec"
pull_interval = 10
machine_id = ""                   # push: both set = own bans are sent as alerts
machine_password_file = ""
push_jails = []                   # empty = every jail but the blocklist jail

[log]
level = "info"
format = "auto"  # auto (console on a TTY, logfmt under systemd), json, logfmt, console
"""

# (section, key, a value of the wrong type or range) for every key.
BAD_VALUES: list[tuple[str, str, object]] = [
    ("fail2ban", "socket", "relative/fail2ban.sock"),
    ("fail2ban", "socket", 5),
    ("fail2ban", "database", ""),
    ("fail2ban", "timeout", 0),
    ("fail2ban", "timeout", "10"),
    ("fail2ban", "timeout", float("inf")),
    ("archive", "path", ["/x"]),
    ("archive", "retention_days", -1),
    ("archive", "retention_days", 1.5),
    ("archive", "retention_days", True),
    ("dbus", "bus", "systemd-bus"),
    ("dbus", "bus", "/run/dbus/system_bus_socket"),
    ("dbus", "admin_group", "bangui admin"),
    ("dbus", "admin_group", 0),
    ("tasks", "ban_watch", 0),
    ("tasks", "history_sync", -300),
    ("tasks", "geo_resolve", False),
    ("tasks", "blocklist_import", "daily"),
    ("tasks", "geo_cache_cleanup", float("nan")),
    ("tasks", "history_purge", [1]),
    ("blocklist", "jail", ""),
    ("blocklist", "jail", "two words"),
    ("blocklist", "max_bytes", 0),
    ("blocklist", "max_bytes", True),
    ("blocklist", "timeout", -1),
    ("blocklist", "max_entries", 0),
    ("blocklist", "max_entries", 10.0),
    ("blocklist", "min_prefix_v4", 33),
    ("blocklist", "min_prefix_v4", -1),
    ("blocklist", "min_prefix_v6", 129),
    ("blocklist", "min_prefix_v6", "32"),
    ("blocklist", "allowlist", "192.0.2.1"),
    ("blocklist", "allowlist", ["192.0.2.300"]),
    ("blocklist", "allowlist", [1]),
    ("blocklist", "file_dir", "lists"),
    ("blocklist", "ipsum_min_count", 0),
    ("blocklist", "batch_size", 0),
    ("blocklist", "source", {"name": "x"}),
    ("blocklist", "source", [{"name": "x"}]),
    ("blocklist", "source", [{"name": "x", "url": "ftp://x/l"}]),
    ("blocklist", "source", [{"name": "x", "url": "https://x/l", "interval": -30}]),
    ("blocklist", "source", [{"name": "crowdsec", "url": "https://x/l"}]),
    ("blocklist", "source", [{"name": "x", "url": "https://x/l", "colour": 1}]),
    ("geo", "country_db", "GeoLite2-Country.mmdb"),
    ("geo", "asn_db", None),
    ("geo", "retention_days", -5),
    ("geo", "http_fallback", "yes"),
    ("geo", "http_fallback", 1),
    ("geo", "http_fallback_url", "ftp://ip-api.com/batch"),
    ("geo", "http_fallback_url", "http://"),
    ("geo", "http_fallback_rate_per_minute", 0),
    ("metrics", "listen", "9191"),
    ("metrics", "listen", "localhost:99999"),
    ("metrics", "listen", "::1:9191"),
    ("metrics", "listen", 9191),
    ("metrics", "textfile", "bangui.prom"),
    ("metrics", "textfile_interval", 0),
    ("crowdsec", "lapi_url", "127.0.0.1:8080"),
    ("crowdsec", "bouncer_key_file", "key"),
    ("crowdsec", "pull_interval", 0),
    ("crowdsec", "machine_id", "two words"),
    ("crowdsec", "machine_password_file", "relative"),
    ("crowdsec", "push_jails", "sshd"),
    ("crowdsec", "push_jails", ["ss hd"]),
    ("log", "level", "verbose"),
    ("log", "level", 10),
    ("log", "format", "xml"),
]


def problems_of(data: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value).splitlines()


def test_defaults_equal_config_md() -> None:
    assert parse_config(tomllib.loads(CONFIG_MD_EXAMPLE)) == Config()
    assert parse_config({}) == Config()


def test_default_values_spelled_out() -> None:
    cfg = Config()
    assert cfg.fail2ban.timeout == 10.0
    assert cfg.archive.retention_days == 365
    assert cfg.dbus.bus == "system"
    assert dataclasses.astuple(cfg.tasks) == (2, 300, 60, 86400, 86400, 86400)
    assert cfg.blocklist.allowlist == ()
    assert (cfg.blocklist.ipsum_min_count, cfg.blocklist.batch_size) == (1, 200)
    assert cfg.geo.http_fallback is False
    assert cfg.geo.http_fallback_url == "http://ip-api.com/batch"
    assert cfg.geo.http_fallback_rate_per_minute == 15
    assert (cfg.log.level, cfg.log.format) == ("info", "auto")


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().log.level = "debug"  # type: ignore[misc]


@pytest.mark.parametrize(("section", "key", "value"), BAD_VALUES)
def test_bad_value_names_the_key(section: str, key: str, value: object) -> None:
    [problem] = problems_of({section: {key: value}})
    assert problem.startswith(f"{section}.{key}: ")
    reasons = ("must be", "is not an IP address", "is required", "is reserved", "unknown key")
    assert any(reason in problem for reason in reasons), problem


def test_every_key_has_a_bad_value_case() -> None:
    covered = {(section, key) for section, key, _ in BAD_VALUES}
    every = {
        (section, f.name)
        for section, cls in config._SECTIONS.items()
        for f in dataclasses.fields(cls)
    }
    assert every == covered


def test_sections_match_config_fields() -> None:
    assert list(config._SECTIONS) == [f.name for f in dataclasses.fields(Config)]


def test_message_shows_the_bad_value() -> None:
    [problem] = problems_of({"blocklist": {"min_prefix_v4": 40}})
    assert problem == "blocklist.min_prefix_v4: must be an integer from 0 to 32, got 40"
    [problem] = problems_of({"geo": {"retention_days": True}})
    assert problem == "geo.retention_days: must be an integer >= 0, got true"


def test_unknown_key_and_section_named() -> None:
    problems = problems_of({"tasks": {"ban_wacth": 2}, "fial2ban": {}, "extra": 1})
    assert "unknown key tasks.ban_wacth (did you mean tasks.ban_watch?)" in problems
    assert "unknown section fial2ban (did you mean fail2ban?)" in problems
    assert "unknown section extra" in problems


def test_section_must_be_a_table() -> None:
    assert problems_of({"log": "debug"}) == ['log: must be a table ([log]), got "debug"']


def test_all_problems_reported_together() -> None:
    problems = problems_of(
        {
            "fail2ban": {"timeout": -1},
            "tasks": {"ban_wacth": 1, "history_sync": True},
            "blocklist": {"min_prefix_v6": 200, "allowlist": ["x", "192.0.2.0/24", 7]},
            "log": {"format": "xml"},
        }
    )
    assert len(problems) == 6
    for name in (
        "fail2ban.timeout:",
        "unknown key tasks.ban_wacth",
        "tasks.history_sync:",
        "blocklist.min_prefix_v6:",
        "log.format:",
    ):
        assert any(p.startswith(name) for p in problems), name
    [allow] = [p for p in problems if p.startswith("blocklist.allowlist:")]
    assert '[0] is not an IP address or network: "x"' in allow
    assert "[2] is not an IP address or network: 7" in allow


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"log\.level"):
        parse_config({"log": {"level": "loud"}})


def test_accepted_values() -> None:
    cfg = parse_config(
        {
            "fail2ban": {"timeout": 0.5},
            "archive": {"retention_days": 0},
            "dbus": {"bus": "unix:path=/tmp/bus,guid=abc;tcp:host=localhost,port=1"},
            "tasks": {"ban_watch": 0.5, "history_sync": 1},
            "blocklist": {"min_prefix_v4": 0, "min_prefix_v6": 128, "timeout": 2.5},
            "geo": {"http_fallback": True, "http_fallback_url": "https://geo.example/batch"},
            "metrics": {"listen": "[::1]:9191", "textfile": "/var/lib/node/bangui.prom"},
            "log": {"level": "DEBUG", "format": "logfmt"},
        }
    )
    assert cfg.metrics.enabled
    assert config.split_listen(cfg.metrics.listen) == ("::1", 9191)
    assert not Config().metrics.enabled
    assert cfg.fail2ban.timeout == 0.5
    assert cfg.tasks.ban_watch == 0.5
    assert cfg.dbus.bus.startswith("unix:path=/tmp/bus")
    assert cfg.log.level == "debug"
    assert parse_config({"dbus": {"bus": "session"}}).dbus.bus == "session"


def test_allowlist_validated_and_normalised() -> None:
    cfg = parse_config(
        {
            "blocklist": {
                "allowlist": ["192.0.2.7", "198.51.100.9/24", "2001:DB8::1/32", "192.0.2.7"]
            }
        }
    )
    assert cfg.blocklist.allowlist == ("192.0.2.7/32", "198.51.100.0/24", "2001:db8::/32")


def test_dump_round_trips_defaults() -> None:
    text = dump_config(Config())
    assert parse_config(tomllib.loads(text)) == Config()


def test_dump_round_trips_non_defaults() -> None:
    cfg = Config(
        fail2ban=config.Fail2banConfig(socket='/tmp/we"ird\\dir/ünï\tx.sock', timeout=2.5),
        tasks=config.TasksConfig(ban_watch=0.5, history_purge=1e-3),
        blocklist=BlocklistConfig(allowlist=("192.0.2.0/24", "2001:db8::/32"), batch_size=7),
        geo=config.GeoConfig(http_fallback=True),
        log=config.LogConfig(level="debug", format="json"),
    )
    text = dump_config(cfg)
    assert parse_config(tomllib.loads(text)) == cfg
    assert "[blocklist]" in text
    assert 'allowlist = ["192.0.2.0/24", "2001:db8::/32"]' in text


def test_load_file(tmp_path: Path) -> None:
    path = tmp_path / "bangui.toml"
    path.write_text('[tasks]\nban_watch = 0.5\n[log]\nlevel = "debug"\n', encoding="utf-8")
    cfg = load_config(str(path))
    assert cfg.tasks.ban_watch == 0.5
    assert cfg.log.level == "debug"
    assert cfg.archive == Config().archive


def test_load_file_problems_name_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bangui.toml"
    path.write_text("[tasks]\nban_wacth = 2\n[blocklist]\nmin_prefix_v4 = 40\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    lines = str(info.value).splitlines()
    assert lines == [
        f"{path}: unknown key tasks.ban_wacth (did you mean tasks.ban_watch?)",
        f"{path}: blocklist.min_prefix_v4: must be an integer from 0 to 32, got 40",
    ]


def test_missing_default_file_means_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", str(tmp_path / "absent.toml"))
    assert load_config(None) == Config()


def test_default_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bangui.toml"
    path.write_text('[dbus]\nbus = "session"\n', encoding="utf-8")
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", str(path))
    assert load_config(None).dbus.bus == "session"


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(str(path))
    assert str(path) in str(info.value)


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bangui.toml"
    path.write_text("[tasks]\nban_watch = 2\nhistory_sync = = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: invalid TOML")
    assert "line 3" in message


def test_unreadable_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path))  # a directory


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bangui.toml"
    path.write_bytes(b'[dbus]\nadmin_group = "\xff"\n')
    with pytest.raises(ConfigError, match=str(path)):
        load_config(str(path))


@pytest.mark.parametrize(
    ("crowdsec", "message"),
    [
        ({"lapi_url": "http://127.0.0.1:8080/"}, "crowdsec.lapi_url: set bouncer_key_file"),
        ({"bouncer_key_file": "/k"}, "crowdsec.lapi_url: must be set"),
        (
            {"lapi_url": "http://127.0.0.1:8080/", "machine_id": "web1"},
            "crowdsec.machine_id: needs machine_password_file",
        ),
        (
            {"lapi_url": "http://l/", "bouncer_key_file": "/k", "push_jails": ["blocklist-import"]},
            "crowdsec.push_jails: must not name the blocklist jail",
        ),
    ],
)
def test_crowdsec_keys_checked_together(crowdsec: dict[str, object], message: str) -> None:
    [problem] = problems_of({"crowdsec": crowdsec})
    assert problem.startswith(message)


def test_crowdsec_pull_and_push_switches() -> None:
    cfg = parse_config(
        {
            "crowdsec": {
                "lapi_url": "http://127.0.0.1:8080/",
                "bouncer_key_file": "/etc/bangui/crowdsec-bouncer.key",
                "machine_id": "web1",
                "machine_password_file": "/etc/bangui/crowdsec-machine.password",
                "push_jails": ["sshd", "sshd"],
            }
        }
    ).crowdsec
    assert cfg.pull
    assert cfg.push
    assert cfg.push_jails == ("sshd",)
    assert not Config().crowdsec.pull
    assert not Config().crowdsec.push


def test_blocklist_sources_declared_as_tables() -> None:
    cfg = parse_config(
        tomllib.loads(
            """
[[blocklist.source]]
name = "ipsum"
url = "https://raw.example/ipsum.txt"
interval = 86400

[[blocklist.source]]
name = "blocklist.de"
url = "https://lists.example/all.txt"
enabled = false
max_entries = 50000
"""
        )
    )
    ipsum, de = cfg.blocklist.source
    assert (ipsum.name, ipsum.interval, ipsum.enabled, ipsum.max_entries) == (
        "ipsum",
        86400,
        True,
        0,
    )
    assert (de.name, de.enabled, de.max_entries) == ("blocklist.de", False, 50000)
    assert parse_config(tomllib.loads(dump_config(cfg))) == cfg
    problems = problems_of({"blocklist": {"source": [{"name": "a", "url": "https://x/1"}] * 2}})
    assert problems == ["blocklist.source: [1].name: 'a' is declared twice"]


# ---------------------------------------------------------------- path keys (issue 9)
PATH_KEYS = [
    ("fail2ban", "socket"),
    ("fail2ban", "database"),
    ("archive", "path"),
    ("blocklist", "file_dir"),
    ("geo", "country_db"),
    ("geo", "asn_db"),
    ("metrics", "textfile"),
    ("crowdsec", "bouncer_key_file"),
    ("crowdsec", "machine_password_file"),
]


@pytest.mark.parametrize(("section", "key"), PATH_KEYS)
def test_a_path_under_a_regular_file_is_named(tmp_path: Path, section: str, key: str) -> None:
    (tmp_path / "file").write_text("")
    bad = str(tmp_path / "file" / "sub" / "name")
    [problem] = problems_of({section: {key: bad}})
    assert problem == f'{section}.{key}: cannot exist: "{tmp_path / "file"}" is not a directory'


@pytest.mark.parametrize(("section", "key"), PATH_KEYS)
@pytest.mark.parametrize("bad", ["/proc/archive.sqlite3", "/sys/x/y", "/proc"])
def test_a_path_on_a_kernel_filesystem_is_named(section: str, key: str, bad: str) -> None:
    [problem] = problems_of({section: {key: bad}})
    top = "/" + bad.split("/")[1]
    assert problem == f'{section}.{key}: must not be under {top} (a kernel filesystem), got "{bad}"'


def test_a_symlink_into_proc_is_seen_through(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to("/proc/self")
    [problem] = problems_of({"archive": {"path": str(tmp_path / "link" / "archive.sqlite3")}})
    assert problem.startswith("archive.path: must not be under /proc")


def test_an_existing_path_of_the_wrong_kind_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    problems = problems_of(
        {
            "archive": {"path": str(tmp_path)},
            "fail2ban": {"socket": str(tmp_path), "database": str(tmp_path)},
            "geo": {"asn_db": str(tmp_path)},
            "blocklist": {"file_dir": str(tmp_path / "file")},
        }
    )
    assert problems == [
        f'fail2ban.socket: must name a socket, but "{tmp_path}" is a directory',
        f'fail2ban.database: must name a file, but "{tmp_path}" is a directory',
        f'archive.path: must name a file, but "{tmp_path}" is a directory',
        f'blocklist.file_dir: must name a directory, but "{tmp_path / "file"}" is not a directory',
        f'geo.asn_db: must name a file, but "{tmp_path}" is a directory',
    ]


def test_paths_that_can_exist_pass(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    cfg = parse_config(
        {
            "archive": {"path": str(tmp_path / "new" / "deeper" / "archive.sqlite3")},
            "fail2ban": {"database": str(tmp_path / "file")},
            "blocklist": {"file_dir": str(tmp_path)},
        }
    )
    assert cfg.archive.path == str(tmp_path / "new" / "deeper" / "archive.sqlite3")
    assert not (tmp_path / "new").exists()  # checked by stat() alone, nothing created
