"""The daemon with a SIGKILL armed inside a blocklist import: the crash tests' seam.

``python -m tests.harness.crash_daemon --config FILE`` runs ``bangui-daemon`` after
wrapping three of the importer's collaborators so that the process SIGKILLs itself
at the point ``$BGT_CRASH_AT`` names (unset: the plain daemon):

after_download   ImportStarted is published: parsed, run claimed, nothing banned
ban:N            the Nth banip call starts: N-1 batches banned, the (N-1)th still
                 marked pending, the Nth batch's intent written and not sent
before_complete  inside the final transaction (rolled back by the crash): all
                 banned and unbanned, the run still pending

The product carries no hook: these points are reached from the test side only.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import Any

from bangui_daemon.blocklist import importer
from bangui_daemon.cli.daemon import main
from bangui_daemon.events import EventHub, ImportStarted
from bangui_daemon.fail2ban.client import Fail2banClient

MODULE = "tests.harness.crash_daemon"
ENV = "BGT_CRASH_AT"


def _crash() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> None:
    """Wrap the collaborator that reaches `point` so that it SIGKILLs this process."""
    if point == "after_download":
        publish = EventHub.publish

        def publishing(self: EventHub, event: Any) -> None:
            publish(self, event)
            if isinstance(event, ImportStarted):
                _crash()

        EventHub.publish = publishing  # type: ignore[method-assign]
    elif point.startswith("ban:"):
        nth = int(point.removeprefix("ban:"))
        ban = Fail2banClient.ban
        calls = 0

        async def banning(self: Fail2banClient, jail: str, ips: Sequence[str], **kw: Any) -> int:
            nonlocal calls
            calls += 1
            if calls == nth:
                _crash()
            return await ban(self, jail, ips, **kw)

        Fail2banClient.ban = banning  # type: ignore[method-assign]
    elif point == "before_complete":
        # the importer's own binding of the name (it imports the function itself)
        complete = importer.__dict__["complete_run"]

        async def completing(*args: Any, **kwargs: Any) -> None:
            _crash()
            await complete(*args, **kwargs)

        importer.__dict__["complete_run"] = completing
    else:
        raise SystemExit(f"{MODULE}: unknown crash point {point!r}")


if __name__ == "__main__":
    if os.environ.get(ENV):
        arm(os.environ[ENV])
    main()
