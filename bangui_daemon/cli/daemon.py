"""`bangui-daemon`: run in the foreground, check the config, or print the version."""

from __future__ import annotations

import argparse
import sys

from bangui_daemon import __version__
from bangui_daemon.config import DEFAULT_CONFIG_PATH, dump_config, load_config
from bangui_daemon.errors import ConfigError
from bangui_daemon.logs import report_error


def build_parser() -> argparse.ArgumentParser:
    """The command line; the man page bangui-daemon(8) is generated from it."""
    parser = argparse.ArgumentParser(
        prog="bangui-daemon",
        description="Expose fail2ban on the system D-Bus as org.bangui.Daemon1.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"config file (default {DEFAULT_CONFIG_PATH}; a missing default means defaults)",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config, print the effective config and exit (0 ok, 2 invalid)",
    )
    parser.add_argument("--version", action="version", version=f"bangui-daemon {__version__}")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the daemon (systemd's way: foreground, logs to stderr)."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if args.check_config:
            sys.stdout.write(dump_config(config))
            sys.exit(0)
        from bangui_daemon.app import run_daemon  # noqa: PLC0415 - --check-config needs no D-Bus

        sys.exit(run_daemon(config, args.config))
    except ConfigError as exc:
        report_error(f"bangui-daemon: invalid configuration:\n{exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
