"""The CrowdSec bridge against a real Local API (Debian's crowdsec, offline, loopback).

Pull: decisions made with `cscli` reach fail2ban's blocklist jail through the import
machinery. Push: a ban in sshd shows up in `cscli decisions list`, and its unban
removes it again.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import crowdsec
from tests.harness.crowdsec import LapiSandbox
from tests.harness.daemon import DaemonProcess
from tests.harness.fail2ban import JAIL_BLOCKLIST, F2bSandbox
from tests.harness.util import wait_until
from tests.integration.dbus_calls import BLOCKLISTS, call, error_name

PULL = 1.0  # seconds between pulls in these tests
WITHIN = 3 * PULL + 2.0  # "within 3 pull intervals", plus the import's own time

DaemonStarter = Callable[..., DaemonProcess]
Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def lapi() -> Iterator[LapiSandbox]:
    why = crowdsec.missing()
    if why is not None:
        pytest.skip(why)
    sandbox = LapiSandbox().start()
    try:
        yield sandbox
    finally:
        sandbox.close()


def _key_file(tmp_path: Path, name: str, secret: str) -> str:
    path = tmp_path / name
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def pull_daemon(lapi: LapiSandbox, start_daemon: DaemonStarter, tmp_path: Path) -> DaemonProcess:
    return start_daemon(
        crowdsec={
            "lapi_url": lapi.url,
            "bouncer_key_file": _key_file(tmp_path, "bouncer.key", lapi.bouncer_key()),
            "pull_interval": PULL,
        },
        blocklist={"allowlist": ["45.8.8.0/24"]},
    )


def test_decisions_are_banned_and_unbanned_through_the_blocklist_jail(
    f2b: F2bSandbox, lapi: LapiSandbox, pull_daemon: DaemonProcess, busctl: Runner, gdbus: Runner
) -> None:
    lapi.cscli("decisions", "add", "--ip", "45.3.3.3")
    lapi.cscli("decisions", "add", "--range", "45.4.0.0/24")
    lapi.cscli("decisions", "add", "--ip", "10.1.2.3")  # private: refused
    lapi.cscli("decisions", "add", "--ip", "45.8.8.8")  # allow-listed: refused
    started = time.monotonic()
    wait_until(
        lambda: {"45.3.3.3", "45.4.0.0/24"} <= set(f2b.banned(JAIL_BLOCKLIST)),
        WITHIN,
        "the decisions banned",
    )
    assert time.monotonic() - started < WITHIN
    banned = set(f2b.banned(JAIL_BLOCKLIST))
    assert "10.1.2.3" not in banned
    assert "45.8.8.8" not in banned

    [sources] = call(busctl, BLOCKLISTS, "ListSources")
    (source,) = [s for s in sources if s["name"] == "crowdsec"]
    assert source["url"] == lapi.url
    assert source["last_status"] == "completed"

    def latest_run() -> dict[str, int]:
        sid = str(source["id"])
        [runs, _] = call(busctl, BLOCKLISTS, "ListImportRuns", "uuu", sid, "1", "100")
        run: dict[str, int] = max(runs, key=lambda r: r["run_id"])
        return run

    # the decisions may have come in two pulls: the latest run holds them all
    def complete_run() -> dict[str, int] | None:
        run = latest_run()
        return run if run["entries"] == 4 else None

    latest = wait_until(complete_run, WITHIN, "a run of all 4 decisions")
    assert latest["refused"] == 2, latest
    # managed by the config: D-Bus callers cannot change or remove it
    sid = f"uint32 {source['id']}"
    assert error_name(gdbus, BLOCKLISTS, "RemoveSource", sid).endswith(".InvalidArgument")
    assert error_name(gdbus, BLOCKLISTS, "UpdateSource", sid, "{'enabled': <false>}").endswith(
        ".InvalidArgument"
    )

    lapi.cscli("decisions", "delete", "--ip", "45.3.3.3")
    lapi.cscli("decisions", "delete", "--ip", "45.3.3.3")  # twice: harmless
    wait_until(lambda: "45.3.3.3" not in f2b.banned(JAIL_BLOCKLIST), WITHIN, "the deleted decision")
    assert "45.4.0.0/24" in f2b.banned(JAIL_BLOCKLIST)


def test_own_bans_are_pushed_and_their_unbans_delete_them(
    f2b: F2bSandbox, lapi: LapiSandbox, start_daemon: DaemonStarter, tmp_path: Path
) -> None:
    lapi.machine("web1", "s3cret-pw")
    start_daemon(
        crowdsec={
            "lapi_url": lapi.url,
            "machine_id": "web1",
            "machine_password_file": _key_file(tmp_path, "machine.pw", "s3cret-pw"),
            "pull_interval": PULL,
        },
    )

    def pushed(ip: str) -> list[dict[str, object]]:
        return [d for d in lapi.decisions() if d["value"] == ip]

    f2b.client("set", "sshd", "banip", "45.5.5.5")
    [decision] = wait_until(lambda: pushed("45.5.5.5"), WITHIN, "the ban in the LAPI")
    assert decision["scenario"] == "bangui/sshd"
    assert decision["type"] == "ban"
    f2b.client("set", JAIL_BLOCKLIST, "banip", "45.6.6.6")  # the blocklist jail: never pushed

    f2b.client("set", "sshd", "unbanip", "45.5.5.5")
    wait_until(lambda: not pushed("45.5.5.5"), WITHIN, "the decision deleted")
    assert not pushed("45.6.6.6")
