"""The fail2ban setup check: which settings of fail2ban make the archive miss rows."""

from __future__ import annotations

import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from bangui_daemon.config import Config, Fail2banConfig, TasksConfig
from bangui_daemon.errors import Fail2banProtocolError, Fail2banUnavailable
from bangui_daemon.services.bans import BanDiff
from bangui_daemon.services.fail2ban_setup import Fail2banSetupCheck, setup_problems


class FakeFail2ban:
    def __init__(self, dbfile: str | None, purge_age: int | None) -> None:
        self.db = dbfile
        self.purge_age = purge_age
        self.down = False
        self.garbled = False
        self.asked = 0

    async def dbfile(self) -> str | None:
        self.asked += 1
        if self.down:
            raise Fail2banUnavailable("fail2ban is not running")
        return self.db

    async def dbpurgeage(self) -> int | None:
        if self.garbled:
            raise Fail2banProtocolError("fail2ban dbpurgeage reply is not a number")
        return self.purge_age


def config(database: str, sync_every: float = 300) -> Config:
    return Config(
        fail2ban=Fail2banConfig(database=database),
        tasks=TasksConfig(history_sync=sync_every),
    )


async def test_matching_settings_have_no_problem(tmp_path: Path) -> None:
    db = tmp_path / "fail2ban.sqlite3"
    db.touch()
    (tmp_path / "link.sqlite3").symlink_to(db)
    fake = FakeFail2ban(str(tmp_path / "link.sqlite3"), 86400)  # the same file, another name
    assert await setup_problems(fake, config(str(db))) == []


async def test_files_are_compared_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stat() on a hung NFS mount blocks: samefile must not run on the loop's thread."""
    threads: list[int] = []
    real = os.path.samefile

    def recording(a: str, b: str) -> bool:
        threads.append(threading.get_ident())
        return real(a, b)

    monkeypatch.setattr(os.path, "samefile", recording)
    db = tmp_path / "fail2ban.sqlite3"
    db.touch()
    assert await setup_problems(FakeFail2ban(str(db), 86400), config(str(db))) == []
    assert threads
    assert threading.get_ident() not in threads


async def test_another_database_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "old.sqlite3").touch()
    fake = FakeFail2ban("/var/lib/fail2ban/fail2ban.sqlite3", 86400)
    (problem,) = await setup_problems(fake, config(str(tmp_path / "old.sqlite3")))
    assert "/var/lib/fail2ban/fail2ban.sqlite3" in problem
    assert "reads the wrong file" in problem


@pytest.mark.parametrize("dbfile", [None, ":memory:"])
async def test_no_database_at_all(dbfile: str | None) -> None:
    fake = FakeFail2ban(dbfile, 86400)
    (problem,) = await setup_problems(fake, config("/var/lib/fail2ban/fail2ban.sqlite3"))
    assert "keeps no ban database" in problem


@pytest.mark.parametrize(
    ("purge_age", "sync_every", "warned"),
    [(86400, 300, False), (600, 600, True), (3600, 7200, True), (0, 7200, False)],
)
async def test_sync_slower_than_fail2bans_purge(
    tmp_path: Path, purge_age: int, sync_every: float, warned: bool
) -> None:
    db = tmp_path / "f.sqlite3"
    db.touch()
    problems = await setup_problems(FakeFail2ban(str(db), purge_age), config(str(db), sync_every))
    assert bool(problems) == warned
    if warned:
        assert f"after {purge_age} s" in problems[0]


async def test_checked_once_per_config_and_again_after_a_reload_or_an_outage(
    tmp_path: Path,
) -> None:
    fake = FakeFail2ban("/elsewhere.sqlite3", 86400)
    current = {"cfg": config(str(tmp_path / "f.sqlite3"))}
    check = Fail2banSetupCheck(fake, lambda: current["cfg"])
    fake.down = True
    await check(BanDiff(baseline=True))  # fail2ban went away: not a verdict, retried
    assert check.problems == []
    fake.down = False
    await check(BanDiff())
    await check(BanDiff())
    assert fake.asked == 2
    assert len(check.problems) == 1
    current["cfg"] = replace(current["cfg"], fail2ban=Fail2banConfig(database="/elsewhere.sqlite3"))
    await check(BanDiff())
    assert fake.asked == 3
    assert check.problems == []


async def test_an_unreadable_answer_is_one_problem_not_a_retry_loop(tmp_path: Path) -> None:
    fake = FakeFail2ban(str(tmp_path / "f.sqlite3"), 86400)
    fake.garbled = True
    cfg = config(str(tmp_path / "f.sqlite3"))
    check = Fail2banSetupCheck(fake, lambda: cfg)
    await check(BanDiff())
    await check(BanDiff())
    assert fake.asked == 1
    (problem,) = check.problems
    assert "could not be checked" in problem
