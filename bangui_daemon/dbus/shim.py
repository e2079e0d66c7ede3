"""Typed decorators over dbus-fast's service decorators.

Debian bookworm ships dbus-fast 1.84, which reads D-Bus signatures only from string
annotations (`-> "a{sv}"`); those break `mypy --strict`. These shims take the
signatures as arguments and hand dbus-fast an `inspect.Signature` carrying them, so
handlers keep real Python annotations and the same code runs on 1.84 and 5.x.
They also check integer arguments against their declared ranges (`validate`) and map
the daemon's errors to the contract's D-Bus error names.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import structlog
from dbus_fast import DBusError
from dbus_fast.constants import PropertyAccess
from dbus_fast.service import dbus_property, method, signal

from bangui_daemon.dbus.names import FAILED_ERROR
from bangui_daemon.dbus.validate import ArgumentCheck, Ranges
from bangui_daemon.errors import BanguiError

log = structlog.get_logger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def _with_signature(
    fn: Callable[..., Any],
    args: Sequence[str] | None,
    returns: str,
    like: Callable[..., Any] | None = None,
) -> None:
    """Attach D-Bus signatures to `fn` using the parameters of `like` (default: fn).

    `args=None` leaves the parameters unannotated (signals need only the return).
    """
    params = list(inspect.signature(like or fn).parameters.values())
    empty = inspect.Parameter.empty
    sigs: list[object] = [empty] * (len(params) - 1) if args is None else list(args)
    if len(params) - 1 != len(sigs):
        raise TypeError(f"{fn.__name__}: {len(params) - 1} parameters, {len(sigs)} signatures")
    fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [params[0].replace(annotation=empty)]
        + [p.replace(annotation=sig) for p, sig in zip(params[1:], sigs, strict=True)],
        return_annotation=returns or empty,
    )


def dbus_method(
    name: str, args: Sequence[str] = (), returns: str = "", ranges: Ranges | None = None
) -> Callable[[F], F]:
    """Export an async method as D-Bus method `name` with the given signatures.

    `ranges` maps each integer argument (by parameter name) to its `IntRange`, and may
    map an ``a{sv}`` argument to ranges of its integer keys; every call is checked
    before the handler runs.
    """
    empty: Mapping[str, Any] = {}

    def decorate(fn: F) -> F:
        names = list(inspect.signature(fn).parameters)[1:]
        check = ArgumentCheck(name, names, args, ranges or empty)

        @functools.wraps(fn)
        async def handler(self: Any, *call_args: Any) -> Any:
            try:
                check(call_args)
                return await fn(self, *call_args)
            except BanguiError as exc:
                raise DBusError(exc.dbus_name, str(exc)) from exc
            except DBusError:
                raise
            except Exception as exc:
                log.exception("dbus_method_failed", method=name)
                raise DBusError(FAILED_ERROR, "internal error; see the daemon's log") from exc

        del handler.__wrapped__  # dbus-fast must see the signature below, not fn's
        _with_signature(handler, args, returns, like=fn)
        return cast(F, method(name=name)(handler))

    return decorate


def dbus_signal(name: str, returns: str) -> Callable[[F], F]:
    """Export a method whose return value is the body of D-Bus signal `name`."""

    def decorate(fn: F) -> F:
        _with_signature(fn, None, returns)
        return cast(F, signal(name=name)(fn))

    return decorate


def dbus_read_property(name: str, signature: str) -> Callable[[F], F]:
    """Export a getter as read-only D-Bus property `name`."""

    def decorate(fn: F) -> F:
        _with_signature(fn, [], signature)
        return cast(F, dbus_property(access=PropertyAccess.READ, name=name)(fn))

    return decorate
