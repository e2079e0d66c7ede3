"""The desktop's notification server (`org.freedesktop.Notifications` on the session bus).

Only `banguictl notify`, a per-user agent, talks to it: a system daemon has no
business posting on somebody's desktop. Kept beside bus_client.py so that the rest
of the CLI never touches a dbus-fast type.
"""

from __future__ import annotations

from typing import Final

from dbus_fast import Variant

from bangui_daemon.cli.bus_client import ERROR_FAILED, DaemonClient, DaemonError

NOTIFICATIONS_NAME: Final = "org.freedesktop.Notifications"
NOTIFICATIONS_PATH: Final = "/org/freedesktop/Notifications"
APP_NAME: Final = "bangui"
ICON: Final = "security-high"
URGENCY_LOW: Final = 0
URGENCY_NORMAL: Final = 1


class DesktopNotifications:
    """Post and replace notifications through a connected session-bus client."""

    def __init__(self, session: DaemonClient) -> None:
        self._session = session

    async def notify(
        self,
        summary: str,
        body: str,
        *,
        replaces_id: int = 0,
        urgency: int = URGENCY_NORMAL,
        timeout_ms: int = -1,
    ) -> int:
        """Show (or, with `replaces_id`, update in place) one notification; return its id."""
        out = await self._session.call(
            NOTIFICATIONS_NAME,
            "Notify",
            "susssasa{sv}i",
            [
                APP_NAME,
                replaces_id,
                ICON,
                summary,
                body,
                [],
                {"urgency": Variant("y", urgency), "category": Variant("s", "network")},
                timeout_ms,
            ],
            destination=NOTIFICATIONS_NAME,
            path=NOTIFICATIONS_PATH,
        )
        if len(out) != 1 or isinstance(out[0], bool) or not isinstance(out[0], int):
            raise DaemonError(ERROR_FAILED, "Notify returned no notification id")
        return out[0]
