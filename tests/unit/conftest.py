"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bangui_daemon.archive.db import Archive


@pytest.fixture
async def archive(tmp_path: Path) -> AsyncIterator[Archive]:
    """A fresh, fully migrated archive in the test's temp dir."""
    arch = await Archive.open(str(tmp_path / "archive.sqlite3"))
    try:
        yield arch
    finally:
        await arch.close()
