"""Plain Python values -> D-Bus Variants, for a{sv} values whose keys may grow.

No daemon state: banguictl's client (cli/bus_client.py) wraps its arguments here too.
"""

from __future__ import annotations

from collections.abc import Mapping

from dbus_fast import Variant


def simple_variant(value: object) -> Variant | None:
    """bool -> b, int -> x (the contract's times, ids and counts), str -> s, a list
    or tuple of str -> as; None for any other value. The daemon's results and
    banguictl's arguments (filters, source changes) both follow it."""
    if isinstance(value, bool):
        return Variant("b", value)
    if isinstance(value, int):
        return Variant("x", value)
    if isinstance(value, str):
        return Variant("s", value)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return Variant("as", list(value))
    return None


def variant(value: object) -> Variant:
    """A task or result value as a Variant: `simple_variant`, float -> d, a mapping ->
    a{sv}, anything else as its text."""
    wrapped = simple_variant(value)
    if wrapped is not None:
        return wrapped
    if isinstance(value, float):
        return Variant("d", value)
    if isinstance(value, Mapping):
        return Variant("a{sv}", variant_dict(value))
    return Variant("s", str(value))


def variant_dict(values: Mapping[str, object]) -> dict[str, Variant]:
    """Convert a mapping of plain values into a{sv}."""
    return {str(k): variant(v) for k, v in values.items()}
