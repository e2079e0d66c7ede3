"""The Prometheus text of families, and the atomic textfile (no daemon)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bangui_daemon.metrics.exposition import is_loopback, render, write_textfile
from bangui_daemon.metrics.families import Family

FAMILIES = [
    Family("f2b_errors", "Errors.", "gauge", ("type",)).add(2, "db").add(0, "socket"),
    Family("f2b_jail_banned_total", "Bans.", "gauge", ("jail",)).add(5, "sshd"),
    Family("bangui_task_runs", "Runs.", "counter", ("task",)).add(7, "ban_watch"),
]


def test_names_are_exposed_as_the_exporter_spells_them() -> None:
    text = render(FAMILIES).decode()
    assert "# TYPE f2b_errors gauge" in text
    assert 'f2b_errors{type="db"} 2.0' in text
    assert 'f2b_jail_banned_total{jail="sshd"} 5.0' in text  # a gauge keeps _total
    assert 'bangui_task_runs_total{task="ban_watch"} 7.0' in text  # a counter gets it
    parsed = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert parsed["bangui_task_runs"] == "counter"


def test_label_values_must_match_the_labels() -> None:
    with pytest.raises(ValueError, match="1 label values expected"):
        Family("x", "x", "gauge", ("jail",)).add(1)


def test_textfile_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "bangui.prom"
    path.write_text("old\n")
    assert write_textfile(str(path), FAMILIES) == len(render(FAMILIES))
    assert "f2b_errors" in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert os.listdir(tmp_path) == ["bangui.prom"]


def test_textfile_into_a_missing_directory_fails_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        write_textfile(str(tmp_path / "missing" / "bangui.prom"), FAMILIES)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.0.2.1", False),
        ("metrics.example", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
