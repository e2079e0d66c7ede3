"""A client process whose output lines are read as they come, with their arrival time."""

from __future__ import annotations

import queue
import re
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import IO

import pytest


class LiveProcess:
    """A running banguictl whose stdout/stderr lines are read as they come."""

    def __init__(self, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            argv,
            env=dict(env) if env is not None else None,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[tuple[str, str, float]] = queue.Queue()
        self.seen: list[tuple[str, str, float]] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr)):
            threading.Thread(target=self._read, args=(name, stream), daemon=True).start()

    def _read(self, name: str, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put((name, line.rstrip("\n"), time.monotonic()))

    def mark(self) -> int:
        """A position in the output: ``wait_line(..., since=mark)`` sees only later lines."""
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return len(self.seen)

    def wait_line(
        self, stream: str, pattern: str, timeout: float, *, since: int = 0
    ) -> tuple[str, float]:
        """The first line of ``stream`` matching ``pattern`` (from ``since`` on), and when."""
        deadline = time.monotonic() + timeout
        checked = since
        while True:
            for name, line, at in self.seen[checked:]:
                if name == stream and re.search(pattern, line):
                    return line, at
            checked = max(checked, len(self.seen))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.proc.kill()
                pytest.fail(f"no {stream} line matching {pattern!r} in {timeout} s: {self.seen}")
            try:
                self.seen.append(self.lines.get(timeout=remaining))
            except queue.Empty:
                continue

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
