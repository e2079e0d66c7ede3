"""Small helpers to call the daemon with the real command-line clients and read answers."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from typing import Any

DEST = "org.bangui.Daemon1"
PATH = "/org/bangui/Daemon1"
CORE = "org.bangui.Daemon1"
HISTORY = "org.bangui.Daemon1.History"
BLOCKLISTS = "org.bangui.Daemon1.Blocklists"
GEO = "org.bangui.Daemon1.Geo"

Runner = Callable[..., subprocess.CompletedProcess[str]]


def plain(value: Any) -> Any:
    """busctl --json=short wraps variants as {"type": ..., "data": ...}: unwrap them."""
    if isinstance(value, dict):
        if set(value) == {"type", "data"}:
            return plain(value["data"])
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def call(
    busctl: Runner, iface: str, member: str, signature: str = "", *args: str, user: Any = None
) -> list[Any]:
    """Call a method with busctl and return its out arguments as plain values."""
    argv = ["--json=short", "call", DEST, PATH, iface, member]
    if signature:
        argv += [signature, *args]
    result = busctl(*argv, user=user)
    assert result.returncode == 0, f"{member} failed: {result.stderr.strip()}"
    out: list[Any] = plain(json.loads(result.stdout)["data"])
    return out


def error_name(gdbus: Runner, iface: str, member: str, *args: str, user: Any = None) -> str:
    """Call with gdbus (which prints the D-Bus error name) and return that name."""
    result = gdbus(
        "call",
        "--dest",
        DEST,
        "--object-path",
        PATH,
        "--method",
        f"{iface}.{member}",
        *args,
        user=user,
    )
    assert result.returncode != 0, f"{member} unexpectedly succeeded: {result.stdout}"
    match = re.search(r"GDBus\.Error:([\w.]+)", result.stderr)
    assert match, result.stderr
    return match.group(1)


def get_property(busctl: Runner, name: str, iface: str = CORE) -> Any:
    result = busctl("--json=short", "get-property", DEST, PATH, iface, name)
    assert result.returncode == 0, result.stderr
    return plain(json.loads(result.stdout))
