"""The config schema as documentation needs it: sections, keys, types, defaults, meaning.

Sections are the fields of `Config`; keys are the fields of each section's dataclass;
the meaning of a key is its attribute docstring in config.py (the string literal right
below the field), so a new key needs only that line to be documented everywhere.
Defaults are taken from `dump_config(Config())`, the same TOML the daemon prints.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from bangui_daemon.config import Config, dump_config


class UndocumentedKeyError(ValueError):
    """A config key (or section) has no docstring in config.py."""


@dataclass(frozen=True)
class Key:
    name: str
    kind: str
    default: str
    doc: str


@dataclass(frozen=True)
class Section:
    name: str
    doc: str
    keys: tuple[Key, ...]


def sections() -> list[Section]:
    """Every section and key of the schema, in the order of config.py."""
    defaults = _defaults()
    result: list[Section] = []
    problems: list[str] = []
    for section_field in dataclasses.fields(Config):
        cls = section_field.default_factory
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            raise TypeError(f"Config.{section_field.name} is not a section dataclass")
        docs = attribute_docs(cls)
        hints = typing.get_type_hints(cls)
        keys = []
        for key_field in dataclasses.fields(cls):
            name = f"{section_field.name}.{key_field.name}"
            doc = docs.get(key_field.name, "")
            if not doc:
                problems.append(name)
            keys.append(Key(key_field.name, _kind(hints[key_field.name]), defaults[name], doc))
        section_doc = inspect.getdoc(cls) or ""
        if not section_doc:
            problems.append(f"[{section_field.name}]")
        result.append(Section(section_field.name, section_doc, tuple(keys)))
    if problems:
        raise UndocumentedKeyError(
            "config keys without a docstring in bangui_daemon/config.py: " + ", ".join(problems)
        )
    return result


def _defaults() -> dict[str, str]:
    """`section.key -> TOML text` of the default, as --check-config prints it."""
    defaults: dict[str, str] = {}
    section = ""
    for line in dump_config(Config()).splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif " = " in line:
            key, _, value = line.partition(" = ")
            defaults[f"{section}.{key}"] = value
    return defaults


def attribute_docs(cls: type[Any]) -> dict[str, str]:
    """Map each annotated field of `cls` to the string literal right below it."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0]
    assert isinstance(body, ast.ClassDef)
    docs: dict[str, str] = {}
    for stmt, following in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(following.value.value.split())
    return docs


def _kind(hint: Any) -> str:  # noqa: PLR0911 - one return per TOML type
    """A reader's name for a key's TOML type."""
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(f'"{choice}"' for choice in typing.get_args(hint))
    if hint is bool:
        return "boolean"
    if hint is int:
        return "integer"
    if hint is float:
        return "number"
    if hint is str:
        return "string"
    origin = typing.get_origin(hint)
    if origin in (tuple, list) or isinstance(hint, types.GenericAlias):
        (item, *_) = typing.get_args(hint)
        if dataclasses.is_dataclass(item):
            fields = ", ".join(f.name for f in dataclasses.fields(item))
            return f"array of tables, each with {fields}"
        return f"list of {_kind(item)}s"
    raise TypeError(f"no documentation name for the type {hint!r}")
