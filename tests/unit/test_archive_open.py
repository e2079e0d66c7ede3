"""An archive path that cannot be opened is a named error, never a traceback (issue 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bangui_daemon.archive.db import Archive
from bangui_daemon.errors import ArchiveOpenError


async def test_a_directory_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "archive.sqlite3"
    with pytest.raises(ArchiveOpenError) as info:
        await Archive.open(str(path))
    assert str(info.value) == f"cannot open {path}: a part of its directory is not a directory"


async def test_a_name_too_long_is_named(tmp_path: Path) -> None:
    path = tmp_path / ("x" * 300) / "archive.sqlite3"
    with pytest.raises(ArchiveOpenError, match="File name too long"):
        await Archive.open(str(path))


async def test_a_file_that_is_not_a_database_is_named_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "archive.sqlite3"
    path.write_bytes(b"not sqlite " * 100)
    with pytest.raises(ArchiveOpenError, match="file is not a database"):
        await Archive.open(str(path))
    assert path.read_bytes() == b"not sqlite " * 100
