"""One exception tree for the whole daemon.

Every error derives from `BanguiError` *and* from the fitting builtin, so callers can
catch either. Each carries the D-Bus error name the edge maps it to, and its message
is one readable sentence that never echoes file contents or secrets.

An error that one module raises and only its caller catches lives beside it, still
in this tree: `DuplicateName` (archive/sources_repo.py), `Fail2banDbMissing`
(archive/f2b_copy.py), `BusUnavailable` (dbus/server.py), and the CLI's `DaemonError`
(cli/bus_client.py), which carries the D-Bus error name of a reply.
"""

from __future__ import annotations

ERROR_PREFIX = "org.bangui.Daemon1.Error."
QUOTE_BYTES = 64


def quote(value: object, limit: int = QUOTE_BYTES) -> str:
    """Quote a caller's value for an error message: at most `limit` bytes of it, escaped.

    A message is one readable sentence whatever the input: everything but printable
    ASCII appears as an `ascii()`-style escape (a terminal or a log line cannot be
    forged through it, and dbus-fast 1.84, Debian bookworm's, writes a non-ASCII
    string's length in characters: the bus would drop the daemon for that reply),
    and a longer value ends in ``... (N chars)``.
    """
    text = value if isinstance(value, str) else str(value)
    shown: list[str] = []
    used = 0
    for char in text:
        if char in "'\\":
            piece = "\\" + char
        elif " " <= char <= "~":
            piece = char
        else:
            piece = ascii(char)[1:-1]
        used += len(piece.encode())
        if used > limit:
            return f"'{''.join(shown)}'... ({len(text)} chars)"
        shown.append(piece)
    return f"'{''.join(shown)}'"


class BanguiError(Exception):
    """Root of every error the daemon raises on purpose."""

    dbus_name = ERROR_PREFIX + "Failed"


class InvalidArgument(BanguiError, ValueError):
    """Malformed address, unknown jail, page size out of range, bad filter."""

    dbus_name = ERROR_PREFIX + "InvalidArgument"


class DownloadFailed(BanguiError, OSError):
    """A blocklist could not be downloaded (network, HTTP status, size, time, format)."""

    dbus_name = ERROR_PREFIX + "DownloadFailed"


class NotFound(BanguiError, LookupError):
    """Unknown source id or task name."""

    dbus_name = ERROR_PREFIX + "NotFound"


class Fail2banUnavailable(BanguiError, ConnectionError):
    """fail2ban's socket is down or did not answer in time."""

    dbus_name = ERROR_PREFIX + "Fail2banUnavailable"


class Fail2banProtocolError(Fail2banUnavailable):
    """fail2ban answered something that is not a well-formed reply."""


class Fail2banCommandError(BanguiError, RuntimeError):
    """fail2ban understood the command and refused it (e.g. an unknown jail)."""

    def __init__(self, remote_class: str, message: str) -> None:
        super().__init__(f"fail2ban refused the command: {remote_class}: {message}")
        self.remote_class = remote_class
        self.remote_message = message


class Busy(BanguiError, RuntimeError):
    """The same import or task is already running."""

    dbus_name = ERROR_PREFIX + "Busy"


class Refused(BanguiError, ValueError):
    """A safety rule refused the action (e.g. banning a loopback address)."""

    dbus_name = ERROR_PREFIX + "Refused"


class AccessDenied(BanguiError, PermissionError):
    """An admin method was called by a caller that is not an admin."""

    dbus_name = "org.freedesktop.DBus.Error.AccessDenied"


class ConfigError(BanguiError, ValueError):
    """A config key is unknown or has a wrong type or value; the message names it."""


class ArchiveOpenError(BanguiError, OSError):
    """The archive file cannot be created or opened at its path (the start names the key)."""


class SchemaTooNew(BanguiError, RuntimeError):
    """The archive was written by a newer bangui-daemon than this one."""


class NotEnoughSpace(BanguiError, OSError):
    """A schema migration would not fit on the archive's filesystem; nothing was changed."""
