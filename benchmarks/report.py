"""The results: one row per figure (value, ceiling, ratio, goal), details per scenario.

Rendered three ways: a plain table on stdout, `results/latest.json`, and `results/latest.md`
(the table plus the details: CPU split, statements per job, plans, profiles).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal


@dataclasses.dataclass(frozen=True)
class Goal:
    """A target from the issue: `value` (or `ratio`) must be at least / at most `threshold`."""

    op: Literal[">=", "<="]
    threshold: float
    on: Literal["value", "ratio"] = "value"
    unit: str = ""

    def check(self, value: float | None, ratio: float | None) -> bool | None:
        """True or False, or None when the figure is missing."""
        subject = value if self.on == "value" else ratio
        if subject is None:
            return None
        return subject >= self.threshold if self.op == ">=" else subject <= self.threshold

    def __str__(self) -> str:
        sign = "≥" if self.op == ">=" else "≤"
        subject = "" if self.on == "value" else "ratio "
        return f"{subject}{sign} {_number(self.threshold)}{' ' + self.unit if self.unit else ''}"


@dataclasses.dataclass
class Row:
    """One figure of the table. `value` None means it could not be measured (see `note`)."""

    scenario: str
    figure: str
    value: float | None
    unit: str
    ceiling: float | None = None
    ceiling_label: str = ""
    goal: Goal | None = None
    note: str = ""
    samples: list[float] = dataclasses.field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        """value / ceiling, when both are known."""
        if self.value is None or not self.ceiling:
            return None
        return self.value / self.ceiling

    @property
    def met(self) -> bool | None:
        """Whether the goal is met; None without a goal or a value."""
        return None if self.goal is None else self.goal.check(self.value, self.ratio)

    def as_json(self) -> dict[str, Any]:
        """The row as JSON, with the derived ratio and verdict."""
        return {
            **dataclasses.asdict(self),
            "goal": None if self.goal is None else str(self.goal),
            "ratio": self.ratio,
            "met": self.met,
        }


def median(samples: Sequence[float]) -> float:
    """The median of the runs (the machine is shared and noisy; one run can be off)."""
    return float(statistics.median(samples))


class Report:
    """Rows and details, collected as the scenarios run."""

    def __init__(self, meta: dict[str, Any]) -> None:
        self.meta = meta
        self.rows: list[Row] = []
        self.details: dict[str, Any] = {}
        self.sections: list[tuple[str, str]] = []

    def add(self, row: Row) -> Row:
        """Record a row and say it on stderr at once, so a long run shows progress."""
        self.rows.append(row)
        print(f"  {row.scenario} | {row.figure}: {_cell_value(row)}", file=sys.stderr, flush=True)
        return row

    def detail(self, key: str, value: Any) -> None:
        """Extra data for the JSON (CPU split, statements, raw runs)."""
        self.details[key] = value

    def section(self, title: str, text: str) -> None:
        """A block of preformatted text for the Markdown report (plans, profiles)."""
        self.sections.append((title, text))

    def table(self) -> str:
        """The plain-text table printed at the end."""
        header = ("scenario", "figure", "value", "ceiling", "ratio", "goal", "met?")
        lines = [header, *(_cells(row) for row in self.rows)]
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        rule = "  ".join("-" * width for width in widths)
        out = [_join(lines[0], widths), rule, *(_join(line, widths) for line in lines[1:])]
        return "\n".join(out)

    def markdown(self) -> str:
        """The table and the details, as Markdown."""
        header = ("scenario", "figure", "value", "ceiling", "ratio", "goal", "met?")
        out = [f"# paceline benchmark — {self.meta.get('started', '')}", ""]
        out += [f"- {key}: {value}" for key, value in self.meta.items() if key != "started"]
        out += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += [
            "| " + " | ".join(cell.replace("|", "/") for cell in _cells(row)) + " |"
            for row in self.rows
        ]
        notes = [f"- **{row.figure}**: {row.note}" for row in self.rows if row.note]
        if notes:
            out += ["", "## Notes", "", *notes]
        for title, text in self.sections:
            out += ["", f"## {title}", "", "```", text.rstrip(), "```"]
        return "\n".join(out) + "\n"

    def as_json(self) -> dict[str, Any]:
        """Everything, for `latest.json`."""
        return {
            "meta": self.meta,
            "rows": [row.as_json() for row in self.rows],
            "details": self.details,
            "sections": dict(self.sections),
        }

    def write(self, directory: Path, name: str = "latest") -> None:
        """Write `<name>.json` and `<name>.md` into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{name}.json").write_text(json.dumps(self.as_json(), indent=2, default=str))
        (directory / f"{name}.md").write_text(self.markdown())


def _cells(row: Row) -> tuple[str, ...]:
    met = {None: "-" if row.goal is None else "n/a", True: "yes", False: "NO"}[row.met]
    ceiling = "" if row.ceiling is None else f"{_number(row.ceiling)} ({row.ceiling_label})"
    ratio = "" if row.ratio is None else f"{row.ratio:.2f}"
    goal = "" if row.goal is None else str(row.goal)
    return (row.scenario, row.figure, _cell_value(row), ceiling, ratio, goal, met)


def _cell_value(row: Row) -> str:
    if row.value is None:
        return row.note.split(";")[0] if row.note else "n/a"
    return f"{_number(row.value)} {row.unit}".rstrip()


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _join(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
