"""Markdown sections and the issue's targets, printed next to the figures (never asserted)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Target:
    goal: str
    measured: str
    met: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return {True: "met", False: "**missed**", None: "not measured"}[self.met]


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.lines.append("| " + " | ".join(header) + " |")
        self.lines.append("|" + "---|" * len(header))
        self.lines.extend("| " + " | ".join(str(c) for c in row) + " |" for row in rows)
        self.lines.append("")

    def target(self, goal: str, measured: str, met: bool | None) -> None:
        self.targets.append(Target(goal, measured, met))

    def markdown(self) -> str:
        out = [f"## {self.title}", "", *self.lines]
        if self.targets:
            out += ["", "| target | measured | verdict |", "|---|---|---|"]
            out += [f"| {t.goal} | {t.measured} | {t.verdict} |" for t in self.targets]
        return "\n".join(out).rstrip() + "\n"


def targets_summary(sections: Sequence[Section]) -> str:
    """How many targets were met, and (for more than one section) all of them in one
    table; one section's table is already printed under it."""
    rows = [t for s in sections for t in s.targets]
    met = sum(1 for t in rows if t.met)
    out = ["## Targets", "", f"{met} of {len(rows)} met."]
    if len([s for s in sections if s.targets]) > 1:
        out += ["", "| target | measured | verdict |", "|---|---|---|"]
        out += [f"| {t.goal} | {t.measured} | {t.verdict} |" for t in rows]
    return "\n".join(out) + "\n"


def progress(message: str) -> None:
    """Round-by-round progress on stderr, so stdout stays the markdown report."""
    print(message, file=sys.stderr, flush=True)
