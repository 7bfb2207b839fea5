"""Charts of a run (``bench/run.py --plot DIR``): one SVG per benchmark, ``DIR/<topic>.svg``, in
which every figure is a panel with its value beside the reference measured in the same run, and
``DIR/run.json``: the figures of each charted benchmark, when it ran, the command, and the machine
(cores, memory, load average before and after, since the figures depend on what else ran). A run
of some benchmarks replaces their entries and keeps the others'. The docs' Performance page is
built from ``run.json`` (docs/hooks.py). ``python bench/_plot.py DIR`` draws the charts again from
``DIR/run.json`` without running anything.

matplotlib is a dev dependency (``pip install -e '.[dev]'``), imported only when charts are asked
for.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import Figure, _number

__all__ = ["RUN_FILE", "Recording", "chart", "machine", "pyplot", "redraw", "write_charts"]

RUN_FILE = "run.json"
VALUE_COLOUR = "#3f51b5"  # the docs' theme colour (indigo)
MISSED_COLOUR = "#e65100"
REFERENCE_COLOUR = "#9e9e9e"
PANEL_INCHES = 1.2
WIDTH_INCHES = 8.0


@dataclass(frozen=True)
class Recording:
    """One benchmark's figures, and when and where they were measured."""

    topic: str
    figures: Sequence[Figure]
    started: datetime
    seconds: float
    load_before: float
    load_after: float
    command: str


def _memory_gib() -> float:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return float("nan")
    return pages * size / 2**30


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(_memory_gib(), 1),
        "cpu": _cpu_model(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def pyplot() -> Any:
    """matplotlib's pyplot, set up for reproducible SVGs; exits with advice without it."""
    try:
        import matplotlib
    except ImportError:
        sys.exit(
            "bench/run.py --plot needs matplotlib, a dev dependency: "
            "`.venv/bin/pip install -e '.[dev]'` (or `make install`)"
        )
    matplotlib.use("Agg")
    matplotlib.rcParams.update(
        {
            "svg.fonttype": "none",  # text stays text: small files, the reader's font
            "svg.hashsalt": "customevent-bench",  # the same figures give the same file
            "font.size": 9,
        }
    )
    import matplotlib.pyplot as plt

    return plt


def _ratio(ratio: float) -> str:
    # Three digits: a ratio of 0.699 against a target of 0.7 must not read "0.70x: MISSED".
    return f"{ratio:.3g}x"


def _panel(axes: Any, figure: Figure, topic: str) -> None:
    name = figure.name.removeprefix(f"{topic}: ")
    verdict = {True: "target met", False: "target MISSED", None: ""}[figure.passed]
    colour = MISSED_COLOUR if figure.passed is False else VALUE_COLOUR
    labels, values, colours = ["measured"], [figure.value], [colour]
    if figure.reference is not None:
        labels.append(textwrap.fill(f"reference: {figure.reference_name or 'unnamed'}", 30))
        values.append(figure.reference)
        colours.append(REFERENCE_COLOUR)
    rows = list(range(len(values)))[::-1]  # this run on top
    axes.barh(rows, values, color=colours, height=0.6)
    if len(figure.samples) > 1:
        axes.plot(figure.samples, [rows[0]] * len(figure.samples), "k|", markersize=12)
    axes.set_yticks(rows, labels)
    for row, value in zip(rows, values, strict=True):
        axes.annotate(
            f" {_number(value, figure.unit)}",
            (value, row),
            va="center",
            ha="left",
            fontsize=8,
        )
    top = max([*values, *figure.samples, 0.0])
    axes.set_xlim(0, top * 1.3 if top > 0 else 1)
    detail = []
    if figure.ratio is not None:
        detail.append(f"{_ratio(figure.ratio)} the reference")
    if figure.target:
        detail.append(f"target {figure.target}: {verdict}")
    # The name in bold; under it, in the title's padding, what the bars say against each other.
    axes.set_title(name, loc="left", fontsize=9, fontweight="bold", pad=14 if detail else 6)
    if detail:
        axes.text(0, 1.03, "; ".join(detail), transform=axes.transAxes, fontsize=8, va="bottom")
    axes.set_xlabel(figure.unit, fontsize=8, loc="right")
    axes.spines[["top", "right"]].set_visible(False)


def chart(topic: str, figures: Sequence[Figure], path: Path) -> None:
    """Write the chart of a benchmark's figures, an SVG, to ``path``."""
    plt = pyplot()
    canvas, panels = plt.subplots(
        len(figures),
        1,
        figsize=(WIDTH_INCHES, 0.5 + PANEL_INCHES * len(figures)),
        squeeze=False,
        layout="constrained",
    )
    for axes, figure in zip(panels[:, 0], figures, strict=True):
        _panel(axes, figure, topic)
    canvas.savefig(path, format="svg", metadata={"Date": None})
    plt.close(canvas)


def _recorded(figure: Figure, topic: str) -> dict[str, Any]:
    """A figure as ``run.json`` keeps it: its fields, and as the table prints them (``shown``),
    so that the docs show the same words without formatting numbers again."""
    verdict = {True: "pass", False: "MISSED", None: ""}[figure.passed]
    return {
        **figure.to_json(),
        "name": figure.name.removeprefix(f"{topic}: "),
        "shown": {
            "value": _number(figure.value, figure.unit),
            "reference": "" if figure.reference is None else _number(figure.reference, figure.unit),
            "ratio": "" if figure.ratio is None else _ratio(figure.ratio),
            "target": figure.target,
            "verdict": verdict,
        },
    }


def write_charts(directory: Path, recordings: Sequence[Recording]) -> list[Path]:
    """Chart each recording with figures into ``directory`` and record them in ``run.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    record_file = directory / RUN_FILE
    run: dict[str, Any] = {"topics": {}}
    if record_file.is_file():
        run = json.loads(record_file.read_text())
    written = []
    about = machine()
    for recording in recordings:
        if not recording.figures:
            continue
        path = directory / f"{recording.topic}.svg"
        chart(recording.topic, recording.figures, path)
        written.append(path)
        run["topics"][recording.topic] = {
            "chart": path.name,
            "recorded": recording.started.astimezone(UTC).isoformat(timespec="seconds"),
            "seconds": round(recording.seconds, 1),
            "command": recording.command,
            "machine": {
                **about,
                "load_average": [round(recording.load_before, 2), round(recording.load_after, 2)],
            },
            "figures": [_recorded(figure, recording.topic) for figure in recording.figures],
        }
    run["topics"] = dict(sorted(run["topics"].items()))
    record_file.write_text(json.dumps(run, indent=2) + "\n")
    return written


def redraw(directory: Path) -> list[Path]:
    """Draw the charts of ``directory/run.json`` again, from the figures as recorded, and write
    the file again (after a change to how charts look, or to what it keeps: nothing is run)."""
    run = json.loads((directory / RUN_FILE).read_text())
    drawn = []
    for topic, entry in run["topics"].items():
        path = directory / entry["chart"]
        figures = [
            Figure.from_json({k: v for k, v in figure.items() if k != "shown"})
            for figure in entry["figures"]
        ]
        chart(topic, figures, path)
        entry["figures"] = [_recorded(figure, topic) for figure in figures]
        drawn.append(path)
    (directory / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
    return drawn


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python bench/_plot.py DIR  (draws DIR/run.json's charts again)")
    for drawn in redraw(Path(sys.argv[1])):
        print(f"chart: {drawn}")
