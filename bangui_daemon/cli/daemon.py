"""`bangui-daemon`: run in the foreground, check the config, or print the version."""

from __future__ import annotations

import argparse
import sys

from bangui_daemon import __version__
from bangui_daemon.config import DEFAULT_CONFIG_PATH, dump_config, load_config
from bangui_daemon.errors import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the daemon (systemd's way: foreground, logs to stderr)."""
    args = parse_args(argv)
    try:
        config = load_config(args.config)
        if args.check_config:
            sys.stdout.write(dump_config(config))
            sys.exit(0)
        from bangui_daemon.app import run_daemon  # imported late: --check-config needs no D-Bus

        sys.exit(run_daemon(config, args.config))
    except ConfigError as exc:
        print(f"bangui-daemon: invalid configuration:\n{exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
