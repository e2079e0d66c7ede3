"""Metric families as plain data, so services describe metrics without prometheus_client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["gauge", "counter"]


@dataclass
class Family:
    """One metric family: its name as exposed, help text, kind and samples.

    A counter's name is given without `_total`; the exposition adds it. A gauge's name
    is exposed exactly as given, `_total` included (fail2ban's own totals reset when
    fail2ban restarts, so the drop-in exporter names are gauges).
    """

    name: str
    help: str
    kind: Kind
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)

    def add(self, value: float, *label_values: str) -> Family:
        if len(label_values) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.labels)} label values expected")
        self.samples.append((label_values, value))
        return self
