"""Panel lines and notification merging of banguictl (pure parts, no bus)."""

from __future__ import annotations

import json

import pytest

from bangui_daemon.cli.ctl_notify import BurstCoalescer, Post, body_text, summary_text
from bangui_daemon.cli.ctl_panel import (
    OFFLINE,
    STORM_BANS,
    STORM_WINDOW,
    LatestBan,
    PanelState,
    StormWindow,
    classify,
    format_i3blocks,
    format_polybar,
    format_waybar,
    local_midnight,
)

ACTIVE = PanelState(
    "active", 3, 7, (LatestBan("sshd", "192.0.2.1", "SE", 1), LatestBan("web<x>", "::1", "", 2))
)


def test_waybar_line_has_count_class_and_escaped_tooltip() -> None:
    doc = json.loads(format_waybar(ACTIVE))
    assert doc["text"] == "3"
    assert doc["class"] == doc["alt"] == "active"
    lines = doc["tooltip"].split("\n")
    assert lines[0] == "3 active bans, 7 today"
    assert lines[1] == "sshd 192.0.2.1 SE"
    assert lines[2] == "web&lt;x&gt; ::1"  # Pango markup must not break on a jail name


def test_offline_in_every_format() -> None:
    assert json.loads(format_waybar(OFFLINE))["class"] == "offline"
    assert json.loads(format_waybar(OFFLINE))["text"] == "off"
    assert format_polybar(OFFLINE) == "bans: offline"
    doc = json.loads(format_i3blocks(OFFLINE))
    assert doc["full_text"] == "bans: offline"
    assert doc["short_text"] == "off"


def test_polybar_and_i3blocks_lines() -> None:
    assert format_polybar(ACTIVE) == "bans: 3 (7 today) last 192.0.2.1"
    doc = json.loads(format_i3blocks(ACTIVE))
    assert doc["full_text"] == "bans: 3 (7 today)"
    assert doc["short_text"] == "3"


@pytest.mark.parametrize(
    ("active", "recent", "cls"),
    [(0, 0, "idle"), (5, 0, "active"), (0, STORM_BANS, "idle"), (0, STORM_BANS + 1, "storm")],
)
def test_classify(active: int, recent: int, cls: str) -> None:
    assert classify(active, recent) == cls


def test_storm_window_ignores_imports_and_forgets_old_bans() -> None:
    storm = StormWindow()
    storm.on_signal("BansChanged", [80, 0], 0.0)
    storm.on_signal("ImportStarted", [4, 9], 1.0)
    storm.on_signal("BansChanged", [5000, 0], 2.0)  # the import's bans: not a storm
    storm.on_signal("ImportFinished", [4, "completed", 5000, 0], 3.0)
    storm.on_signal("BansChanged", [30, 0], 4.0)
    assert storm.count(5.0) == 110
    assert storm.count(STORM_WINDOW + 1.0) == 30  # the first tick left the window


def test_local_midnight_is_today_at_zero() -> None:
    midnight = local_midnight(1_700_000_000)
    assert midnight <= 1_700_000_000 < midnight + 86400 + 3600  # DST days are 25 h


def test_one_ban_is_posted_at_once_then_merged() -> None:
    c = BurstCoalescer(interval=2.0, quiet=10.0)
    assert c.take(0.0) is None
    c.add("sshd", "192.0.2.1", 100.0)
    first = c.take(100.0)
    assert first == Post(1, (("sshd", 1),), (("sshd", "192.0.2.1"),), replace=False)
    for i in range(36):
        c.add("sshd", f"192.0.2.{i + 2}", 100.5)
    assert c.take(101.0) is None  # 2 s have not passed
    assert c.ready_at() == 102.0
    second = c.take(102.0)
    assert second is not None
    assert second.replace
    assert second.total == 37
    assert summary_text(second) == "37 new bans in sshd"
    assert second.shown[0] == ("sshd", "192.0.2.37")  # newest first
    assert len(second.shown) == 5


def test_a_pause_starts_a_new_notification() -> None:
    c = BurstCoalescer(interval=2.0, quiet=10.0)
    c.add("sshd", "192.0.2.1", 0.0)
    assert c.take(0.0) is not None
    c.add("web", "192.0.2.2", 30.0)
    post = c.take(30.0)
    assert post is not None
    assert not post.replace
    assert post.total == 1
    assert summary_text(post) == "Ban in web"


def test_anonymous_storm_bans_are_counted() -> None:
    c = BurstCoalescer()
    c.add("sshd", "192.0.2.1", 0.0)
    c.add_anonymous(250, 0.1)
    c.add_anonymous(0, 0.1)
    post = c.take(0.2)
    assert post is not None
    assert post.total == 251
    assert summary_text(post) == "251 new bans in sshd and others"


def test_body_names_country_and_asn_and_the_rest() -> None:
    post = Post(3, (("sshd", 3),), (("sshd", "192.0.2.1"),), replace=True)
    geo: dict[str, dict[str, object]] = {
        "192.0.2.1": {"country_code": "SE", "asn": "AS29518", "org": "Bredband2 AB"}
    }
    assert body_text(post, geo) == "192.0.2.1 (sshd, SE AS29518 Bredband2 AB)\nand 2 more"
    assert body_text(post, {}) == "192.0.2.1 (sshd)\nand 2 more"
