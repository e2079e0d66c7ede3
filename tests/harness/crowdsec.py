"""A real CrowdSec Local API in a temp dir: Debian's `crowdsec -no-cs -no-capi`.

Only the API server runs (no log acquisition, no Central API), on a loopback port,
with its own sqlite DB and config below the temp dir; `cscli -c CONFIG` drives it.
The host's /etc/crowdsec and /var/lib/crowdsec are only read (profiles, hub index).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.harness.util import HarnessError, stop_process, wait_until

PROFILES = Path("/etc/crowdsec/profiles.yaml")


def missing() -> str | None:
    """Why a Local API cannot run here, or None."""
    for tool in ("crowdsec", "cscli"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/install-deps.sh installs crowdsec)"
    if not PROFILES.exists():
        return f"{PROFILES} is missing"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LapiSandbox:
    """`start()`, then `cscli(...)`, `bouncer_key()`, `machine(...)`; `close()` stops it."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bgt-crowdsec-"))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.config = self.root / "config.yaml"
        self.proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> None:
        etc, data, logs = self.root / "etc", self.root / "data", self.root / "log"
        for d in (etc, data, logs, etc / "notifications"):
            d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PROFILES, etc / "profiles.yaml")
        (etc / "simulation.yaml").write_text("simulation: off\n")
        (etc / "local_api_credentials.yaml").write_text("")
        self.config.write_text(
            f"""common:
  daemonize: false
  log_media: file
  log_level: info
  log_dir: {logs}
config_paths:
  config_dir: {etc}
  data_dir: {data}
  simulation_path: {etc}/simulation.yaml
  hub_dir: /var/lib/crowdsec/hub/
  index_path: /var/lib/crowdsec/hub/.index.json
  notification_dir: {etc}/notifications
  plugin_dir: /usr/lib/crowdsec/plugins/
db_config:
  type: sqlite
  db_path: {data}/crowdsec.db
  use_wal: true
  log_level: info
api:
  client:
    credentials_path: {etc}/local_api_credentials.yaml
  server:
    log_level: info
    listen_uri: 127.0.0.1:{self.port}
    profiles_path: {etc}/profiles.yaml
    trusted_ips: [127.0.0.1]
prometheus:
  enabled: false
"""
        )

    def start(self) -> LapiSandbox:
        self._write_config()
        self.proc = subprocess.Popen(
            ["crowdsec", "-c", str(self.config), "-no-cs", "-no-capi"],
            stdout=(self.root / "crowdsec.out").open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        wait_until(self._listening, 30, "the CrowdSec Local API")
        # cscli talks to the LAPI as a machine of its own
        self.cscli(
            "machines", "add", "cscli-local", "--auto", "--force",
            "-f", str(self.root / "etc" / "local_api_credentials.yaml"),
        )  # fmt: skip
        return self

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise HarnessError(f"crowdsec exited: {(self.root / 'crowdsec.out').read_text()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def cscli(self, *args: str, timeout: float = 60) -> str:
        for _attempt in range(3):
            r = subprocess.run(
                ["cscli", "-c", str(self.config), *args],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            # the LAPI's own sqlite is busy now and then under load: that is not ours
            if r.returncode == 0 or "database is locked" not in r.stderr:
                break
        if r.returncode != 0:
            raise HarnessError(f"cscli {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def bouncer_key(self, name: str = "bangui") -> str:
        return self.cscli("bouncers", "add", name, "-o", "raw").strip()

    def machine(self, name: str, password: str) -> None:
        self.cscli(
            "machines", "add", name, "--password", password, "--force",
            "-f", str(self.root / f"{name}.yaml"),
        )  # fmt: skip

    def decisions(self) -> list[dict[str, Any]]:
        """Active decisions as `cscli decisions list -o json` shows them (flattened)."""
        alerts = json.loads(self.cscli("decisions", "list", "-o", "json") or "null") or []
        return [d for alert in alerts for d in alert.get("decisions") or []]

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)
