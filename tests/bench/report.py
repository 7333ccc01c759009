"""The bench's one table: rows, goals, the printed form and the JSON form."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from procs import REPO


@dataclass(slots=True)
class Goal:
    """``on`` is "ratio" (vcom / reference) or "value" (vcom's own figure)."""

    on: str
    op: str  # "<=" or ">="
    limit: float
    text: str

    def met(self, value: float) -> bool:
        return value <= self.limit if self.op == "<=" else value >= self.limit


def at_most_ratio(limit: float) -> Goal:
    return Goal("ratio", "<=", limit, f"<= {limit:g}x")


def at_least_ratio(limit: float) -> Goal:
    return Goal("ratio", ">=", limit, f">= {limit:g}x")


def at_most(limit: float, unit: str) -> Goal:
    return Goal("value", "<=", limit, f"<= {limit:g} {unit}")


def at_least(limit: float, unit: str) -> Goal:
    return Goal("value", ">=", limit, f">= {limit:g} {unit}")


@dataclass(slots=True)
class Row:
    key: str  # stable name, for comparing runs
    figure: str
    unit: str
    vcom: float | None
    reference: float | None = None
    reference_name: str = "socat"  # what the reference column holds when it is not socat
    goals: list[Goal] = field(default_factory=list)
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.vcom is None or not self.reference:
            return None
        return self.vcom / self.reference

    @property
    def result(self) -> str:
        if self.vcom is None:
            return "n/a"
        if not self.goals:
            return "-"
        values = [self.ratio if goal.on == "ratio" else self.vcom for goal in self.goals]
        if any(value is None for value in values):
            return "n/a"
        return "pass" if all(g.met(v) for g, v in zip(self.goals, values, strict=True)) else "FAIL"

    @property
    def goal_text(self) -> str:
        return " and ".join(goal.text for goal in self.goals) or "-"


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ports":
        return f"{value:.0f}"
    if abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}"


def cells(row: Row) -> list[str]:
    reference = fmt(row.reference, row.unit) if row.reference is not None else "-"
    if row.reference is not None and row.reference_name != "socat":
        reference += f" ({row.reference_name})"
    ratio = f"{row.ratio:.2f}x" if row.ratio is not None else "-"
    return [row.figure, fmt(row.vcom, row.unit), reference, ratio, row.goal_text, row.result]


def table(rows: list[Row]) -> str:
    head = ["figure", "vcom", "socat", "ratio", "goal", "result"]
    body = [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

    def line(values: list[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)) + " |"

    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    notes = [f"- {r.figure}: {r.note}" for r in rows if r.note]
    return "\n".join(out + ([""] + notes if notes else []))


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "python": platform.python_version()}


def commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain", "--", "vcom"))}


def write_json(path: Path, rows: list[Row], started: float, extra: dict[str, Any]) -> None:
    document = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **commit(),
        "machine": machine() | {"load_at_end": os.getloadavg()},
        "seconds": round(time.monotonic() - started, 1),
        "rows": [
            {**{k: v for k, v in asdict(r).items() if k != "goals"},
             "goal": r.goal_text, "ratio": r.ratio, "result": r.result}
            for r in rows
        ],
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def compare(rows: list[Row], previous: Path) -> str:
    """This run next to an earlier JSON: the ratio (or value) of each figure then and now."""
    old = {r["key"]: r for r in json.loads(previous.read_text())["rows"]}
    out = [f"compared with {previous}:"]
    for row in rows:
        before = old.get(row.key)
        if before is None:
            continue

        def show(ratio: float | None, value: float | None, unit: str) -> str:
            return f"{ratio:.2f}x" if ratio is not None else fmt(value, unit)

        out.append(f"  {row.figure}: {show(before['ratio'], before['vcom'], row.unit)} -> "
                   f"{show(row.ratio, row.vcom, row.unit)}")
    return "\n".join(out)
