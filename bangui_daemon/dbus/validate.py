"""Integer arguments at the D-Bus edge: every one has a declared range, checked here.

A D-Bus type bounds a value (``u``: 0..2**32-1, ``x``: int64) but almost none of those
values mean anything, and int64 arithmetic further in (bucket edges, page offsets,
SQLite parameters) overflows. So each method declares, per integer argument (and per
integer key of an ``a{sv}`` argument), the range it accepts; `dbus_method` refuses to
export a method with an integer argument that has none, and checks every call before
the handler runs: a value outside is `InvalidArgument` naming the argument.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dbus_fast import Variant

from bangui_daemon.errors import InvalidArgument

INTEGER_SIGNATURES = frozenset("ynqiuxt")
U32_MAX = 2**32 - 1
MAX_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z: later Unix times are typos or attacks
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class IntRange:
    """The values an integer argument accepts, both ends included."""

    lo: int
    hi: int

    def check(self, name: str, value: int) -> None:
        if not self.lo <= value <= self.hi:
            raise InvalidArgument(f"{name} must be from {self.lo} to {self.hi}, got {value}")


TIME = IntRange(0, MAX_TIME)  # Unix seconds
BUCKET = IntRange(1, MAX_TIME)  # seconds
ID = IntRange(0, U32_MAX)  # a row id: unknown ids are NotFound, not a range error
OFFSET = IntRange(0, U32_MAX)  # past the end is an empty page
PAGE = IntRange(1, U32_MAX)  # pages count from 1
PAGE_SIZE = IntRange(1, MAX_PAGE_SIZE)

KeyRanges = Mapping[str, IntRange]  # for an a{sv} argument: key -> range
Ranges = Mapping[str, IntRange | KeyRanges]


class ArgumentCheck:
    """The range checks of one method, built once when the method is exported."""

    def __init__(
        self, method: str, names: Sequence[str], signatures: Sequence[str], ranges: Ranges
    ) -> None:
        if len(names) != len(signatures):
            raise TypeError(f"{method}: {len(names)} parameters, {len(signatures)} signatures")
        unknown = set(ranges) - set(names)
        if unknown:
            raise TypeError(f"{method}: ranges for unknown arguments {sorted(unknown)}")
        self._checks: list[tuple[int, str, IntRange | KeyRanges]] = []
        for index, (name, signature) in enumerate(zip(names, signatures, strict=True)):
            declared = ranges.get(name)
            if signature in INTEGER_SIGNATURES and not isinstance(declared, IntRange):
                raise TypeError(f"{method}: integer argument {name} needs an IntRange")
            if declared is not None:
                if signature not in INTEGER_SIGNATURES and signature != "a{sv}":
                    raise TypeError(f"{method}: {name} ({signature}) takes no range")
                self._checks.append((index, name.rstrip("_"), declared))

    def __call__(self, args: Sequence[Any]) -> None:
        for index, name, declared in self._checks:
            value = args[index]
            if isinstance(declared, IntRange):
                declared.check(name, value)
                continue
            for key, variant in value.items():
                limits = declared.get(key)
                if (
                    limits is not None
                    and isinstance(variant, Variant)
                    and variant.signature in INTEGER_SIGNATURES
                ):
                    limits.check(f"{name} {key}", variant.value)
