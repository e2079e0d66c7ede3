"""Compare fail2ban's own settings with ours, where a mismatch silently loses history.

Two mistakes cost a sysadmin history without any error: the daemon reading another
database file than the one fail2ban writes (a copy, an old path), and history_sync
running less often than fail2ban purges its rows. fail2ban is asked (`get dbfile`,
`get dbpurgeage`) on the first ban watch tick and again after each config reload;
each problem is logged once as `fail2ban_setup_problem`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Protocol

import structlog

from bangui_daemon.config import Config
from bangui_daemon.errors import BanguiError, Fail2banProtocolError
from bangui_daemon.services.bans import BanDiff

log = structlog.get_logger(__name__)


class Fail2banSettings(Protocol):
    """The two questions asked of fail2ban (Fail2banClient answers them)."""

    async def dbfile(self) -> str | None: ...

    async def dbpurgeage(self) -> int | None: ...


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (stats both: may block on a network mount)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare the names
        return os.path.realpath(a) == os.path.realpath(b)


async def setup_problems(client: Fail2banSettings, cfg: Config) -> list[str]:
    """What in fail2ban's settings makes the archive miss rows, in words for the log."""
    problems: list[str] = []
    dbfile = await client.dbfile()
    configured = cfg.fail2ban.database
    if dbfile is None or dbfile == ":memory:":
        problems.append(
            "fail2ban keeps no ban database (dbfile is None or :memory:): history_sync "
            "copies nothing, only bans the ban watch sees are archived, without matches"
        )
    elif not await asyncio.to_thread(_same_file, dbfile, configured):
        problems.append(
            f"fail2ban writes its bans to {dbfile} but [fail2ban] database is "
            f"{configured}: history_sync reads the wrong file"
        )
    purge_age = await client.dbpurgeage()
    interval = cfg.tasks.history_sync
    if dbfile and purge_age is not None and 0 < purge_age <= interval:
        problems.append(
            f"fail2ban purges ban rows after {purge_age} s (dbpurgeage) but history_sync "
            f"runs every {interval:g} s: rows can be purged before they are archived"
        )
    return problems


class Fail2banSetupCheck:
    """A ban watch listener: checks once per config object, after fail2ban answered."""

    def __init__(self, client: Fail2banSettings, config: Callable[[], Config]) -> None:
        self._client = client
        self._config = config
        self._checked: Config | None = None
        self.problems: list[str] = []

    async def __call__(self, _diff: BanDiff) -> None:
        cfg = self._config()
        if cfg is self._checked:
            return
        try:
            problems = await setup_problems(self._client, cfg)
        except Fail2banProtocolError as exc:  # an answer we cannot read: asking again won't help
            problems = [f"fail2ban's dbfile or dbpurgeage could not be checked: {exc}"]
        except BanguiError as exc:  # fail2ban went away meanwhile: the next tick retries
            log.debug("fail2ban_setup_check_deferred", reason=str(exc))
            return
        self._checked = cfg
        self.problems = problems
        for problem in problems:
            log.warning("fail2ban_setup_problem", problem=problem)
