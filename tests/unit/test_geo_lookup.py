"""MmdbResolver against MaxMind's test databases (answers from tests/data/geoip/README.md).

Runs with geoip2 2.9 (no networks on answers) and geoip2 5.x (networks known).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import geoip2.errors
import pytest
from structlog.testing import capture_logs

from bangui_daemon.errors import InvalidArgument
from bangui_daemon.geo.lookup import (
    GEO_DATABASE_LOADED,
    GEO_DATABASE_MISSING,
    GEO_DATABASE_NOT_CONFIGURED,
    GEO_DATABASE_UNREADABLE,
    GEO_DATABASE_WRONG_TYPE,
    GeoAnswer,
    MmdbResolver,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "geoip"
COUNTRY = str(DATA / "GeoLite2-Country-Test.mmdb")
CITY = str(DATA / "GeoIP2-City-Test.mmdb")
ASN = str(DATA / "GeoLite2-ASN-Test.mmdb")
BUILD_EPOCH = 1770245369

# geoip2 >= 4 reports networks; 2.9 does not (answers then carry network=None).
HAS_NETWORK = hasattr(geoip2.errors.AddressNotFoundError, "network")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def warnings_of(logs: Sequence[Mapping[str, Any]]) -> list[str]:
    return [e["event"] for e in logs if e["log_level"] == "warning"]


def check_network(answer: GeoAnswer, expected: str | None) -> None:
    if HAS_NETWORK and expected is not None:
        assert answer.network == ipaddress.ip_network(expected)
    elif not HAS_NETWORK:
        assert answer.network is None


@pytest.fixture
def country_only() -> Iterator[MmdbResolver]:
    with MmdbResolver(COUNTRY, "") as r:
        yield r


@pytest.fixture
def asn_only() -> Iterator[MmdbResolver]:
    with MmdbResolver("", ASN) as r:
        yield r


@pytest.fixture
def city_only() -> Iterator[MmdbResolver]:
    with MmdbResolver(CITY, "") as r:
        yield r


@pytest.fixture
def both() -> Iterator[MmdbResolver]:
    with MmdbResolver(COUNTRY, ASN) as r:
        yield r


@pytest.mark.parametrize(
    ("ip", "code", "network"),
    [
        ("2.125.160.216", "GB", "2.125.160.216/29"),
        ("81.2.69.160", "GB", "81.2.69.160/27"),
        ("81.2.69.142", "GB", "81.2.69.142/31"),
        ("89.160.20.112", "SE", "89.160.20.112/28"),
        ("216.160.83.56", "US", "216.160.83.56/29"),
        ("67.43.156.1", "BT", "67.43.156.0/24"),
        ("202.196.224.1", "PH", "202.196.224.0/20"),
        ("214.78.0.1", "US", "214.78.0.0/19"),
        ("2001:218::1", "JP", "2001:218::/32"),
        ("1.128.0.0", "", None),
        ("1.0.0.1", "", None),
        ("12.81.92.1", "", None),
        ("149.101.100.1", "", None),
        ("175.16.199.1", "", None),
        ("8.8.8.8", "", None),
        ("127.0.0.1", "", None),
        ("10.0.0.1", "", None),
    ],
)
def test_country_db_known_answers(
    country_only: MmdbResolver, ip: str, code: str, network: str | None
) -> None:
    answer = country_only.lookup(ip)
    assert answer.ip == ip
    assert answer.country_code == code
    assert bool(answer.country_name) == bool(code)
    assert (answer.asn, answer.org) == ("", "")
    assert answer.source == "mmdb"
    assert answer.found == bool(code)
    check_network(answer, network)


@pytest.mark.parametrize(
    ("ip", "asn", "org", "network"),
    [
        ("89.160.20.112", "AS29518", "Bredband2 AB", "89.160.0.0/17"),
        ("216.160.83.56", "AS209", "", "216.160.64.0/18"),
        ("67.43.156.1", "AS35908", "", "67.43.152.0/21"),
        ("214.78.0.1", "AS721", "DoD Network Information Center", "214.0.0.0/8"),
        ("1.128.0.0", "AS1221", "Telstra Pty Ltd", "1.128.0.0/11"),
        ("1.0.0.1", "AS15169", "Google Inc.", "1.0.0.0/24"),
        ("12.81.92.1", "AS7018", "AT&T Services", "12.81.92.0/22"),
        ("149.101.100.1", "AS6167", "CELLCO-PART", "149.101.100.0/28"),
        ("2.125.160.216", "", "", None),
        ("81.2.69.160", "", "", None),
        ("202.196.224.1", "", "", None),
        ("175.16.199.1", "", "", None),
        ("2001:218::1", "", "", None),
        ("8.8.8.8", "", "", "8.0.0.0/7"),
        ("127.0.0.1", "", "", None),
        ("10.0.0.1", "", "", None),
    ],
)
def test_asn_db_known_answers(
    asn_only: MmdbResolver, ip: str, asn: str, org: str, network: str | None
) -> None:
    answer = asn_only.lookup(ip)
    assert (answer.asn, answer.org) == (asn, org)
    assert (answer.country_code, answer.country_name) == ("", "")
    assert answer.source == "mmdb"
    assert answer.found == bool(asn)
    check_network(answer, network)


@pytest.mark.parametrize(
    ("ip", "code"),
    [
        ("2.125.160.216", "GB"),
        ("81.2.69.160", "GB"),
        ("81.2.69.142", "GB"),
        ("89.160.20.112", "SE"),
        ("216.160.83.56", "US"),
        ("67.43.156.1", "BT"),
        ("202.196.224.1", "PH"),
        ("149.101.100.1", "US"),
        ("175.16.199.1", "CN"),
        ("2001:218::1", "JP"),
        ("::ffff:81.2.69.160", "GB"),
        ("214.78.0.1", ""),
        ("1.128.0.0", ""),
        ("1.0.0.1", ""),
        ("12.81.92.1", ""),
        ("8.8.8.8", ""),
        ("127.0.0.1", ""),
        ("10.0.0.1", ""),
    ],
)
def test_city_db_serves_as_country_db(city_only: MmdbResolver, ip: str, code: str) -> None:
    answer = city_only.lookup(ip)
    assert answer.country_code == code
    assert answer.source == "mmdb"
    assert city_only.database_build_id() == f"country=GeoIP2-City@{BUILD_EPOCH};asn=absent"


def test_country_and_asn_combined(both: MmdbResolver) -> None:
    ips = ["89.160.20.112", "216.160.83.56", "67.43.156.1", "214.78.0.1", "8.8.8.8"]
    answers = both.lookup_many(ips)
    assert [a.ip for a in answers] == ips
    got = [(a.country_code, a.asn, a.org) for a in answers]
    assert got == [
        ("SE", "AS29518", "Bredband2 AB"),
        ("US", "AS209", ""),
        ("BT", "AS35908", ""),
        ("US", "AS721", "DoD Network Information Center"),
        ("", "", ""),
    ]
    assert answers[0].country_name == "Sweden"
    assert answers[0].found
    assert not answers[4].found
    assert all(a.source == "mmdb" for a in answers)
    # The answer holds for the narrower of the two networks.
    check_network(answers[0], "89.160.20.112/28")
    check_network(answers[3], "214.78.0.0/19")
    assert both.database_build_id() == (
        f"country=GeoLite2-Country@{BUILD_EPOCH};asn=GeoLite2-ASN@{BUILD_EPOCH}"
    )


def test_ipv4_written_as_ipv6_gives_the_same_record(country_only: MmdbResolver) -> None:
    for form in ("81.2.69.160", "::81.2.69.160", "::ffff:81.2.69.160", "2002:5102:45a0::"):
        assert country_only.lookup(form).country_code == "GB", form
    assert country_only.lookup("::FFFF:81.2.69.160").ip == "::ffff:81.2.69.160"
    assert country_only.lookup("2001:0218:0000::1").ip == "2001:218::1"


def test_malformed_address_raises_invalid_argument(both: MmdbResolver) -> None:
    with pytest.raises(InvalidArgument):
        both.lookup("not-an-ip")
    with pytest.raises(ValueError, match="not an IP"):
        both.lookup_many(["8.8.8.8", "1.2.3.4/24"])


def test_nothing_configured_answers_empty_with_one_warning_each() -> None:
    with capture_logs() as logs:
        resolver = MmdbResolver("", "")
        for _ in range(3):
            answers = resolver.lookup_many(["89.160.20.112", "2001:218::1"])
            resolver.maybe_reload(force=True)
    assert answers == [GeoAnswer(ip="89.160.20.112"), GeoAnswer(ip="2001:218::1")]
    assert answers[0].source == "none"
    assert not answers[0].found
    assert warnings_of(logs) == [GEO_DATABASE_NOT_CONFIGURED, GEO_DATABASE_NOT_CONFIGURED]
    assert sorted(e["role"] for e in logs) == ["asn", "country"]
    assert resolver.database_build_id() == "country=absent;asn=absent"


def test_missing_files_answer_empty_with_one_warning_each(tmp_path: Path) -> None:
    clock = FakeClock()
    with capture_logs() as logs:
        resolver = MmdbResolver(
            str(tmp_path / "country.mmdb"), str(tmp_path / "asn.mmdb"), clock=clock
        )
        for _ in range(5):
            clock.now += 60
            assert resolver.lookup("89.160.20.112") == GeoAnswer(ip="89.160.20.112")
            resolver.maybe_reload(force=True)
    assert warnings_of(logs) == [GEO_DATABASE_MISSING, GEO_DATABASE_MISSING]
    assert {e["path"] for e in logs} == {str(tmp_path / "country.mmdb"), str(tmp_path / "asn.mmdb")}


def test_unreadable_and_wrong_type_files_warn_once(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mmdb"
    garbage.write_bytes(b"this is not a MaxMind database\n" * 10)
    with capture_logs() as logs:
        resolver = MmdbResolver(str(garbage), COUNTRY)  # a Country DB cannot answer ASN
        for _ in range(3):
            assert resolver.lookup("89.160.20.112").source == "none"
            resolver.maybe_reload(force=True)
    assert sorted(warnings_of(logs)) == [GEO_DATABASE_UNREADABLE, GEO_DATABASE_WRONG_TYPE]


def test_only_one_database_present(tmp_path: Path) -> None:
    with capture_logs() as logs:
        resolver = MmdbResolver(str(tmp_path / "gone.mmdb"), ASN)
    answer = resolver.lookup("89.160.20.112")
    assert (answer.country_code, answer.asn, answer.source) == ("", "AS29518", "mmdb")
    check_network(answer, "89.160.0.0/17")
    assert warnings_of(logs) == [GEO_DATABASE_MISSING]
    assert resolver.database_build_id() == f"country=absent;asn=GeoLite2-ASN@{BUILD_EPOCH}"


def test_atomically_replaced_file_is_picked_up_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "country.mmdb"
    shutil.copyfile(COUNTRY, path)
    clock = FakeClock()
    resolver = MmdbResolver(str(path), "", clock=clock, check_interval=5.0)
    before = resolver.database_build_id()
    assert resolver.lookup("175.16.199.1").country_code == ""

    staging = tmp_path / "country.mmdb.tmp"
    shutil.copyfile(CITY, staging)
    os.replace(staging, path)

    # Within the check interval the file is not even looked at.
    clock.now += 4.9
    assert resolver.lookup("175.16.199.1").country_code == ""
    clock.now += 0.2
    with capture_logs() as logs:
        assert resolver.lookup("175.16.199.1").country_code == "CN"
    assert [e["event"] for e in logs] == [GEO_DATABASE_LOADED]
    assert resolver.database_build_id() != before
    assert resolver.database_build_id().startswith("country=GeoIP2-City@")


def test_file_copied_over_in_place_is_picked_up(tmp_path: Path) -> None:
    path = tmp_path / "country.mmdb"
    shutil.copyfile(COUNTRY, path)
    resolver = MmdbResolver(str(path), "")
    assert resolver.lookup("214.78.0.1").country_code == "US"
    shutil.copyfile(CITY, path)  # same inode, new size
    assert resolver.maybe_reload() is False  # throttled: the first check is still fresh
    assert resolver.maybe_reload(force=True) is True
    assert resolver.lookup("214.78.0.1").country_code == ""  # not in the City DB
    assert resolver.lookup("175.16.199.1").country_code == "CN"
    assert resolver.maybe_reload(force=True) is False  # unchanged file: no reopen


def test_asn_database_appearing_later_is_used(tmp_path: Path) -> None:
    path = tmp_path / "asn.mmdb"
    clock = FakeClock()
    with capture_logs() as logs:
        resolver = MmdbResolver(COUNTRY, str(path), clock=clock)
        assert resolver.lookup("89.160.20.112").asn == ""
        shutil.copyfile(ASN, path)
        clock.now += 10
        answer = resolver.lookup("89.160.20.112")
    assert (answer.country_code, answer.asn) == ("SE", "AS29518")
    assert [e["event"] for e in logs] == [
        GEO_DATABASE_LOADED,
        GEO_DATABASE_MISSING,
        GEO_DATABASE_LOADED,
    ]


def test_vanished_file_keeps_the_open_reader_and_warns_once(tmp_path: Path) -> None:
    path = tmp_path / "asn.mmdb"
    shutil.copyfile(ASN, path)
    resolver = MmdbResolver("", str(path))
    path.unlink()
    with capture_logs() as logs:
        for _ in range(3):
            resolver.maybe_reload(force=True)
            assert resolver.lookup("1.0.0.1").asn == "AS15169"
    assert warnings_of(logs) == [GEO_DATABASE_MISSING]


def test_reload_check_stats_at_most_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "country.mmdb")
    shutil.copyfile(COUNTRY, path)
    clock = FakeClock()
    resolver = MmdbResolver(path, "", clock=clock, check_interval=5.0)
    calls: list[str] = []
    real_stat = os.stat

    def counting_stat(p: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(p) == path:
            calls.append(path)
        return real_stat(p, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)  # lookup.py calls os.stat
    for _ in range(48):  # 12 s of lookups, 4 per second: checks due at +5 s and +10 s
        resolver.lookup("89.160.20.112")
        clock.now += 0.25
    assert len(calls) == 2
