"""Prometheus metrics against the real daemon, bus and fail2ban (issue 14).

`/metrics` is scraped over loopback and parsed with prometheus_client's own parser,
the textfile is read back the same way.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.daemon import DaemonProcess
from tests.harness.fail2ban import F2bSandbox
from tests.harness.util import wait_until

F2B_FAMILIES = (
    "f2b_up",
    "f2b_errors",
    "f2b_jail_count",
    "f2b_jail_banned_current",
    "f2b_jail_failed_current",
    "f2b_jail_banned_total",
    "f2b_jail_failed_total",
    "f2b_config_jail_ban_time",
    "f2b_config_jail_find_time",
    "f2b_config_jail_max_retries",
    "f2b_version",
)

DaemonStarter = Callable[..., DaemonProcess]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # loopback only
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text: str = response.read().decode()
        return text


def samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


@pytest.fixture
def metrics_daemon(start_daemon: DaemonStarter, tmp_path: Path) -> tuple[DaemonProcess, str, Path]:
    port = _free_port()
    textfile = tmp_path / "prom" / "bangui.prom"
    textfile.parent.mkdir()
    daemon = start_daemon(
        metrics={
            "listen": f"127.0.0.1:{port}",
            "textfile": str(textfile),
            "textfile_interval": 0.5,
        }
    )
    return daemon, f"http://127.0.0.1:{port}/metrics", textfile


def test_metrics_drop_in_families_follow_fail2ban(
    f2b: F2bSandbox, metrics_daemon: tuple[DaemonProcess, str, Path]
) -> None:
    _, url, textfile = metrics_daemon
    f2b.client("set", "sshd", "banip", "45.1.2.3", "45.1.2.4", "2001:4860::8888")
    expected = len(f2b.banned("sshd"))
    assert expected == 3

    key = ("f2b_jail_banned_current", (("jail", "sshd"),))
    wait_until(lambda: samples(scrape(url)).get(key) == expected, 10, "banned count in /metrics")
    # the settings come from the metrics task, a moment after the first scrape
    settings = ("f2b_config_jail_ban_time", (("jail", "sshd"),))
    wait_until(lambda: settings in samples(scrape(url)), 10, "jail settings in /metrics")

    text = scrape(url)
    got = samples(text)
    for name in F2B_FAMILIES:
        assert f"# HELP {name} " in text, name
        assert f"# TYPE {name} " in text, name
    assert got[("f2b_up", ())] == 1
    assert got[("f2b_jail_count", ())] == 2
    assert got[settings] == 3600
    assert got[("f2b_config_jail_max_retries", (("jail", "sshd"),))] == 3
    assert got[("f2b_config_jail_find_time", (("jail", "sshd"),))] == 600
    assert ("f2b_errors", (("type", "db"),)) in got  # the exporter's name, no _total
    version = [labels for name, labels in got if name == "f2b_version"]
    assert version == [(("version", f2b.client("version")),)]
    for _, labels in got:
        for label, value in labels:
            assert not _is_address(value), (label, value)

    # the textfile: written atomically, parses, no temp file left behind
    wait_until(textfile.exists, 10, "the textfile")
    from_file = samples(textfile.read_text())
    assert ("f2b_jail_banned_current", (("jail", "sshd"),)) in from_file
    assert [p.name for p in textfile.parent.iterdir()] == ["bangui.prom"]


def test_metrics_say_fail2ban_is_down_and_keep_answering(
    f2b: F2bSandbox, metrics_daemon: tuple[DaemonProcess, str, Path]
) -> None:
    _, url, _ = metrics_daemon
    wait_until(lambda: samples(scrape(url)).get(("f2b_up", ())) == 1, 10, "f2b_up 1")
    f2b.stop()
    wait_until(lambda: samples(scrape(url)).get(("f2b_up", ())) == 0, 15, "f2b_up 0")
    got = samples(scrape(url))
    assert not [k for k in got if k[0] == "f2b_jail_banned_current"]
    assert got[("f2b_errors", (("type", "socket"),))] >= 1


def test_archive_counters_survive_a_daemon_restart(
    f2b: F2bSandbox, metrics_daemon: tuple[DaemonProcess, str, Path]
) -> None:
    daemon, url, _ = metrics_daemon
    f2b.client("set", "sshd", "banip", "45.9.9.9")
    key = (
        "bangui_ban_events_total",
        (("action", "ban"), ("jail", "sshd"), ("origin", "selfblock")),
    )
    wait_until(lambda: samples(scrape(url)).get(key) == 1, 10, "the archived ban counted")
    daemon.stop()
    daemon.start()
    assert samples(scrape(url))[key] == 1
