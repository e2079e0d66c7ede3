"""structlog for a systemd daemon: one event name per line, data in key=value fields.

Everything (our structlog events and stdlib records from aiohttp, asyncio, ...) goes
through the stdlib root logger and one `ProcessorFormatter`, so there is exactly one
renderer and one level threshold. The structlog processor chain never changes between
calls of `configure_logging`; only the handler does, so re-configuring on SIGHUP
reaches loggers that modules created at import time.

Works with structlog 22.3 (Debian bookworm) and current releases: it only uses APIs
that exist in both, and renders logfmt itself because 22.3's `LogfmtRenderer` lets
newlines through, which would split one event over several journal entries.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from types import TracebackType
from typing import Any, Final, TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from bangui_daemon.config import LOG_FORMATS, LOG_LEVELS

__all__ = ["configure_logging", "get_logger", "report_error"]

# The names are the config's ([log] level/format); stdlib knows their numbers.
_THRESHOLDS: Final[dict[str, int]] = {
    name: logging.getLevelNamesMapping()[name.upper()] for name in LOG_LEVELS
}

_HANDLER_NAME: Final = "bangui-daemon"
# Keys rendered first, in this order, by the JSON and logfmt renderers.
_LEADING_KEYS: Final = ("timestamp", "level", "event", "logger")
_LOGFMT_ESCAPES: Final = str.maketrans(
    {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
)
_CONTROL_CHARS: Final = re.compile(r"[\x00-\x1f\x7f]")
_BAD_KEY_CHARS: Final = re.compile(r'[\x00-\x20="\x7f]')


def _syslog_priority(levelno: int) -> int:
    """Map a stdlib level to the syslog priority journald reads from `<N>`.

    Levels between the named ones (e.g. 25) take the priority of the one below.
    """
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def _with_priority(text: str, levelno: int) -> str:
    """Prefix every line with `<N>`: journald (SyslogLevelPrefix=yes, the default)
    reads the prefix per line, strips it and stores N as the entry's PRIORITY."""
    prefix = f"<{_syslog_priority(levelno)}>"
    return "\n".join(prefix + line for line in text.split("\n"))


def _is_journal(stream: TextIO) -> bool:
    """Tell whether *stream* is the journal, as systemd.exec(5) says to check.

    `$JOURNAL_STREAM` is inherited by children whose stderr may point elsewhere, so
    the device:inode it names must match the stream's own file descriptor.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep:
        return False
    try:
        stat = os.fstat(stream.fileno())
        return stat.st_dev == int(device) and stat.st_ino == int(inode)
    except (AttributeError, OSError, ValueError):
        return False


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, OSError, ValueError):
        return False


def _add_record_fields(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Take level (and, for stdlib records, the logger name) from the LogRecord.

    The record is the one source both kinds of log lines share, so `warn`/`exception`
    method names and foreign loggers all end up with the same level spelling.
    """
    record: logging.LogRecord = event_dict["_record"]
    event_dict["level"] = record.levelname.lower()
    if not event_dict["_from_structlog"]:
        event_dict.setdefault("logger", record.name)
    return event_dict


def _leading_keys_first(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Put timestamp/level/event first so lines read well and diff well."""
    ordered = {key: event_dict.pop(key) for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return ordered


def _logfmt_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    escaped = text.translate(_LOGFMT_ESCAPES)
    escaped = _CONTROL_CHARS.sub(lambda m: f"\\u{ord(m.group()):04x}", escaped)
    if text and escaped == text and not any(c in text for c in ' ="'):
        return text
    return f'"{escaped}"'


def _render_logfmt(_: WrappedLogger, __: str, event_dict: EventDict) -> str:
    """Render one line of logfmt; values are quoted and escaped when needed."""
    return " ".join(
        f"{_BAD_KEY_CHARS.sub('_', str(key)) or '_'}={_logfmt_value(value)}"
        for key, value in event_dict.items()
    )


class _Formatter(structlog.stdlib.ProcessorFormatter):
    """ProcessorFormatter that adds journald's `<N>` priority prefix to each line."""

    def __init__(self, *, journal: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return _with_priority(text, record.levelno) if self._journal else text


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """sys.excepthook: a crash is logged at critical through the configured handler,
    so on the journal it is one entry with priority 2, not lines of priority 6."""
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("bangui_daemon").critical("uncaught_exception", exc_info=(exc_type, exc, tb))


def report_error(text: str, *, stream: TextIO | None = None) -> None:
    """Write a failure that happens before logging is configured (a bad config file).

    On the journal each line gets `<3>`, so `journalctl -p err` shows why the unit
    failed to start; elsewhere the text is written as it is.
    """
    out: TextIO = sys.stderr if stream is None else stream
    out.write((_with_priority(text, logging.ERROR) if _is_journal(out) else text) + "\n")
    out.flush()


def _structlog_chain() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.filter_by_level,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.StackInfoRenderer(),
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ]


def configure_logging(level: str, fmt: str, *, stream: TextIO | None = None) -> None:
    """Send all logs, ours and stdlib's, through one structlog renderer to stderr.

    "auto" picks console on a TTY, logfmt on the journal, JSON otherwise. On the
    journal no timestamp is added (journald stamps every line) and each line gets a
    `<N>` syslog priority so `journalctl -p err` works. Uncaught exceptions are logged
    at critical through the same handler. Safe to call again (SIGHUP).
    """
    threshold = _THRESHOLDS.get(level.lower())
    if threshold is None:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LOG_LEVELS)}")
    fmt = fmt.lower()
    if fmt not in LOG_FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(LOG_FORMATS)}")
    out: TextIO = sys.stderr if stream is None else stream
    journal = _is_journal(out)
    tty = _is_tty(out)
    if fmt == "auto":
        fmt = "console" if tty else "logfmt" if journal else "json"

    processors: list[Processor] = [
        _add_record_fields,
        structlog.stdlib.ProcessorFormatter.remove_processors_meta,
    ]
    if not journal:
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    renderer: Processor
    if fmt == "console":
        # ConsoleRenderer formats exceptions itself (pretty, multi-line).
        renderer = structlog.dev.ConsoleRenderer(colors=tty)
    else:
        processors += [structlog.processors.format_exc_info, _leading_keys_first]
        renderer = structlog.processors.JSONRenderer() if fmt == "json" else _render_logfmt
    processors.append(renderer)

    formatter = _Formatter(
        journal=journal,
        processors=processors,
        foreign_pre_chain=[structlog.contextvars.merge_contextvars],
    )
    # StreamHandler flushes after every record: nothing waits in a buffer.
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(threshold)
    # aiosqlite logs every statement at debug: that drowns our own debug events.
    logging.getLogger("aiosqlite").setLevel(max(threshold, logging.INFO))
    sys.excepthook = _log_uncaught

    structlog.configure(
        processors=_structlog_chain(),
        logger_factory=structlog.stdlib.LoggerFactory(ignore_frame_names=[__name__]),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        # Off: tests swap processors (structlog.testing.capture_logs), which a cached
        # logger would not see; the cost is one dict lookup per call.
        cache_logger_on_first_use=False,
    )


def get_logger(**initial_values: Any) -> structlog.stdlib.BoundLogger:
    """Return a logger with *initial_values* bound (e.g. `task="history_sync"`).

    Safe at import time: the logger is built on first use. Call `.bind()` only after
    `configure_logging` (inside functions), since binding builds it right away.
    """
    return structlog.stdlib.get_logger(**initial_values)
