"""The generated man pages, example config and completion against the code they describe.

Each test walks the parsers, the config dataclasses or the introspection XML on its own
and fails when the generated text lacks something found there: a new option, command
or config key that the generator missed, or one without its doc text.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import pytest

from bangui_daemon import errors
from bangui_daemon.cli import ctl_args
from bangui_daemon.cli import daemon as daemon_cli
from bangui_daemon.config import Config, dump_config, load_config
from scripts.docgen import roff
from scripts.docgen.cli_pages import ctl_page, daemon_page
from scripts.docgen.completion import bash_completion
from scripts.docgen.config_docs import config_page, example_config
from scripts.docgen.dbus_page import INTERFACE_XML, dbus_page
from scripts.docgen.schema import attribute_docs
from tests.harness.completion import complete as harness_complete

REPO = Path(__file__).resolve().parents[2]
BASH = shutil.which("bash")


def all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every argument of a parser and, recursively, of its sub-commands."""
    found: list[argparse.Action] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += all_actions(sub)
        else:
            found.append(action)
    return found


def config_keys() -> list[tuple[str, str]]:
    """`(section, key)` of every key of the schema, walked from the dataclasses."""
    return [
        (section.name, key.name)
        for section in dataclasses.fields(Config)
        for key in dataclasses.fields(getattr(Config(), section.name))
    ]


@pytest.mark.parametrize(
    ("page", "parser"),
    [(daemon_page, daemon_cli.build_parser), (ctl_page, ctl_args.build_parser)],
    ids=["bangui-daemon.8", "banguictl.1"],
)
def test_man_page_names_every_option_and_argument(page: object, parser: object) -> None:
    assert callable(page)
    assert callable(parser)
    text = page()
    for action in all_actions(parser()):
        for option in action.option_strings:
            assert f"\\fB{roff.literal(option)}\\fR" in text, f"{option} missing"
        if not action.option_strings:
            name = action.metavar if isinstance(action.metavar, str) else action.dest
            assert f"\\fI{roff.literal(name)}" in text, f"argument {name} missing"


def test_banguictl_page_has_a_section_per_command() -> None:
    text = ctl_page()
    for action in ctl_args.build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            assert action.choices
            for name in action.choices:
                assert f'.SS "{name}"' in text


def test_config_page_and_example_document_every_key_with_its_default() -> None:
    page = config_page()
    example = example_config()
    defaults = tomllib.loads(dump_config(Config()))
    for section, key in config_keys():
        assert f'.SS "[{section}]"' in page
        assert f"\\fB{roff.literal(key)}\\fR = " in page, f"{section}.{key} not in bangui.toml.5"
        shown = re.search(rf"^\[{section}\]$(.*?)(?=^\[|\Z)", example, re.M | re.S)
        assert shown is not None, f"[{section}] not in the example"
        line = re.search(rf"^#{key} = (.*)$", shown.group(1), re.M)
        assert line is not None, f"{section}.{key} not in the example config"
        assert tomllib.loads(f"v = {line.group(1)}")["v"] == defaults[section][key]


def test_example_config_with_every_key_uncommented_is_the_defaults(tmp_path: Path) -> None:
    example = tmp_path / "bangui.toml"
    example.write_text(re.sub(r"^#(\w+ = )", r"\1", example_config(), flags=re.M))
    assert load_config(str(example)) == Config()


def test_check_config_accepts_the_shipped_example(tmp_path: Path) -> None:
    example = tmp_path / "bangui.toml"
    example.write_text(example_config())
    result = subprocess.run(
        [sys.executable, "-m", "bangui_daemon", "--check-config", "--config", str(example)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == dump_config(Config())


def test_a_key_without_a_docstring_is_not_documented() -> None:
    @dataclass
    class Section:
        """A section."""

        documented: int = 1
        """What it means."""
        bare: int = 2

    assert attribute_docs(Section) == {"documented": "What it means."}


def test_dbus_page_lists_every_member_with_its_access_and_every_error() -> None:
    text = dbus_page()
    root = ElementTree.parse(INTERFACE_XML).getroot()
    for interface in root.iter("interface"):
        assert f".SH INTERFACE {interface.get('name', '').upper()}" in text
        for member in [*interface.iter("method"), *interface.iter("signal")]:
            signature = ", ".join(
                f"{arg.get('type')} {arg.get('name')}"
                for arg in member.findall("arg")
                if arg.get("direction", "in") == "in"
            )
            assert f"\\fB{member.get('name')}\\fR({roff.literal(signature)})" in text
        for prop in interface.iter("property"):
            assert f"\\fB{prop.get('name')}\\fR {roff.literal(prop.get('type', ''))}" in text
    # GetStatus is open to everyone; BanIp needs root or the manage-bans polkit action
    assert re.search(r"\\fBGetStatus\\fR\(\).*\n\(read\)", text)
    assert re.search(
        r"\\fBBanIp\\fR\(.*\n\(admin, polkit action org.bangui.Daemon1.manage-bans\)", text
    )
    for cls in (errors.InvalidArgument, errors.NotFound, errors.Busy, errors.AccessDenied):
        assert roff.literal(cls.dbus_name) in text


@pytest.mark.skipif(shutil.which("man") is None, reason="man (man-db) is not installed")
@pytest.mark.parametrize(
    "render", [daemon_page, ctl_page, config_page, dbus_page], ids=lambda f: f.__name__
)
def test_man_pages_render_without_warnings(render: object, tmp_path: Path) -> None:
    assert callable(render)
    page = tmp_path / "page.1"
    page.write_text(render())
    result = subprocess.run(
        ["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", str(page)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"LC_ALL": "C.UTF-8", "MANWIDTH": "80", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0
    assert result.stderr == ""


# --- bash completion (the dynamic names: tests/integration/test_completion.py) ---------
def complete(line: str, tmp_path: Path) -> list[str]:
    """What the generated completion offers for `line` (cursor at its end)."""
    script = tmp_path / "banguictl"
    script.write_text(bash_completion())
    return harness_complete(script, "_banguictl", line, {"PATH": "/usr/bin:/bin"})


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_completion_offers_commands_options_and_choices(tmp_path: Path) -> None:
    parser = ctl_args.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert complete("banguictl ", tmp_path) == list(commands)
    assert complete("banguictl ti", tmp_path) == ["timeline"]
    assert complete("banguictl --bus unix:path=/run/x t", tmp_path) == [
        "tasks",
        "top",
        "timeline",
    ]
    assert complete("banguictl --bus ", tmp_path) == ["system", "session"]
    assert set(complete("banguictl history --", tmp_path)) >= {
        "--since",
        "--until",
        "--page-size",
        "--json",
    }
    assert complete("banguictl history --action ", tmp_path) == ["ban", "unban"]
    assert complete("banguictl top c", tmp_path) == ["country"]
    assert complete("banguictl --timeout 5 top ", tmp_path) == ["jail", "country", "asn", "ip"]
    # jail names come from the daemon: none when it is not on the bus, and no error
    assert complete(f"banguictl --bus unix:path={tmp_path}/none ban ", tmp_path) == []
