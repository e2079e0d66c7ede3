"""The few man(7) macros the generated pages use, with roff's escaping rules."""

from __future__ import annotations

import os
import time


def text(value: str) -> str:
    """Escape running text: backslashes, and a control character at a line start."""
    escaped = value.replace("\\", "\\e")
    return "\n".join(
        "\\&" + line if line.startswith((".", "'")) else line for line in escaped.split("\n")
    )


def literal(value: str) -> str:
    """Escape a command-line word or code: every ASCII hyphen is a minus sign."""
    return text(value).replace("-", "\\-")


class Page:
    """One man page, built section by section; `render()` returns the roff source."""

    def __init__(self, name: str, section: str, summary: str, manual: str) -> None:
        self.lines = [
            f'.TH "{name.upper()}" "{section}" "{_date()}" "bangui-daemon" "{manual}"',
            ".SH NAME",
            f"{literal(name)} \\- {text(summary)}",
        ]

    def heading(self, title: str) -> None:
        self.lines.append(f".SH {title.upper()}")

    def subheading(self, title: str) -> None:
        self.lines.append(f'.SS "{text(title)}"')

    def para(self, value: str) -> None:
        self.lines += [".PP", text(value)]

    def raw(self, roff: str) -> None:
        """Append roff that the caller escaped already (e.g. with `literal`)."""
        self.lines.append(roff)

    def item(self, tag: str, body: str) -> None:
        """A tagged paragraph; `tag` is roff (escaped by the caller), `body` plain text."""
        self.lines += [".TP", tag]
        if body:
            self.lines.append(text(body))

    def example(self, value: str) -> None:
        self.lines += [".PP", ".RS 4", ".nf", literal(value), ".fi", ".RE"]

    def see_also(self, *refs: str) -> None:
        self.heading("see also")
        parts = [f"\\fB{literal(name)}\\fR({section})" for name, section in map(_ref, refs)]
        self.lines.append(",\n".join(parts))

    def render(self) -> str:
        return "\n".join(self.lines) + "\n"


def bold(value: str) -> str:
    return f"\\fB{literal(value)}\\fR"


def italic(value: str) -> str:
    return f"\\fI{literal(value)}\\fR"


def _ref(ref: str) -> tuple[str, str]:
    name, _, section = ref.partition("(")
    return name, section.rstrip(")")


def _date() -> str:
    """The build's date from SOURCE_DATE_EPOCH (set by dpkg), so builds are reproducible."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    return time.strftime("%Y-%m-%d", time.gmtime(int(epoch))) if epoch.isdigit() else ""
