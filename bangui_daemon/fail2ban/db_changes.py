"""Wake up when fail2ban writes its DB file: inotify, or a short poll where it is missing.

Python has no inotify in its standard library, and a dependency for three libc calls is
not worth it: ctypes calls inotify_init1/inotify_add_watch and the descriptor joins the
event loop (add_reader). The watch is on the file's *directory*, filtered by name, so
it survives fail2ban recreating or replacing the file (a watch on the file itself would
die with its inode) and also reports the file appearing. fail2ban runs its DB with
`journal_mode = MEMORY`: a commit writes the file in place, one IN_MODIFY or more.

Without inotify (not Linux, no libc symbol, watch limit reached, directory missing) the
waiter simply returns every FALLBACK seconds: reading the rows after the mark costs an
index seek, far less than stat()-ing reliably would (mtime granularity hides writes).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import struct
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

FALLBACK = 0.25  # seconds between reads when nothing can tell us about writes

IN_MODIFY = 0x00000002
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
_MASK = (
    IN_MODIFY
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED  # the directory watch ended
_EVENT = struct.Struct("iIII")  # struct inotify_event without its name


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc


class FileChanges:
    """`await wait(timeout)` returns when the file may have changed (or at the timeout)."""

    def __init__(self, path: str, *, fallback: float = FALLBACK) -> None:
        target = Path(path)
        self._dir = str(target.parent)
        name = target.name.encode()
        # sqlite's side files too, in case the admin switched fail2ban's DB to WAL
        self._names = {name, name + b"-journal", name + b"-wal"}
        self._fallback = fallback
        self._fd: int | None = None
        self._changed = asyncio.Event()
        self._libc = _libc()
        self._warned = False

    @property
    def event_driven(self) -> bool:
        """Whether inotify reports writes (False: the waiter polls)."""
        return self._fd is not None

    def start(self) -> bool:
        """Set up the inotify watch; False (and polling) when that is not possible."""
        if self._fd is not None:
            return True
        libc = self._libc
        if libc is None:
            return False
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            self._warn("inotify_init1", ctypes.get_errno())
            return False
        if libc.inotify_add_watch(fd, os.fsencode(self._dir), _MASK) < 0:
            self._warn("inotify_add_watch", ctypes.get_errno())
            os.close(fd)
            return False
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._on_readable)
        self._changed.set()  # whatever happened before the watch: look once
        return True

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)

    async def wait(self, within: float) -> bool:
        """Wait for a write (True) or `within` seconds (False); polling mode waits at
        most FALLBACK and reports a possible write (True). The write stays noted until
        `clear()`: call it just before reading, so writes seen meanwhile are not lost."""
        if self._fd is None and not self.start():
            await asyncio.sleep(min(within, self._fallback))
            return True
        try:
            await asyncio.wait_for(self._changed.wait(), within)
        except TimeoutError:
            return False
        return True

    def clear(self) -> None:
        """Forget the writes noted so far (the caller is about to read them)."""
        self._changed.clear()

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        relevant = gone = False
        while True:
            try:
                data = os.read(fd, 64 * 1024)
            except BlockingIOError:
                break
            except OSError as exc:
                log.warning("inotify_read_failed", error=str(exc))
                gone = True
                break
            if not data:
                break
            offset = 0
            while offset + _EVENT.size <= len(data):
                _wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                start = offset + _EVENT.size
                name = data[start : start + length].rstrip(b"\0")
                offset = start + length
                if mask & IN_Q_OVERFLOW or name in self._names:
                    relevant = True
                if mask & _GONE:
                    gone = relevant = True
        if gone:  # the directory went away: poll until a watch can be set again
            self.close()
        if relevant:
            self._changed.set()

    def _warn(self, call: str, errno: int) -> None:
        if not self._warned:
            self._warned = True
            log.warning(
                "inotify_unavailable",
                call=call,
                error=os.strerror(errno),
                directory=self._dir,
                fallback_seconds=self._fallback,
            )
