"""Bash completion for banguictl, generated from its argument parser.

Commands, options and fixed choices are written into the script as data; jail and task
names are asked from the running daemon (`banguictl --json jails|tasks`, bounded in
time), so a host without the daemon completes everything else and no names.
"""

from __future__ import annotations

import argparse
import shlex

from bangui_daemon.cli import ctl_args
from scripts.docgen.cli_pages import options, subcommands

# Argument names whose values the daemon knows: dest -> the banguictl command listing them.
DYNAMIC = {"jail": "jails", "task": "tasks"}
BUS_CHOICES = ("system", "session")
TOP = "_"  # the key of the options before a command (bash keys cannot be empty)

_SCRIPT = """\
# bash completion for banguictl(1); generated from its argument parser (scripts/docgen).
# Jail and task names come from the running daemon; without one none are offered.

_banguictl_names() {
    # $1: bus ("" = default), $2: jails or tasks
    timeout 3 banguictl ${1:+--bus "$1"} --timeout 2 --json "$2" 2>/dev/null |
        grep -o '"name": *"[^"]*"' | sed 's/.*"\\([^"]*\\)"$/\\1/'
}

_banguictl() {
    local commands=%(commands)s
    local -A opts=(%(opts)s)
    local -A valued=(%(valued)s)
    local -A positionals=(%(positionals)s)
    local -A values=(%(values)s)
    # Split the line ourselves: COMP_WORDS breaks bus addresses at ':' and '='.
    local line=${COMP_LINE:0:COMP_POINT} cur="" cmd=_ bus="" expect="" word
    local -a words
    read -ra words <<<"$line"
    if [[ $line != *[[:space:]] ]]; then
        cur=${words[-1]-}
        unset 'words[-1]'
    fi
    local i npos=0
    for ((i = 1; i < ${#words[@]}; i++)); do
        word=${words[i]}
        if [[ -n $expect ]]; then
            [[ $expect == --bus ]] && bus=$word
            expect=""
        elif [[ $word == --*=* ]]; then
            [[ $word == --bus=* ]] && bus=${word#--bus=}
        elif [[ $word == -* ]]; then
            [[ " ${valued[$cmd]-} " == *" $word "* ]] && expect=$word
        elif [[ $cmd == _ ]]; then
            cmd=$word
        else
            npos=$((npos + 1))
        fi
    done
    local candidates=""
    if [[ -n $expect ]]; then
        candidates=${values[$cmd:$expect]-}
    elif [[ $cur == -* ]]; then
        candidates=${opts[$cmd]-}
    elif [[ $cmd == _ ]]; then
        candidates=$commands
    else
        local -a pos
        read -ra pos <<<"${positionals[$cmd]-}"
        local dest=""
        if ((npos < ${#pos[@]})); then
            dest=${pos[npos]}
        elif [[ ${pos[-1]-} == *+ ]]; then
            dest=${pos[-1]}
        fi
        [[ -n $dest ]] && candidates=${values[$cmd:${dest%%+}]-}
    fi
    if [[ $candidates == @* ]]; then
        candidates=$(_banguictl_names "$bus" "${candidates#@}")
    fi
    local IFS=$'\\n'
    COMPREPLY=($(compgen -W "${candidates//[[:space:]]/$'\\n'}" -- "$cur"))
}
complete -F _banguictl banguictl
"""


def _value_source(action: argparse.Action) -> str | None:
    """What completes this argument's value: fixed choices, or "@jails"/"@tasks"."""
    if action.dest in DYNAMIC:
        return "@" + DYNAMIC[action.dest]
    if "--bus" in action.option_strings:
        return " ".join(BUS_CHOICES)
    if action.choices is not None and not isinstance(action.choices, dict):
        return " ".join(str(choice) for choice in action.choices)
    return None


def _table(entries: dict[str, str]) -> str:
    return " ".join(f"[{shlex.quote(key)}]={shlex.quote(value)}" for key, value in entries.items())


def bash_completion() -> str:
    """The completion script for /usr/share/bash-completion/completions/banguictl."""
    parser = ctl_args.build_parser()
    commands = subcommands(parser)
    opts: dict[str, str] = {}
    valued: dict[str, str] = {}
    positionals: dict[str, str] = {}
    values: dict[str, str] = {}
    for name, sub in [(TOP, parser)] + [(n, p) for n, (_h, p) in commands.items()]:
        words: list[str] = []
        takes: list[str] = []
        dests: list[str] = []
        for action in options(sub):
            source = _value_source(action)
            if action.option_strings:
                words += action.option_strings
                if action.nargs != 0:
                    takes += action.option_strings
                    if source:
                        values.update({f"{name}:{o}": source for o in action.option_strings})
            else:
                dests.append(action.dest + ("+" if action.nargs in ("+", "*") else ""))
                if source:
                    values[f"{name}:{action.dest}"] = source
        opts[name] = " ".join(words)
        valued[name] = " ".join(takes)
        if dests:
            positionals[name] = " ".join(dests)
    return _SCRIPT % {
        "commands": shlex.quote(" ".join(commands)),
        "opts": _table(opts),
        "valued": _table(valued),
        "positionals": _table(positionals),
        "values": _table(values),
    }
