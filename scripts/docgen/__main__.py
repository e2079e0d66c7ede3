"""`python3 -m scripts.docgen OUTDIR`: write every generated document into OUTDIR."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from scripts.docgen.cli_pages import ctl_page, daemon_page
from scripts.docgen.completion import bash_completion
from scripts.docgen.config_docs import config_page, example_config
from scripts.docgen.dbus_page import dbus_page

OUTPUTS: dict[str, Callable[[], str]] = {
    "bangui-daemon.8": daemon_page,
    "banguictl.1": ctl_page,
    "bangui.toml.5": config_page,
    "bangui-daemon.dbus.5": dbus_page,
    "bangui.toml": example_config,
    "bash-completion/banguictl": bash_completion,
}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 -m scripts.docgen OUTDIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    for name, render in OUTPUTS.items():
        path = out / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
