"""org.bangui.Daemon1.Geo and the geo fields of the other interfaces (issue P3 Geo).

The real daemon on the private system bus, against a real fail2ban, with copies of
MaxMind's test MMDBs (tests/data/geoip/README.md lists their known answers).
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bangui_daemon.geo.lookup import DEFAULT_CHECK_INTERVAL
from bangui_daemon.services.geo import MAX_LOOKUP
from tests.harness.daemon import DaemonProcess
from tests.harness.fail2ban import F2bSandbox
from tests.harness.util import wait_until
from tests.integration.dbus_calls import CORE, GEO, HISTORY, Runner, call, error_name, get_property

GEOIP = Path(__file__).resolve().parents[1] / "data" / "geoip"
COUNTRY_TEST = GEOIP / "GeoLite2-Country-Test.mmdb"
ASN_TEST = GEOIP / "GeoLite2-ASN-Test.mmdb"
CITY_TEST = GEOIP / "GeoIP2-City-Test.mmdb"
E = "org.bangui.Daemon1.Error."
# How long a replaced or newly installed MMDB may take to be noticed: the resolver
# stats the files at most once per check interval; the rest is margin for a slow host.
RELOAD_DEADLINE = 3 * DEFAULT_CHECK_INTERVAL + 5

DaemonStarter = Callable[..., DaemonProcess]


def install(src: Path, dest: Path) -> None:
    """Put ``src`` at ``dest`` the way geoipupdate does: a temporary file, then rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


@pytest.fixture
def geo_paths(tmp_path: Path) -> dict[str, Path]:
    """Copies of the Country and ASN test databases in a temp dir (tests may replace them)."""
    paths = {
        "country_db": tmp_path / "geoip" / "country.mmdb",
        "asn_db": tmp_path / "geoip" / "asn.mmdb",
    }
    install(COUNTRY_TEST, paths["country_db"])
    install(ASN_TEST, paths["asn_db"])
    return paths


@pytest.fixture
def geo_daemon(start_daemon: DaemonStarter, geo_paths: dict[str, Path]) -> DaemonProcess:
    return start_daemon(geo={k: str(v) for k, v in geo_paths.items()})


def lookup(busctl: Runner, ip: str) -> dict[str, Any]:
    (answer,) = call(busctl, GEO, "LookupIp", "s", ip)
    assert isinstance(answer, dict)
    return answer


def lookup_many(busctl: Runner, ips: list[str]) -> list[dict[str, Any]]:
    (answers,) = call(busctl, GEO, "LookupIps", "as", str(len(ips)), *ips)
    assert isinstance(answers, list)
    return answers


def warnings_of(daemon: DaemonProcess, event: str) -> list[dict[str, Any]]:
    return [r for r in daemon.log_records() if r.get("event") == event]


def run_task(busctl: Runner, name: str) -> dict[str, Any]:
    """RunTask as root, once the start-up run of the task has finished (else Busy)."""

    def settled() -> bool:
        (tasks,) = call(busctl, CORE, "ListTasks")
        task = next(t for t in tasks if t["name"] == name)
        return bool(task["last_status"]) and not task["running"]

    wait_until(settled, 10, f"the start-up run of {name}")
    (result,) = call(busctl, CORE, "RunTask", "s", name)
    assert result["status"] == "ok", result
    assert isinstance(result, dict)
    return result


def lookups_across_a_reload_check(busctl: Runner, ips: list[str]) -> list[dict[str, Any]]:
    """Look ``ips`` up again and again for longer than the MMDB check interval, so the
    daemon re-checks its database files at least once meanwhile; return every answer."""
    answers: list[dict[str, Any]] = []
    until = time.monotonic() + DEFAULT_CHECK_INTERVAL + 1
    while time.monotonic() < until:
        answers.extend(lookup(busctl, ip) for ip in ips)
    return answers


# ---------------------------------------------------------------------- lookups
KNOWN = [
    # ip, country_code, country_name, asn, org (tests/data/geoip/README.md)
    ("89.160.20.112", "SE", "Sweden", "AS29518", "Bredband2 AB"),
    ("216.160.83.56", "US", "United States", "AS209", ""),
    ("2001:218::1", "JP", "Japan", "", ""),
    ("1.128.0.1", "", "", "AS1221", "Telstra Pty Ltd"),
    ("8.8.8.8", "", "", "", ""),
]


def test_lookup_ip_answers_from_the_mmdb_then_from_the_cache(
    geo_daemon: DaemonProcess, busctl: Runner
) -> None:
    for ip, country, name, asn, org in KNOWN:
        want = {"ip": ip, "country_code": country, "country_name": name, "asn": asn, "org": org}
        assert lookup(busctl, ip) == {**want, "source": "mmdb"}
        assert lookup(busctl, ip) == {**want, "source": "cache"}


def test_lookup_normalises_the_address(geo_daemon: DaemonProcess, busctl: Runner) -> None:
    answer = lookup(busctl, "2001:0218:0000::0001")
    assert answer["ip"] == "2001:218::1"
    assert answer["country_code"] == "JP"
    mapped = lookup(busctl, "::ffff:81.2.69.160")
    assert mapped["ip"] == "::ffff:81.2.69.160"
    assert mapped["country_code"] == "GB"


def test_lookup_ips_keeps_the_order_asked(geo_daemon: DaemonProcess, busctl: Runner) -> None:
    ips = ["2001:218::1", "8.8.8.8", "89.160.20.112", "216.160.83.56", "89.160.20.112"]
    answers = lookup_many(busctl, ips)
    assert [a["ip"] for a in answers] == ips
    assert [a["country_code"] for a in answers] == ["JP", "", "SE", "US", "SE"]
    assert answers[2]["asn"] == answers[4]["asn"] == "AS29518"


def test_lookup_ips_takes_ten_thousand_and_refuses_more(
    geo_daemon: DaemonProcess, busctl: Runner, gdbus: Runner
) -> None:
    assert MAX_LOOKUP == 10_000  # the contract's limit
    ips = [f"45.{i // 250}.{i % 250}.1" for i in range(MAX_LOOKUP)]
    ips[0], ips[4321], ips[-1] = "89.160.20.112", "2001:218::1", "216.160.83.56"
    answers = lookup_many(busctl, ips)
    assert len(answers) == MAX_LOOKUP
    assert [a["ip"] for a in answers] == ips
    assert (answers[0]["country_code"], answers[4321]["country_code"]) == ("SE", "JP")
    assert answers[-1]["country_code"] == "US"

    # a reply this large must not cost the daemon its bus connection (dbus/transport.py)
    assert not warnings_of(geo_daemon, "dbus_writer_not_patched")
    too_many = "[" + ",".join("'::1'" for _ in range(MAX_LOOKUP + 1)) + "]"
    assert error_name(gdbus, GEO, "LookupIps", too_many) == E + "InvalidArgument"


def test_malformed_address_is_invalid_argument(geo_daemon: DaemonProcess, gdbus: Runner) -> None:
    for bad in ("not-an-ip", "999.1.1.1", "89.160.20.112/32", " 8.8.8.8", ""):
        assert error_name(gdbus, GEO, "LookupIp", f"'{bad}'") == E + "InvalidArgument", bad
        many = f"['89.160.20.112', '{bad}']"
        assert error_name(gdbus, GEO, "LookupIps", many) == E + "InvalidArgument", bad


# ------------------------------------------------------------- database files
def test_replaced_mmdb_changes_answers_without_restart(
    geo_daemon: DaemonProcess, busctl: Runner, geo_paths: dict[str, Path]
) -> None:
    # 175.16.199.1: only the City DB knows it (CN); 214.78.0.1: only the Country DB.
    assert lookup(busctl, "175.16.199.1")["country_code"] == ""
    before = lookup(busctl, "214.78.0.1")
    assert (before["country_code"], before["asn"]) == ("US", "AS721")
    pid = geo_daemon.pid

    install(CITY_TEST, geo_paths["country_db"])  # a City DB is a valid country_db
    wait_until(
        lambda: lookup(busctl, "175.16.199.1")["country_code"] == "CN",
        RELOAD_DEADLINE,
        "the replaced country database to answer",
    )
    after = lookup(busctl, "214.78.0.1")  # cached before: the new build must not serve it
    assert after["country_code"] == ""
    assert after["source"] == "mmdb"
    assert after["asn"] == "AS721"  # the ASN database was not replaced
    assert lookup(busctl, "89.160.20.112")["country_name"] == "Sweden"
    loaded = geo_daemon.wait_for_log("geo_database_loaded")
    assert loaded  # the first load at start
    reloads = [
        r
        for r in warnings_of(geo_daemon, "geo_database_loaded")
        if r.get("database_type") == "GeoIP2-City"
    ]
    assert len(reloads) == 1
    assert reloads[0]["role"] == "country"
    assert geo_daemon.running
    assert geo_daemon.pid == pid
    assert geo_daemon.starts == 1


def test_no_mmdb_configured_starts_with_empty_geo_and_one_warning_each(
    f2b: F2bSandbox, start_daemon: DaemonStarter, busctl: Runner
) -> None:
    from bangui_daemon.config import GeoConfig

    defaults = GeoConfig()
    if Path(defaults.country_db).exists() or Path(defaults.asn_db).exists():
        pytest.skip("this host has the default MMDB files installed")
    # None removes the harness's paths: the daemon runs with the config.md defaults
    daemon = start_daemon(geo={"country_db": None, "asn_db": None})
    first = lookup(busctl, "89.160.20.112")
    assert first == {
        "ip": "89.160.20.112",
        "country_code": "",
        "country_name": "",
        "asn": "",
        "org": "",
        "source": "none",
    }
    answers = [lookup(busctl, ip) for ip in ("89.160.20.112", "2001:218::1") * 5]
    answers += lookup_many(busctl, ["216.160.83.56", "89.160.20.112"])
    for answer in answers:
        assert (answer["country_code"], answer["asn"], answer["org"]) == ("", "", "")

    f2b.cli("set", "sshd", "banip", "89.160.20.112")
    wait_until(lambda: call(busctl, CORE, "ListBans", "suu", "sshd", "0", "10")[1] == 1, 10, "ban")
    run_task(busctl, "geo_resolve")
    (ban,) = call(busctl, CORE, "ListBans", "suu", "sshd", "0", "10")[0]
    assert (ban["ip"], ban["country_code"], ban["asn"], ban["org"]) == (
        "89.160.20.112",
        "",
        "",
        "",
    )

    missing = warnings_of(daemon, "geo_database_missing")
    by_role = Counter(r.get("role") for r in missing)
    assert by_role == {"country": 1, "asn": 1}, missing
    for record in missing:
        assert record["level"] == "warning"
        assert record["path"] in (defaults.country_db, defaults.asn_db)
    assert daemon.running


def test_missing_file_warns_once_and_is_picked_up_when_installed(
    start_daemon: DaemonStarter, busctl: Runner, geo_paths: dict[str, Path]
) -> None:
    geo_paths["country_db"].unlink()
    daemon = start_daemon(geo={k: str(v) for k, v in geo_paths.items()})
    answers = lookups_across_a_reload_check(busctl, ["89.160.20.112", "216.160.83.56"])
    for answer in answers:  # the ASN database still answers
        assert answer["country_code"] == ""
        assert answer["asn"] in ("AS29518", "AS209")
    (warning,) = warnings_of(daemon, "geo_database_missing")
    assert warning["level"] == "warning"
    assert warning["role"] == "country"
    assert warning["path"] == str(geo_paths["country_db"])

    install(COUNTRY_TEST, geo_paths["country_db"])
    wait_until(
        lambda: lookup(busctl, "89.160.20.112")["country_code"] == "SE",
        RELOAD_DEADLINE,
        "the installed country database to answer",
    )
    assert len(warnings_of(daemon, "geo_database_missing")) == 1


# --------------------------------------------- geo fields of the other interfaces
def test_banned_address_gets_country_and_asn_everywhere(
    f2b: F2bSandbox, geo_daemon: DaemonProcess, busctl: Runner, signal_monitor: Any
) -> None:
    ip = "89.160.20.112"
    mon = signal_monitor(user="root")
    run_task(busctl, "geo_resolve")  # the start-up run had nothing to resolve
    assert get_property(busctl, "CacheEntries", GEO) == 0
    assert call(busctl, CORE, "GetStatus")[0]["geo_cache_entries"] == 0

    result = f2b.cli("set", "sshd", "banip", ip)
    assert result.returncode == 0, result.stderr
    wait_until(
        lambda: call(busctl, CORE, "ListBans", "suu", "sshd", "0", "10")[1] == 1, 10, "the ban"
    )
    # resolved before its BanAdded went out (issue 13): the task finds it cached
    resolved = run_task(busctl, "geo_resolve")
    assert resolved["cached"] >= 1

    entries = get_property(busctl, "CacheEntries", GEO)
    assert entries >= 1
    assert call(busctl, CORE, "GetStatus")[0]["geo_cache_entries"] == entries
    mon.wait_for(lambda line: "PropertiesChanged" in line and "CacheEntries" in line, 5)

    bans, total = call(busctl, CORE, "ListBans", "suu", "sshd", "0", "10")
    assert total == 1
    (ban,) = bans
    assert (ban["ip"], ban["country_code"], ban["asn"], ban["org"]) == (
        ip,
        "SE",
        "AS29518",
        "Bredband2 AB",
    )

    run_task(busctl, "history_sync")
    events, total = call(busctl, HISTORY, "GetHistory", "a{sv}uu", "1", "ip", "s", ip, "1", "50")
    assert total >= 1
    for event in events:
        assert (event["ip"], event["country_code"], event["asn"]) == (ip, "SE", "AS29518")
    (top,) = call(busctl, HISTORY, "GetTop", "sxu", "country", "0", "10")
    assert top[0] == ["SE", total]
    (top_asn,) = call(busctl, HISTORY, "GetTop", "sxu", "asn", "0", "10")
    assert top_asn[0] == ["AS29518", total]
    (ip_history,) = call(busctl, HISTORY, "GetIpHistory", "s", ip)
    assert (ip_history["country_code"], ip_history["asn"]) == ("SE", "AS29518")
    assert ip_history["org"] == "Bredband2 AB"


def test_geo_cache_cleanup_runs_over_the_bus(geo_daemon: DaemonProcess, busctl: Runner) -> None:
    lookup(busctl, "89.160.20.112")
    run_task(busctl, "geo_resolve")  # writes the lookup's answer
    entries = get_property(busctl, "CacheEntries", GEO)
    assert entries >= 1
    result = run_task(busctl, "geo_cache_cleanup")
    assert result["name"] == "geo_cache_cleanup"
    assert result["deleted"] == 0  # everything was seen just now
    assert get_property(busctl, "CacheEntries", GEO) == entries
