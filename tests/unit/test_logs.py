"""Logging: JSON/logfmt lines parse and carry event + fields; stdlib goes the same way."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from bangui_daemon.logs import _syslog_priority, configure_logging, get_logger, report_error

_LOGFMT_PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line: str) -> dict[str, str]:
    """Parse one logfmt line (quoted values unescaped) the way log shippers do."""
    fields: dict[str, str] = {}
    for key, raw in _LOGFMT_PAIR.findall(line):
        value = raw
        if raw.startswith('"'):
            value = re.sub(
                r"\\(.)",
                lambda m: {"n": "\n", "r": "\r", "t": "\t"}.get(m.group(1), m.group(1)),
                raw[1:-1],
            )
        fields[key] = value
    return fields


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Leave structlog and the root logger as other tests expect them."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # configure_logging sets it
    saved = structlog.get_config()
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    structlog.configure(**saved)
    structlog.contextvars.clear_contextvars()


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_carry_event_and_fields() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    log = get_logger(task="history_sync")
    log.info("history_sync_complete", rows=3, jail="sshd", note='a "b"\nc')
    log.warning("blocklist_download_failed", source_id=7)
    first, second = (json.loads(line) for line in lines(out))
    assert first["event"] == "history_sync_complete"
    assert first["level"] == "info"
    assert first["task"] == "history_sync"
    assert first["rows"] == 3
    assert first["note"] == 'a "b"\nc'
    assert first["timestamp"].endswith("Z")
    assert list(first)[:3] == ["timestamp", "level", "event"]
    assert (second["event"], second["level"], second["source_id"]) == (
        "blocklist_download_failed",
        "warning",
        7,
    )


def test_logfmt_lines_carry_event_and_fields() -> None:
    out = io.StringIO()
    configure_logging("info", "logfmt", stream=out)
    get_logger().info(
        "blocklist_import_lost_race",
        source_id=3,
        url="https://x.example/a b=c",
        path="C:\\lists",
        text="line1\nline2",
        ok=True,
        missing=None,
    )
    [line] = lines(out)
    fields = parse_logfmt(line)
    assert fields["event"] == "blocklist_import_lost_race"
    assert fields["level"] == "info"
    assert fields["source_id"] == "3"
    assert fields["url"] == "https://x.example/a b=c"
    assert fields["path"] == "C:\\lists"
    assert fields["text"] == "line1\nline2"
    assert fields["ok"] == "true"
    assert fields["missing"] == ""
    assert "timestamp" in fields
    assert line.startswith("timestamp=")


def test_stdlib_records_go_through_the_same_renderer() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    logging.getLogger("aiohttp.client").warning("retrying %s after %d s", "GET", 2)
    logging.getLogger("asyncio").debug("hidden below the threshold")
    [record] = [json.loads(line) for line in lines(out)]
    assert record["event"] == "retrying GET after 2 s"
    assert record["logger"] == "aiohttp.client"
    assert record["level"] == "warning"
    assert "timestamp" in record


def test_stdlib_records_in_logfmt() -> None:
    out = io.StringIO()
    configure_logging("debug", "logfmt", stream=out)
    logging.getLogger("asyncio").error("Task exception was never retrieved")
    [line] = lines(out)
    fields = parse_logfmt(line)
    assert fields["event"] == "Task exception was never retrieved"
    assert fields["logger"] == "asyncio"
    assert fields["level"] == "error"


def test_level_threshold_applies_to_both() -> None:
    out = io.StringIO()
    configure_logging("warning", "json", stream=out)
    log = get_logger()
    log.info("dropped")
    log.debug("dropped")
    logging.getLogger("aiohttp").info("dropped")
    log.error("kept_error")
    logging.getLogger("aiohttp").warning("kept")
    assert [json.loads(line)["event"] for line in lines(out)] == ["kept_error", "kept"]


@pytest.mark.parametrize("fmt", ["json", "logfmt"])
def test_exception_stays_on_one_line(fmt: str) -> None:
    out = io.StringIO()
    configure_logging("info", fmt, stream=out)
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        get_logger().exception("task_failed", task="geo_resolve")
        logging.getLogger("asyncio").exception("loop_error")
    ours, theirs = lines(out)
    parse = json.loads if fmt == "json" else parse_logfmt
    for line, event in ((ours, "task_failed"), (theirs, "loop_error")):
        fields = parse(line)
        assert fields["event"] == event
        assert fields["level"] == "error"
        assert "ZeroDivisionError: boom" in fields["exception"]
        assert "Traceback" in fields["exception"]


def test_contextvars_are_merged() -> None:
    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    structlog.contextvars.bind_contextvars(dbus_method="BanIP")
    get_logger().info("ban_requested", ip="192.0.2.1")
    logging.getLogger("aiohttp").warning("stdlib too")
    ours, theirs = (json.loads(line) for line in lines(out))
    assert ours["dbus_method"] == "BanIP"
    assert ours["ip"] == "192.0.2.1"
    assert theirs["dbus_method"] == "BanIP"


def test_logger_created_before_configure_follows_reconfigure() -> None:
    """Module-level loggers (made at import time) follow configure and SIGHUP."""
    log = get_logger(task="ban_watch")
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", stream=first)
    log.info("ban_watch_tick")
    bound = log.bind(run=1)
    configure_logging("info", "logfmt", stream=second)
    log.info("ban_watch_tick")
    bound.info("ban_watch_tick")
    assert json.loads(first.getvalue())["task"] == "ban_watch"
    assert len(lines(first)) == 1  # the old handler is gone
    plain, with_run = (parse_logfmt(line) for line in lines(second))
    assert plain["task"] == "ban_watch"
    assert with_run["run"] == "1"


def test_auto_is_json_off_tty_and_off_journal() -> None:
    out = io.StringIO()
    configure_logging("info", "auto", stream=out)
    get_logger().info("started", version="0.1.0")
    assert json.loads(out.getvalue())["event"] == "started"


def _journal_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> io.TextIOWrapper:
    stream = open(tmp_path / "journal", "w+", encoding="utf-8")  # noqa: SIM115
    st = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    return stream


def test_auto_under_journald_is_logfmt_with_priority_and_no_timestamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _journal_file(tmp_path, monkeypatch) as stream:
        configure_logging("debug", "auto", stream=stream)
        log = get_logger()
        log.debug("geo_cache_miss", ip="192.0.2.1")
        log.info("history_sync_complete", rows=2)
        log.warning("fail2ban_slow")
        log.error("fail2ban_unavailable")
        log.critical("archive_corrupt")
        logging.getLogger("aiohttp").error("stdlib error")
        stream.seek(0)
        got = stream.read().splitlines()
    priorities = [line[: line.index(">") + 1] for line in got]
    assert priorities == ["<7>", "<6>", "<4>", "<3>", "<2>", "<3>"]
    for line in got:
        fields = parse_logfmt(line[3:])
        assert "timestamp" not in fields
        assert fields["event"]
    assert parse_logfmt(got[1][3:])["rows"] == "2"


def test_journald_prefix_also_for_forced_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _journal_file(tmp_path, monkeypatch) as stream:
        configure_logging("info", "json", stream=stream)
        get_logger().error("task_failed", task="history_sync")
        stream.seek(0)
        line = stream.read().rstrip("\n")
    assert line.startswith("<3>{")
    record = json.loads(line[3:])
    assert record["event"] == "task_failed"
    assert "timestamp" not in record


@pytest.mark.parametrize(
    ("levelno", "priority"),
    [
        (logging.DEBUG, 7),
        (5, 7),
        (logging.INFO, 6),
        (25, 6),
        (logging.WARNING, 4),
        (35, 4),
        (logging.ERROR, 3),
        (logging.CRITICAL, 2),
        (60, 2),
    ],
)
def test_syslog_priority_of_every_level(levelno: int, priority: int) -> None:
    """sd-daemon(3): 7 debug, 6 info, 4 warning, 3 err, 2 crit; in-between levels round down."""
    assert _syslog_priority(levelno) == priority


def test_every_line_of_a_multi_line_entry_carries_the_priority(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """journald reads `<N>` per line: a console traceback must not drop to info midway."""
    with _journal_file(tmp_path, monkeypatch) as stream:
        configure_logging("info", "console", stream=stream)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            get_logger().exception("task_crashed")
        stream.seek(0)
        got = stream.read().splitlines()
    assert len(got) > 3
    assert all(line.startswith("<3>") for line in got), got


def test_an_uncaught_exception_is_one_critical_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _journal_file(tmp_path, monkeypatch) as stream:
        configure_logging("info", "auto", stream=stream)
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            sys.excepthook(*sys.exc_info())  # what the interpreter calls at a crash
        stream.seek(0)
        [line] = stream.read().splitlines()
    assert line.startswith("<2>")
    fields = parse_logfmt(line[3:])
    assert fields["event"] == "uncaught_exception"
    assert "RuntimeError: boom" in fields["exception"]


@pytest.mark.parametrize("value", ["", "garbage", "1:", ":2", "a:b", "1:2:3"])
def test_a_malformed_journal_stream_is_not_the_journal(
    value: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", value)
    with open(tmp_path / "err", "w+", encoding="utf-8") as stream:
        configure_logging("info", "auto", stream=stream)
        get_logger().warning("fail2ban_slow")
        stream.seek(0)
        record = json.loads(stream.read())
    assert record["event"] == "fail2ban_slow"
    assert "timestamp" in record


def test_report_error_before_logging_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "bangui-daemon: invalid configuration:\n[tasks] ban_watch: must be > 0"
    plain = io.StringIO()
    report_error(text, stream=plain)
    assert plain.getvalue() == text + "\n"
    with _journal_file(tmp_path, monkeypatch) as stream:
        report_error(text, stream=stream)
        stream.seek(0)
        assert stream.read().splitlines() == [
            "<3>bangui-daemon: invalid configuration:",
            "<3>[tasks] ban_watch: must be > 0",
        ]


def test_the_daemon_reports_a_bad_config_to_the_journal_as_an_error(tmp_path: Path) -> None:
    """The real entry point, with stderr as the journal would hand it over."""
    config = tmp_path / "bangui.toml"
    config.write_text("[tasks]\nban_watch = -1\n")
    with open(tmp_path / "journal", "w+b") as journal:
        st = os.fstat(journal.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        r = subprocess.run(
            [sys.executable, "-m", "bangui_daemon", "--config", str(config)],
            stderr=journal, stdout=subprocess.DEVNULL, env=env, timeout=60, check=False,
        )  # fmt: skip
        journal.seek(0)
        lines = journal.read().decode().splitlines()
    assert r.returncode == 2
    assert lines[0] == "<3>bangui-daemon: invalid configuration:"
    assert len(lines) > 1
    assert all(line.startswith("<3>") for line in lines), lines


def test_inherited_journal_stream_of_another_file_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$JOURNAL_STREAM names another file (inherited): the stream is not the journal."""
    with _journal_file(tmp_path, monkeypatch), open(tmp_path / "other", "w+") as stream:
        configure_logging("info", "auto", stream=stream)
        get_logger().info("started")
        stream.seek(0)
        record = json.loads(stream.read())
    assert record["event"] == "started"
    assert "timestamp" in record


def test_auto_on_a_tty_is_console() -> None:
    master, slave = os.openpty()
    try:
        with open(slave, "w", encoding="utf-8", closefd=True) as tty:
            configure_logging("info", "auto", stream=tty)
            get_logger().info("console_event", answer=42)
            tty.flush()
            text = os.read(master, 65536).decode()
    finally:
        os.close(master)
    assert "console_event" in text
    assert "answer" in text
    assert not text.lstrip().startswith("{")


def test_forced_console_off_tty_has_no_colours() -> None:
    out = io.StringIO()
    configure_logging("info", "console", stream=out)
    get_logger().info("console_event", answer=42)
    logging.getLogger("aiohttp").warning("stdlib too")
    text = out.getvalue()
    assert "console_event" in text
    assert "answer=42" in text
    assert "stdlib too" in text
    assert "\x1b[" not in text


def test_default_stream_is_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    get_logger().info("to_stderr")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err.splitlines()[-1])["event"] == "to_stderr"


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "json"), ("info", "xml")])
def test_unknown_level_or_format_is_refused(level: str, fmt: str) -> None:
    with pytest.raises(ValueError, match="unknown log"):
        configure_logging(level, fmt, stream=io.StringIO())
