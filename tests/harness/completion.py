"""Run a bash completion function the way bash does on <Tab>, and read its answer."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tests.harness.util import HarnessError


def complete(script: Path, function: str, line: str, env: Mapping[str, str]) -> list[str]:
    """Source `script`, call `function` for `line` with the cursor at its end."""
    bash = shutil.which("bash")
    if bash is None:
        raise HarnessError("bash is not installed")
    driver = (
        f'source "{script}"; COMP_LINE=$1; COMP_POINT=${{#1}}; {function}; '
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    result = subprocess.run(
        [bash, "--norc", "-c", driver, "bash", line],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=dict(env),
    )
    if result.returncode != 0 or result.stderr:
        raise HarnessError(f"completion of {line!r} failed: {result.stderr}")
    return result.stdout.split()
