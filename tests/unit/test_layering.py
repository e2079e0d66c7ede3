"""The import arrows run one way: D-Bus edge -> services -> adapters; tasks -> services.

And each outside library (dbus-fast, aiosqlite, aiohttp...) is imported only behind
its own edge, as the README's "How it is built" says.

Read from the source with `ast`, so an import under TYPE_CHECKING or inside a
function counts as much as one at the top: a type is an arrow too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "bangui_daemon"
ADAPTERS = {"archive", "fail2ban", "blocklist", "geo", "crowdsec", "metrics"}
SHARED = {"models", "events", "errors", "config"}
ROOTS = {"wiring", "app", "cli"}  # the composition root and the programs

# For each layer: the top-level parts of bangui_daemon it must never import.
FORBIDDEN: dict[str, set[str]] = {
    "dbus": ADAPTERS | ROOTS | {"tasks"},
    "services": ROOTS | {"dbus", "tasks"},
    **{adapter: ROOTS | {"dbus", "tasks", "services"} for adapter in ADAPTERS},
    "models": ADAPTERS | ROOTS | {"dbus", "tasks", "services"},
    "events": ADAPTERS | ROOTS | {"dbus", "tasks", "services"},
    "errors": ADAPTERS | ROOTS | {"dbus", "tasks", "services"},
}
ONLY: dict[str, set[str]] = {"tasks": {"tasks", "services"} | SHARED}  # allow-list

# Each outside library behind its own edge: where it may be imported (module prefixes).
LIBRARIES: dict[str, tuple[str, ...]] = {
    "dbus_fast": (
        "bangui_daemon.dbus",
        "bangui_daemon.cli.bus_client",
        "bangui_daemon.cli.desktop_notifications",
    ),
    "aiosqlite": ("bangui_daemon.archive",),
    "aiohttp": (
        "bangui_daemon.blocklist.fetch",
        "bangui_daemon.geo.http_fallback",
        "bangui_daemon.crowdsec.lapi",
        "bangui_daemon.metrics.exposition",
    ),
    "prometheus_client": ("bangui_daemon.metrics",),
    "geoip2": ("bangui_daemon.geo.lookup",),
    "maxminddb": ("bangui_daemon.geo.lookup",),
}


def part_of(module: str) -> str:
    """The top-level part a bangui_daemon module belongs to ("dbus", "wiring", ...)."""
    return module.split(".")[1] if module.count(".") else ""


def all_imports(module: str, source: str, is_package: bool = False) -> set[str]:
    """Every module `source` imports, relative imports resolved."""
    found: set[str] = set()
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from bangui_daemon import tasks` names a part too
            if target == "bangui_daemon":
                found.update(f"bangui_daemon.{alias.name}" for alias in node.names)
    return found


def imports_of(module: str, source: str, is_package: bool = False) -> set[str]:
    """Every bangui_daemon module `source` imports."""
    found = all_imports(module, source, is_package)
    return {m for m in found if m == "bangui_daemon" or m.startswith("bangui_daemon.")}


def library_misuse(module: str, imported: set[str]) -> list[str]:
    """Imports of an outside library from a module outside that library's edge."""
    bad = []
    for target in sorted(imported):
        allowed = LIBRARIES.get(target.split(".")[0])
        if allowed is not None and not module.startswith(allowed):
            bad.append(f"{module} imports {target}")
    return bad


def violations(module: str, imported: set[str]) -> list[str]:
    """The arrows from `module` to `imported` that run the wrong way."""
    layer = part_of(module)
    bad = []
    for target in sorted(imported):
        to = part_of(target)
        if not to or to == layer:
            continue
        if to in FORBIDDEN.get(layer, set()) or (layer in ONLY and to not in ONLY[layer]):
            bad.append(f"{module} imports {target}")
    return bad


def product_modules() -> list[tuple[str, str, bool]]:
    modules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules.append((name, path.read_text(encoding="utf-8"), is_package))
    return modules


def test_every_import_arrow_runs_one_way() -> None:
    modules = product_modules()
    assert len(modules) > 50  # the walk found the package
    bad = [v for name, src, pkg in modules for v in violations(name, imports_of(name, src, pkg))]
    assert bad == []


def test_each_outside_library_stays_behind_its_edge() -> None:
    bad = [
        v
        for name, src, pkg in product_modules()
        for v in library_misuse(name, all_imports(name, src, pkg))
    ]
    assert bad == []


def test_the_check_sees_a_library_outside_its_edge() -> None:
    source = "import aiosqlite\nfrom dbus_fast import Variant\nfrom aiohttp import web"
    assert library_misuse("bangui_daemon.services.x", all_imports("x", source)) == [
        "bangui_daemon.services.x imports aiohttp",
        "bangui_daemon.services.x imports aiosqlite",
        "bangui_daemon.services.x imports dbus_fast",
    ]
    assert library_misuse("bangui_daemon.archive.db", {"aiosqlite"}) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("bangui_daemon.dbus.core", "from bangui_daemon.tasks.scheduler import Scheduler", 1),
        ("bangui_daemon.dbus.core", "from ..archive import db", 1),
        ("bangui_daemon.dbus.core", "if TYPE_CHECKING:\n    import bangui_daemon.wiring", 1),
        ("bangui_daemon.dbus.core", "from bangui_daemon import geo", 1),
        ("bangui_daemon.dbus.core", "from bangui_daemon.services.bans import BanService", 0),
        ("bangui_daemon.tasks.x", "from bangui_daemon.fail2ban.client import Fail2banClient", 1),
        ("bangui_daemon.tasks.x", "def f():\n    from bangui_daemon.archive import db", 1),
        ("bangui_daemon.tasks.x", "from bangui_daemon.services.geo import GeoService", 0),
        ("bangui_daemon.tasks.x", "from bangui_daemon.models import TaskResult", 0),
        ("bangui_daemon.archive.db", "from bangui_daemon.services import history", 1),
        ("bangui_daemon.geo.lookup", "from bangui_daemon.cli import render", 1),
        ("bangui_daemon.blocklist.importer", "from .. import tasks", 1),
        ("bangui_daemon.blocklist.importer", "from bangui_daemon.fail2ban import client", 0),
        ("bangui_daemon.services.bans", "from bangui_daemon.dbus.names import BUS_NAME", 1),
    ],
)
def test_the_check_sees_a_wrong_arrow(module: str, source: str, expected: int) -> None:
    assert len(violations(module, imports_of(module, source))) == expected
