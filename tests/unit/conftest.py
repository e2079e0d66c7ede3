"""Fixtures shared by the unit tests."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bangui_daemon.archive.db import Archive


@pytest.fixture(scope="session")
def archive_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One freshly migrated archive file per session: migrating costs ~80 ms, a copy ~5."""
    path = tmp_path_factory.mktemp("archive-template") / "archive.sqlite3"

    async def create() -> None:
        arch = await Archive.open(str(path))
        await arch.close()  # the last close checkpoints the WAL into the file

    asyncio.run(create())
    return path


@pytest.fixture
async def archive(tmp_path: Path, archive_template: Path) -> AsyncIterator[Archive]:
    """A fresh, fully migrated archive in the test's temp dir."""
    path = tmp_path / "archive.sqlite3"
    shutil.copyfile(archive_template, path)
    arch = await Archive.open(str(path))
    try:
        yield arch
    finally:
        await arch.close()
