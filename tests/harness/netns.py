"""A private network namespace for tests that run ``nft``: the host firewall is never touched.

A holder process (``unshare --net sleep infinity``) keeps the namespace alive for as
long as the test needs it, also while fail2ban is stopped or restarted inside it.
Commands enter it with ``nsenter --net=/proc/PID/ns/net``; path-based unix sockets
(fail2ban's, the bus) work across network namespaces, so nothing else changes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any

from tests.harness.util import REPO_ROOT, HarnessError, StartedOnEnter, stop_process, wait_until


class NetNamespace(StartedOnEnter):
    """An empty network namespace held by a ``sleep`` child; needs root (CAP_SYS_ADMIN)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def path(self) -> str:
        if self.proc is None:
            raise HarnessError("the namespace was never created")
        return f"/proc/{self.proc.pid}/ns/net"

    @property
    def prefix(self) -> list[str]:
        """Prepend to a command to run it inside the namespace."""
        return ["nsenter", f"--net={self.path}", "--"]

    def start(self) -> NetNamespace:
        own = os.readlink("/proc/self/ns/net")
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--", "sleep", "infinity"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        pid = self.proc.pid

        def entered() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise HarnessError(f"unshare --net failed: {err.strip()}")
            try:
                return os.readlink(f"/proc/{pid}/ns/net") != own
            except OSError:
                return False

        wait_until(entered, 10, "the private network namespace")
        return self

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.prefix, *command], capture_output=True, text=True, timeout=120, check=False
        )
        if check and result.returncode != 0:
            raise HarnessError(f"{command} in the namespace failed: {result.stderr.strip()}")
        return result

    def nft_json(self, *args: str) -> list[dict[str, Any]]:
        """``nft -j ARGS`` in the namespace: the list under "nftables"."""
        out = self.run("nft", "-j", *args).stdout
        items: list[dict[str, Any]] = json.loads(out)["nftables"]
        return items

    def tables(self) -> set[str]:
        """``family name`` of every table in the namespace."""
        return {
            f"{item['table']['family']} {item['table']['name']}"
            for item in self.nft_json("list", "tables")
            if "table" in item
        }

    def set_elements(self, table: str, name: str, *, missing_ok: bool = False) -> set[str]:
        """Elements of ``inet TABLE NAME`` as text: ``1.2.3.4``, ``10.0.0.0/8``, ``a-b``.

        With ``missing_ok`` a set that does not exist (yet) reads as empty.
        """
        result = self.run("nft", "-j", "list", "set", "inet", table, name, check=False)
        if result.returncode != 0:
            if missing_ok and "No such file or directory" in result.stderr:
                return set()
            raise HarnessError(f"nft list set {table} {name}: {result.stderr.strip()}")
        out: set[str] = set()
        for item in json.loads(result.stdout)["nftables"]:
            for elem in item.get("set", {}).get("elem", []):
                if isinstance(elem, str):
                    out.add(elem)
                elif "prefix" in elem:
                    out.add(f"{elem['prefix']['addr']}/{elem['prefix']['len']}")
                elif "range" in elem:
                    out.add("-".join(elem["range"]))
                else:
                    raise HarnessError(f"unexpected set element {elem!r}")
        return out

    def close(self) -> None:
        proc = self.proc
        if proc is not None:
            stop_process(proc, sig=signal.SIGKILL)
            if proc.stderr is not None:
                proc.stderr.close()


# the batched nftables action, as the checkout has it (tests load it from here)
NFTSET_ACTION = REPO_ROOT / "fail2ban" / "action.d" / "bangui-nftset.py"
