"""In-process events from services and tasks to whoever publishes them (the D-Bus edge).

Services must not import the D-Bus layer (the arrows point one way), so they publish
plain dataclasses here and the edge turns them into signals (paced: dbus/signals.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class BanAdded:
    jail: str
    ip: str
    timeofban: int
    bantime: int


@dataclass(frozen=True)
class BanRemoved:
    jail: str
    ip: str


@dataclass(frozen=True)
class BansChanged:
    added: int
    removed: int


@dataclass(frozen=True)
class TaskFinished:
    name: str
    status: str
    details: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class PropertiesChanged:
    """Properties (D-Bus names) of one interface, "core" or "geo", whose values changed."""

    values: Mapping[str, object]
    interface: str = "core"


@dataclass(frozen=True)
class HistorySynced:
    new_events: int


@dataclass(frozen=True)
class ImportStarted:
    source_id: int
    run_id: int


@dataclass(frozen=True)
class ImportProgress:
    source_id: int
    done: int
    total: int


@dataclass(frozen=True)
class ImportFinished:
    source_id: int
    status: str
    added: int
    removed: int


Event = (
    BanAdded
    | BanRemoved
    | BansChanged
    | TaskFinished
    | PropertiesChanged
    | HistorySynced
    | ImportStarted
    | ImportProgress
    | ImportFinished
)
Subscriber = Callable[[Event], None]


class EventHub:
    """Synchronous fan-out; subscribers must only enqueue, never block."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a subscriber and return a function that removes it again."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def publish(self, event: Event) -> None:
        """Hand `event` to every subscriber; one failing subscriber never stops the rest."""
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.exception("event_subscriber_failed", event_type=type(event).__name__)
