"""Plain Python values -> D-Bus Variants, for a{sv} results whose keys may grow."""

from __future__ import annotations

from collections.abc import Mapping

from dbus_fast import Variant


def variant(value: object) -> Variant:
    """Guess the natural D-Bus type of a task or result value."""
    if isinstance(value, bool):
        return Variant("b", value)
    if isinstance(value, int):
        return Variant("x", value)
    if isinstance(value, float):
        return Variant("d", value)
    if isinstance(value, str):
        return Variant("s", value)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return Variant("as", list(value))
    if isinstance(value, Mapping):
        return Variant("a{sv}", variant_dict(value))
    return Variant("s", str(value))


def variant_dict(values: Mapping[str, object]) -> dict[str, Variant]:
    """Convert a mapping of plain values into a{sv}."""
    return {str(k): variant(v) for k, v in values.items()}
