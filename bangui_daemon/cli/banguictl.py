"""banguictl: the command-line client of bangui-daemon over D-Bus.

Tables for people, `--json` for scripts. Exit codes: 0 ok, 1 a D-Bus error (or a
failed import/task), 2 a usage error, 3 the daemon (or the bus) is not reachable.
Talks only to `DaemonClient`: all D-Bus details live in `bangui_daemon.cli.bus_client`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TextIO

from bangui_daemon.cli.bus_client import (
    DaemonClient,
    DaemonError,
)
from bangui_daemon.cli.ctl_args import build_parser
from bangui_daemon.cli.ctl_blocklists import (
    cmd_import,
    cmd_preview,
    cmd_runs,
    cmd_source,
    cmd_sources,
)
from bangui_daemon.cli.ctl_context import EXIT_ERROR, PROG, Context, describe_error, exit_code_for
from bangui_daemon.cli.ctl_core import (
    cmd_ban,
    cmd_bans,
    cmd_jails,
    cmd_run,
    cmd_status,
    cmd_tasks,
    cmd_unban,
)
from bangui_daemon.cli.ctl_history import cmd_history, cmd_ip, cmd_lookup, cmd_timeline, cmd_top
from bangui_daemon.cli.ctl_notify import cmd_notify
from bangui_daemon.cli.ctl_panel import cmd_panel
from bangui_daemon.cli.ctl_watch import cmd_watch

COMMANDS: Final[dict[str, Callable[[Context], Awaitable[int]]]] = {
    "status": cmd_status,
    "jails": cmd_jails,
    "bans": cmd_bans,
    "ban": cmd_ban,
    "unban": cmd_unban,
    "tasks": cmd_tasks,
    "run": cmd_run,
    "watch": cmd_watch,
    "history": cmd_history,
    "ip": cmd_ip,
    "top": cmd_top,
    "timeline": cmd_timeline,
    "sources": cmd_sources,
    "source": cmd_source,
    "import": cmd_import,
    "preview": cmd_preview,
    "runs": cmd_runs,
    "lookup": cmd_lookup,
}
SELF_CONNECTING: Final[dict[str, Callable[[Context], Awaitable[int]]]] = {
    "notify": cmd_notify,
    "panel": cmd_panel,
}
"""Long-running commands that connect (and reconnect) by themselves: a bus or a daemon
that is away is a state they show, not an error to exit on."""


def self_connecting(args: argparse.Namespace) -> Callable[[Context], Awaitable[int]] | None:
    if args.command == "watch" and getattr(args, "format", "lines") != "lines":
        return SELF_CONNECTING["panel"]
    return SELF_CONNECTING.get(args.command)


# --- entry points ---------------------------------------------------------------------------
async def execute(ctx: Context) -> int:
    """Run the parsed command on a connected client; map DaemonError to an exit code."""
    try:
        return await COMMANDS[ctx.args.command](ctx)
    except DaemonError as error:
        ctx.err.write(f"{PROG}: {describe_error(error, ctx.client.address_label)}\n")
        ctx.err.flush()
        return exit_code_for(error)


async def run(
    args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Connect to the bus named by `args.bus`, run the command, disconnect."""
    out = out or sys.stdout
    err = err or sys.stderr
    client = DaemonClient(timeout=args.timeout)
    utf8 = (getattr(out, "encoding", None) or "").lower().replace("-", "") == "utf8"
    ctx = Context(
        client=client,
        args=args,
        out=out,
        err=err,
        width=shutil.get_terminal_size((80, 24)).columns,
        bar_char="█" if utf8 else "#",
        progress=err.isatty(),
    )
    command = self_connecting(args)
    if command is not None:
        return await command(ctx)
    try:
        await client.connect(args.bus)
    except DaemonError as error:
        err.write(f"{PROG}: {describe_error(error, client.address_label)}\n")
        return exit_code_for(error)
    try:
        return await execute(ctx)
    finally:
        client.close()


def main(argv: Sequence[str] | None = None) -> None:
    """The `banguictl` console script: parse, run, exit with the command's code."""
    args = build_parser().parse_args(argv)  # exits 2 on a usage error
    try:
        code = asyncio.run(run(args))
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # `banguictl history | head`: not an error worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_ERROR
    sys.exit(code)


if __name__ == "__main__":
    main()
