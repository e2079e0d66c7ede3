"""Reference counting when imports of different sources overlap, and content that flips back."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.harness.daemon import DaemonProcess
from tests.harness.fail2ban import F2bSandbox
from tests.integration.blocklist_server import ListServer, addresses
from tests.integration.test_blocklists import (
    actions,
    add_source,
    body,
    import_source,
    jail_bans,
    runs,
)


@pytest.mark.daemon_config({"blocklist": {"batch_size": 10}})
def test_drop_during_another_sources_import_keeps_the_shared_address(
    f2b: F2bSandbox,
    daemon: DaemonProcess,
    busctl: Any,
    lists: ListServer,
    signal_monitor: Any,
) -> None:
    """A drops X while B, which lists X too, is still banning: X must stay banned."""
    shared = "45.50.0.1"
    lists.lists["a"] = body([shared])
    source_a = add_source(busctl, "a", lists.url("/list/a"), enabled=False)
    assert import_source(busctl, source_a)["added"] == 1
    b_entries = [shared, *addresses(51, 200)]  # ~1.2 s of dummy actions
    lists.lists["b"] = body(b_entries)
    source_b = add_source(busctl, "b", lists.url("/list/b"), enabled=False)
    mon = signal_monitor(user="root")
    with ThreadPoolExecutor(1) as pool:
        b_import = pool.submit(import_source, busctl, source_b)
        mon.wait_for(re.compile(rf"ImportProgress \(uint32 {source_b}, uint32 \d+, uint32 200\)"))
        lists.lists["a"] = body(addresses(52, 1))  # A drops the shared address
        a_result = import_source(busctl, source_a)
        b_result = b_import.result(30)
    assert b_result["status"] == a_result["status"] == "completed"
    assert shared in jail_bans(f2b)  # B still lists it
    assert jail_bans(f2b) == {*b_entries, *addresses(52, 1)}
    assert f"-{shared}" not in actions(f2b)


def test_content_that_flips_back_is_applied_again(
    f2b: F2bSandbox, daemon: DaemonProcess, busctl: Any, lists: ListServer
) -> None:
    """v1 -> v2 -> v1: the source lists v1 again, so v1 is what must be banned."""
    v1, v2 = addresses(53, 3), addresses(53, 2)  # v2 drops the third address
    source = add_source(busctl, "flip", lists.url("/list/f"), enabled=False)
    for version in (v1, v2, v1):
        lists.lists["f"] = body(version)
        result = import_source(busctl, source)
        assert result["status"] == "completed", result
        assert jail_bans(f2b) == set(version)
    assert sorted(r["status"] for r in runs(busctl, source)) == ["completed", "completed"]
    lists.lists["f"] = body(v1)
    assert import_source(busctl, source)["status"] == "unchanged"
