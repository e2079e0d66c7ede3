"""A stand-in for bangui-daemon that only does the process/bus/notify part.

The harness tests use it to prove the ``daemon`` fixture and the bus policy without
depending on the real daemon: ``python -m tests.harness.stub_daemon --config PATH``.
It reads the TOML config, owns ``org.bangui.Daemon1`` on the bus the config names,
answers every method call on ``/org/bangui/Daemon1`` in an ``org.bangui.Daemon1*``
interface with the string ``"stub:<Member>"`` (so a caller can tell "the bus let me
through" from "the bus denied me"), sends READY=1/STATUS=/WATCHDOG=1/STOPPING=1 like
the real one, logs JSON lines to stderr and exits 0 on SIGTERM.

Signals: SIGUSR1 emits ``BanAdded("sshd", "192.0.2.1", now, 600)``; SIGHUP logs
``config_reloaded``. Env ``STUB_EXIT_BEFORE_READY=N`` exits with N before READY=1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
import tomllib
from typing import Any

from dbus_fast import BusType, Message, MessageType, NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus

BUS_NAME = "org.bangui.Daemon1"
OBJECT_PATH = "/org/bangui/Daemon1"


def log(event: str, level: str = "info", **fields: Any) -> None:
    record = {"event": event, "level": level, "pid": os.getpid(), **fields}
    sys.stderr.write(json.dumps(record, default=str) + "\n")
    sys.stderr.flush()


def sd_notify(text: str) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    addr = "\0" + path[1:] if path.startswith("@") else path
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(text.encode(), addr)


def on_message(msg: Message) -> Message | None:
    if (
        msg.message_type == MessageType.METHOD_CALL
        and msg.path == OBJECT_PATH
        and (msg.interface or "").startswith(BUS_NAME)
    ):
        return Message.new_method_return(msg, "s", [f"stub:{msg.member}"])
    return None


async def run(config: dict[str, Any]) -> int:
    bus_setting = str(config.get("dbus", {}).get("bus", "system"))
    if bus_setting == "system":
        bus = MessageBus(bus_type=BusType.SYSTEM)
    elif bus_setting == "session":
        bus = MessageBus(bus_type=BusType.SESSION)
    else:
        bus = MessageBus(bus_address=bus_setting)
    await bus.connect()
    bus.add_message_handler(on_message)
    reply = await bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE)
    if reply != RequestNameReply.PRIMARY_OWNER:
        log("bus_name_not_acquired", "error", reply=str(reply))
        return 1
    log("bus_name_acquired", name=BUS_NAME, unique_name=bus.unique_name)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def emit_ban() -> None:
        bus.send(
            Message.new_signal(
                OBJECT_PATH,
                BUS_NAME,
                "BanAdded",
                "ssxx",
                ["sshd", "192.0.2.1", int(time.time()), 600],
            )
        )
        log("ban_signal_sent")

    def reload() -> None:
        log("config_reloaded")
        sd_notify("STATUS=stub daemon reloaded")

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, emit_ban)
    loop.add_signal_handler(signal.SIGHUP, reload)
    # handlers first, READY=1 second: a SIGTERM right after READY must not kill us
    sd_notify("READY=1\nSTATUS=stub daemon serving org.bangui.Daemon1")

    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    interval = usec / 2e6 if usec > 0 else None
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            sd_notify("WATCHDOG=1")
    sd_notify("STOPPING=1")
    log("daemon_stopping")
    bus.disconnect()
    log("daemon_stopped")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="stub_daemon")
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    with open(args.config, "rb") as f:
        config = tomllib.load(f)
    log("config_loaded", path=args.config, sections=sorted(config))
    early = os.environ.get("STUB_EXIT_BEFORE_READY")
    if early:
        print("stub: exiting before READY=1 as asked", file=sys.stderr)
        return int(early)
    return asyncio.run(run(config))


if __name__ == "__main__":
    sys.exit(main())
