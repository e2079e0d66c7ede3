"""The main job on an embedded default, end to end, with nothing of the host touched.

Brings up a private system-like D-Bus, a sandboxed real fail2ban-server (dummy
actions only: no firewall is changed) and bangui-daemon with MaxMind's small test
databases; writes failed logins into fail2ban's watched log; and shows the ban the
way a sysadmin would see it: `banguictl status`, a live `banguictl watch` line,
`banguictl bans`, and `banguictl ip`.

Run through scripts/demo.sh, which installs what is missing first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness import DaemonProcess, F2bSandbox, PrivateSystemBus  # noqa: E402

ATTACKER = "89.160.20.112"  # in MaxMind's test data: SE, AS29518 Bredband2 AB
GEOIP = REPO / "tests" / "data" / "geoip"


def banguictl(address: str, *args: str, check: bool = True) -> str:
    """Run banguictl the way a person would and echo what it prints."""
    print(f"\n$ banguictl {' '.join(args)}", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "bangui_daemon.cli.banguictl", "--bus", address, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        print(result.stderr, end="", file=sys.stderr)
        if check:
            raise SystemExit(f"banguictl {args[0]} failed with exit code {result.returncode}")
    return result.stdout


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bangui-demo-"))
    geo = work / "geoip"
    geo.mkdir()
    shutil.copy(GEOIP / "GeoLite2-Country-Test.mmdb", geo / "GeoLite2-Country.mmdb")
    shutil.copy(GEOIP / "GeoLite2-ASN-Test.mmdb", geo / "GeoLite2-ASN.mmdb")
    config = {
        "geo": {
            "country_db": str(geo / "GeoLite2-Country.mmdb"),
            "asn_db": str(geo / "GeoLite2-ASN.mmdb"),
        },
        "tasks": {"ban_watch": 1, "geo_resolve": 2, "history_sync": 5},
        "log": {"level": "info", "format": "logfmt"},
    }
    print("== starting a private system bus, a sandboxed fail2ban-server and bangui-daemon")
    with F2bSandbox() as f2b, PrivateSystemBus() as bus:
        print(f"   fail2ban sandbox: {f2b.root} (dummy actions, no firewall)")
        print(f"   bus: {bus.address}")
        with DaemonProcess.from_sandbox(f2b, bus, config, work_dir=work / "daemon") as daemon:
            address = bus.address
            banguictl(address, "status")
            watch = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bangui_daemon.cli.banguictl",
                    "--bus",
                    address,
                    "watch",
                    "--count",
                    "1",
                    "--filter",
                    "BanAdded",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            assert watch.stdout is not None
            assert watch.stderr is not None
            watch.stderr.readline()  # "watching ...": its subscription is in place
            banguictl(address, "jails")
            print(f"\n== writing 4 failed ssh logins from {ATTACKER} into fail2ban's log")
            f2b.write_failed_logins(ATTACKER, 4)
            f2b.wait_banned("sshd", ATTACKER)
            print("\n$ banguictl watch   (a live line per signal)")
            try:
                out, err = watch.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                watch.kill()
                out, err = watch.communicate()
            print(out, end="")
            if watch.returncode != 0:
                print(err, end="", file=sys.stderr)
                raise SystemExit("banguictl watch saw no BanAdded signal")
            banguictl(address, "run", "geo_resolve")
            banguictl(address, "bans")
            banguictl(address, "run", "history_sync")
            banguictl(address, "ip", ATTACKER)
            banguictl(address, "status")
            print("\n== stopping (SIGTERM): exit code", daemon.stop())
    shutil.rmtree(work, ignore_errors=True)
    print("== demo finished: nothing was left running and the host firewall was never touched")
    return 0


if __name__ == "__main__":
    sys.exit(main())
