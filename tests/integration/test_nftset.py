"""The batched nftables action (fail2ban/action.d/bangui-nftset.py) in a real fail2ban.

fail2ban-server runs inside a private network namespace each test creates (``nsenter``
into an ``unshare --net`` holder), with the action loaded from the checkout; every
``nft`` of these tests, the action's and the test's own read-backs, runs in that
namespace. The daemon and the bus run outside it as usual (unix sockets cross it).
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.daemon import DaemonProcess
from tests.harness.fail2ban import JAIL_BLOCKLIST, JAIL_SSHD, F2bSandbox
from tests.harness.netns import NFTSET_ACTION, NetNamespace
from tests.harness.util import wait_until
from tests.integration.dbus_calls import BLOCKLISTS, DEST, PATH, Runner, call, plain

pytestmark = pytest.mark.integration

TABLE = "bangui"
ACTION = "bangui-nftset.py"
SHORT = "short"  # a jail whose bans expire after 2 s


@pytest.fixture
def netns() -> Iterator[NetNamespace]:
    if os.geteuid() != 0:
        pytest.skip("needs root for unshare --net (every nft runs in a private namespace)")
    with NetNamespace() as ns:
        yield ns


@pytest.fixture
def nft_log(tmp_path: Path) -> Path:
    """A wrapper around nft that logs each run and any overlap with another run."""
    log = tmp_path / "nft-runs.log"
    wrapper = tmp_path / "nft-wrapper"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if ! mkdir "{tmp_path}/nft-running" 2>/dev/null; then echo OVERLAP >> "{log}"; fi\n'
        f'echo run >> "{log}"\n'
        'nft "$@"; rc=$?\n'
        f'rmdir "{tmp_path}/nft-running" 2>/dev/null\n'
        "exit $rc\n"
    )
    wrapper.chmod(0o755)
    return log


@pytest.fixture
def f2b(make_f2b: Callable[..., F2bSandbox], netns: NetNamespace, nft_log: Path) -> F2bSandbox:
    """fail2ban in the namespace; sshd, blocklist-import and `short` use the action."""
    action = f"{ACTION}[nft={nft_log.parent / 'nft-wrapper'}]"
    return make_f2b(
        command_prefix=netns.prefix,
        action_files={ACTION: NFTSET_ACTION},
        jail_options={JAIL_SSHD: {"action": action}, JAIL_BLOCKLIST: {"action": action}},
        extra_jails={SHORT: {"action": action, "bantime": 2}},
    )


def kernel(ns: NetNamespace, jail: str) -> set[str]:
    """Everything the jail's four sets hold."""
    return set().union(
        *(
            ns.set_elements(TABLE, f"{jail}-{kind}", missing_ok=True)
            for kind in ("addr4", "net4", "addr6", "net6")
        )
    )


def wait_kernel(ns: NetNamespace, jail: str, expected: set[str], timeout: float = 30.0) -> None:
    last: set[str] = set()

    def equal() -> bool:
        nonlocal last
        last = kernel(ns, jail)
        return last == expected

    try:
        wait_until(equal, timeout, f"{jail}'s sets to hold {len(expected)} entries")
    except TimeoutError:
        missing, extra = sorted(expected - last)[:10], sorted(last - expected)[:10]
        raise AssertionError(f"missing {missing}, unexpected {extra}") from None


def nft_runs(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def ban(f2b: F2bSandbox, jail: str, entries: list[str], batch: int = 500) -> None:
    for at in range(0, len(entries), batch):
        f2b.client("set", jail, "banip", *entries[at : at + batch])


def public_v4(n: int, second: int = 0) -> list[str]:
    base = int(ipaddress.IPv4Address(f"45.{second}.0.0"))
    return [str(ipaddress.IPv4Address(base + 1 + i)) for i in range(n)]


# ---------------------------------------------------------------------- any jail
def test_single_ban_in_sshd_is_in_the_set_within_a_second(
    f2b: F2bSandbox, netns: NetNamespace, nft_log: Path
) -> None:
    # fail2ban's action thread runs the action's start() just after the jail starts
    wait_until(lambda: netns.tables() == {f"inet {TABLE}"}, 10, f"the inet {TABLE} table")
    (chain,) = [
        item["chain"]
        for item in netns.nft_json("list", "chain", "inet", TABLE, "sshd-input")
        if "chain" in item
    ]
    assert (chain["hook"], chain["prio"], chain["policy"]) == ("input", -1, "accept")
    rules = netns.run("nft", "list", "chain", "inet", TABLE, "sshd-input").stdout
    assert "ip saddr @sshd-addr4 drop" in rules
    assert "ip6 saddr @sshd-net6 drop" in rules

    result = f2b.cli("set", JAIL_SSHD, "banip", "45.33.12.7")
    assert result.returncode == 0, result.stderr
    wait_until(lambda: "45.33.12.7" in kernel(netns, JAIL_SSHD), 1.0, "the ban in the set")
    f2b.cli("set", JAIL_SSHD, "banip", "2001:db8::7")
    wait_until(lambda: "2001:db8::7" in kernel(netns, JAIL_SSHD), 1.0, "the IPv6 ban")

    # a ban fail2ban found itself in the log goes the same way; unban removes
    f2b.write_failed_logins("45.33.12.8", 4)
    f2b.wait_banned(JAIL_SSHD, "45.33.12.8")
    wait_kernel(netns, JAIL_SSHD, {"45.33.12.7", "2001:db8::7", "45.33.12.8"}, 1.0)
    f2b.cli("set", JAIL_SSHD, "unbanip", "45.33.12.7")
    wait_kernel(netns, JAIL_SSHD, {"2001:db8::7", "45.33.12.8"}, 1.0)
    assert kernel(netns, JAIL_BLOCKLIST) == set()
    assert "OVERLAP" not in nft_runs(nft_log)


def test_bans_are_batched_and_nft_never_runs_twice_at_once(
    f2b: F2bSandbox, netns: NetNamespace, nft_log: Path
) -> None:
    started = len(nft_runs(nft_log))
    big, small = public_v4(3000, 1), public_v4(300, 2)
    errors: list[BaseException] = []

    def feed(jail: str, entries: list[str], batch: int) -> None:
        try:
            ban(f2b, jail, entries, batch)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [
        threading.Thread(target=feed, args=(JAIL_BLOCKLIST, big, 3000)),
        threading.Thread(target=feed, args=(JAIL_SSHD, small, 1)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    wait_kernel(netns, JAIL_BLOCKLIST, set(big))
    wait_kernel(netns, JAIL_SSHD, set(small))
    runs = nft_runs(nft_log)[started:]
    assert "OVERLAP" not in runs
    # 3,300 bans: one process per ban would be 3,300 runs
    assert 2 <= len(runs) < 200, len(runs)


# --------------------------------------------------------------------- networks
def test_nested_networks_and_entries_nft_cannot_take(f2b: F2bSandbox, netns: NetNamespace) -> None:
    jail = JAIL_BLOCKLIST
    f2b.client(
        "set", jail, "banip",
        "45.10.0.0/16", "45.10.1.0/24", "45.10.1.7", "2001:db8::/48", "2001:db8::1",
        "not-an-ip", "45.20.0.0/24", "45.20.1.0/24",
    )  # fmt: skip
    # only the outermost networks reach the kernel (nested ones would overlap)
    wait_kernel(
        netns,
        jail,
        {"45.10.0.0/16", "45.10.1.7", "2001:db8::/48", "2001:db8::1", "45.20.0.0/24"}
        | {"45.20.1.0/24"},
    )
    assert "not banning 'not-an-ip' in nftables" in f2b.log_text()
    f2b.client("set", jail, "unbanip", "45.10.0.0/16")
    wait_kernel(
        netns,
        jail,
        {"45.10.1.0/24", "45.10.1.7", "2001:db8::/48", "2001:db8::1", "45.20.0.0/24"}
        | {"45.20.1.0/24"},
    )
    # banning what is there (as another spelling) and unbanning what is not: no failure
    f2b.client("set", jail, "banip", "45.10.1.7/32", "2001:DB8::0001")
    f2b.client("set", jail, "unbanip", "45.10.1.0/24", "45.20.1.0/24", "2001:db8::/48")
    wait_kernel(netns, jail, {"45.10.1.7", "2001:db8::1", "45.20.0.0/24"})
    assert "nftables batch failed" not in f2b.log_text()


# ------------------------------------------------------- expiry, restart, stop
def test_expiry_restart_restore_and_stop(f2b: F2bSandbox, netns: NetNamespace) -> None:
    f2b.client("set", SHORT, "banip", "45.50.0.1")
    wait_kernel(netns, SHORT, {"45.50.0.1"}, 1.0)
    entries = [*public_v4(5000, 3), "46.1.0.0/24", "2001:db8:1::/64", "2001:db8::5"]
    ban(f2b, JAIL_BLOCKLIST, entries)
    wait_kernel(netns, JAIL_BLOCKLIST, set(entries))
    # fail2ban lifts the short ban (expiry), and the set follows
    wait_until(lambda: "45.50.0.1" not in f2b.banned(SHORT), 15, "the short ban to expire")
    wait_kernel(netns, SHORT, set(), 2.0)

    f2b.stop()
    assert netns.tables() == set()  # no inet bangui table left behind
    f2b.start()
    # fail2ban restores its bans from its database; the sets follow
    wait_kernel(netns, JAIL_BLOCKLIST, set(entries), 60)
    assert kernel(netns, SHORT) == set()


def test_failed_batch_is_logged_and_retried_from_memory(
    f2b: F2bSandbox, netns: NetNamespace
) -> None:
    jail = JAIL_BLOCKLIST
    ban(f2b, jail, ["45.60.0.1", "45.61.0.0/24"])
    wait_kernel(netns, jail, {"45.60.0.1", "45.61.0.0/24"})
    netns.run("nft", "delete", "table", "inet", TABLE)  # someone flushes the ruleset
    ban(f2b, jail, ["45.60.0.2"])
    wait_kernel(netns, jail, {"45.60.0.1", "45.61.0.0/24", "45.60.0.2"}, 10)
    log = f2b.log_text()
    assert "ERROR" in log
    assert "nftables batch failed (attempt 1)" in log
    assert "nftables sets rebuilt after 1 failed attempt(s)" in log


def test_reload_keeps_the_sets_and_applies_new_options(
    f2b: F2bSandbox, netns: NetNamespace, nft_log: Path
) -> None:
    ban(f2b, JAIL_BLOCKLIST, ["45.70.0.1", "2001:db8::70"])
    wait_kernel(netns, JAIL_BLOCKLIST, {"45.70.0.1", "2001:db8::70"})
    wrapper = nft_log.parent / "nft-wrapper"
    f2b.jail_options[JAIL_BLOCKLIST]["action"] = f"{ACTION}[nft={wrapper}, verdict=reject]"
    f2b.write_config()
    result = f2b.cli("-c", str(f2b.conf_dir), "reload")
    assert result.returncode == 0, result.stderr

    def rejects() -> bool:
        rules = netns.run("nft", "list", "chain", "inet", TABLE, "blocklist-import-input")
        return "ip saddr @blocklist-import-addr4 reject" in rules.stdout

    wait_until(rejects, 10, "the reject rule")
    assert kernel(netns, JAIL_BLOCKLIST) == {"45.70.0.1", "2001:db8::70"}
    # sshd, reloaded unchanged, still has its chain and takes bans
    f2b.client("set", JAIL_SSHD, "banip", "45.70.0.2")
    wait_kernel(netns, JAIL_SSHD, {"45.70.0.2"}, 1.0)


# ------------------------------------------------------------ daemon imports
def _write_list(daemon: DaemonProcess, name: str, lines: list[str]) -> str:
    """Write a list below the daemon's file_dir; return its file:// URL."""
    assert daemon.config is not None
    path = Path(daemon.config["blocklist"]["file_dir"]) / f"{name}.txt"
    path.write_text("\n".join(["# test list", *lines]) + "\n")
    return f"file://{path}"


def _add_source(busctl: Runner, name: str, url: str) -> int:
    (source_id,) = call(busctl, BLOCKLISTS, "AddSource", "ssb", name, url, "false")
    return int(source_id)


def _import(busctl: Runner, source_id: int) -> dict[str, Any]:
    """ImportSource with room for a loaded CI machine (busctl's own default is 25 s)."""
    argv = ["--timeout=300", "--json=short", "call", DEST, PATH, BLOCKLISTS, "ImportSource"]
    done = busctl(*argv, "u", str(source_id), timeout=310)
    assert done.returncode == 0, done.stderr
    (result,) = plain(json.loads(done.stdout)["data"])
    assert result["status"] == "completed", result
    return dict(result)


def import_list(n_v4: int) -> list[str]:
    """`n_v4` public IPv4 addresses, 200 IPv6 addresses and 50 /24 networks."""
    first = int(ipaddress.IPv6Address("2a01:4f8:5::"))  # global: 2001:db8::/32 is refused
    v6 = [str(ipaddress.IPv6Address(first + i)) for i in range(1, 201)]
    nets = [f"46.{i}.0.0/24" for i in range(50)]
    return [*public_v4(n_v4, 4), *v6, *nets]


def test_import_diff_and_remove_source_reach_the_sets(
    f2b: F2bSandbox, netns: NetNamespace, daemon: DaemonProcess, busctl: Runner
) -> None:
    entries = import_list(5_000)
    source_a = _add_source(busctl, "a", _write_list(daemon, "a", entries))
    assert _import(busctl, source_a)["added"] == len(entries)
    wait_kernel(netns, JAIL_BLOCKLIST, set(entries), 60)

    # the list drops 1,050 entries (addresses, IPv6 and networks): exactly those go
    dropped = set(entries[::5])
    kept = [e for e in entries if e not in dropped]
    _write_list(daemon, "a", kept)
    result = _import(busctl, source_a)
    assert result["removed"] == len(dropped)
    wait_kernel(netns, JAIL_BLOCKLIST, set(kept), 60)

    # B shares 100 of A's entries and has 100 of its own; removing A leaves B's
    shared = kept[:100]
    own = public_v4(100, 9)
    source_b = _add_source(busctl, "b", _write_list(daemon, "b", [*shared, *own]))
    _import(busctl, source_b)
    wait_kernel(netns, JAIL_BLOCKLIST, set(kept) | set(own), 60)
    removed = busctl("call", DEST, PATH, BLOCKLISTS, "RemoveSource", "u", str(source_a))
    assert removed.returncode == 0, removed.stderr
    wait_kernel(netns, JAIL_BLOCKLIST, {*shared, *own}, 60)
