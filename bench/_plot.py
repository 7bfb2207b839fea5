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
import math
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

__all__ = [
    "RUN_FILE",
    "Recording",
    "chart",
    "colour",
    "machine",
    "pyplot",
    "redraw",
    "target_lines",
    "write_charts",
]

RUN_FILE = "run.json"
# One meaning per colour, in every panel of every chart (the legend above each chart says it).
MET_COLOUR = "#2e7d32"  # the bridge, target met
MISSED_COLOUR = "#d84315"  # the bridge, target missed
INFO_COLOUR = "#3f51b5"  # the bridge, no target (the docs' theme colour)
OTHER_COLOUR = "#616161"  # a figure of something else than the bridge (Figure.subject)
REFERENCE_COLOUR = "#bdbdbd"  # the reference, measured in the same run
TARGET_STYLE = {"color": "#212121", "linestyle": (0, (4, 2)), "linewidth": 1.2}
LEGEND = {
    MET_COLOUR: "the bridge, target met",
    MISSED_COLOUR: "the bridge, target missed",
    INFO_COLOUR: "the bridge, no target",
    OTHER_COLOUR: "another implementation",
    REFERENCE_COLOUR: "reference, same run",
}
DIRECTION = {"higher": "higher is better", "lower": "lower is better", "": "informational"}
PANEL_INCHES = 1.25
WIDTH_INCHES = 8.0
LABEL_POINTS = 8  # value labels
# The share of a panel's width one character of a value label takes: 8 pt type is about
# 4.6 pt a character, on an axis about 5.4 in (389 pt) wide once the bar names are set.
CHAR_SHARE = 4.6 / 389


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


def colour(figure: Figure) -> str:
    """The colour of a figure's own bar: by what it measures and whether it met its target."""
    if figure.subject:
        return OTHER_COLOUR
    return {True: MET_COLOUR, False: MISSED_COLOUR, None: INFO_COLOUR}[figure.passed]


def target_lines(figure: Figure) -> list[float]:
    """Where the target falls on the panel's axis: a bound on the ratio is drawn at that
    multiple of the reference, so the bar must reach (or stay under) the line."""
    scale = figure.reference if figure.reference is not None else 1.0
    return [bound * scale for bound in (figure.at_least, figure.at_most) if bound is not None]


def _panel(axes: Any, figure: Figure, topic: str) -> set[str]:
    """One figure: its bar and its reference's on one axis from 0, the target as a dashed line,
    the values after the bars. Returns the colours (and "target") it used, for the legend."""
    name = figure.name.removeprefix(f"{topic}: ")
    verdict = {True: "target met", False: "target MISSED", None: ""}[figure.passed]
    own = colour(figure)
    labels = [textwrap.fill(figure.subject or "the bridge", 40)]
    values, colours = [figure.value], [own]
    if figure.reference is not None:
        labels.append(textwrap.fill(f"reference: {figure.reference_name or 'unnamed'}", 40))
        values.append(figure.reference)
        colours.append(REFERENCE_COLOUR)
    rows = list(range(len(values)))[::-1]  # the figure on top
    finite = [v if math.isfinite(v) else 0.0 for v in values]
    axes.barh(rows, finite, color=colours, height=0.62, zorder=2)
    # Each row's extent (bar, and the rounds' ticks) and its label, set after that extent.
    extents = [finite[0], *finite[1:]]
    if len(figure.samples) > 1:
        axes.plot(
            figure.samples,
            [rows[0]] * len(figure.samples),
            "|",
            color="black",
            markersize=11,
            markeredgewidth=1.2,
            zorder=3,
        )
        extents[0] = max(extents[0], *figure.samples)
    texts = [f"{_number(v, figure.unit)}" for v in values]
    lines = target_lines(figure)
    # The axis reaches far enough that every label fits after its row's extent, and past the
    # target; it starts at 0, so lengths compare.
    needed = [
        extent / max(0.2, 0.97 - (len(text) + 1) * CHAR_SHARE)
        for extent, text in zip(extents, texts, strict=True)
    ]
    top = max([*needed, *(line * 1.08 for line in lines), 0.0])
    axes.set_xlim(0, top if top > 0 else 1)
    for row, extent, text in zip(rows, extents, texts, strict=True):
        axes.annotate(
            text,
            (extent, row),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            ha="left",
            fontsize=LABEL_POINTS,
            zorder=4,
            bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none"},
        )
    for line in lines:
        axes.axvline(line, ymin=0, ymax=1, zorder=3.5, **TARGET_STYLE)
    axes.set_ylim(-0.6, len(values) - 0.4)
    axes.set_yticks(rows, labels, fontsize=8)
    counts = not figure.unit and all(float(v).is_integer() for v in [*finite, *figure.samples])
    axes.xaxis.set_major_locator(_ticks(integer=counts))
    axes.xaxis.set_major_formatter(_tick_format())
    axes.tick_params(axis="x", labelsize=7)
    # The unit beside the direction, not under the axis, where it would sit on the last tick.
    detail = [DIRECTION[figure.direction] + (f" ({figure.unit})" if figure.unit else "")]
    if figure.ratio is not None:
        detail.append(f"{_ratio(figure.ratio)} the reference")
    if figure.target:
        detail.append(f"target {figure.target} (dashed line): {verdict}")
    # The name in bold; under it, in the title's padding, which way is better and the verdict.
    axes.set_title(name, loc="left", fontsize=9, fontweight="bold", pad=15)
    axes.text(0, 1.04, "; ".join(detail), transform=axes.transAxes, fontsize=8, va="bottom")
    axes.spines[["top", "right"]].set_visible(False)
    return set(colours) | ({"target"} if lines else set())


def _ticks(*, integer: bool) -> Any:
    from matplotlib.ticker import MaxNLocator

    # Few ticks: thousands with separators stay clear of each other on a panel's width; a count
    # gets whole numbers only.
    return MaxNLocator(nbins=5, min_n_ticks=2, integer=integer)


def _tick_format() -> Any:
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _: _number(x))


def _legend(canvas: Any, used: set[str]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Patch(color=c, label=label) for c, label in LEGEND.items() if c in used]
    if "target" in used:
        handles.append(Line2D([], [], label="target", **TARGET_STYLE))
    canvas.legend(
        handles=handles,
        loc="outside upper left",
        ncols=min(len(handles), 3),
        fontsize=8,
        frameon=False,
    )


def chart(topic: str, figures: Sequence[Figure], path: Path) -> None:
    """Write the chart of a benchmark's figures, an SVG, to ``path``."""
    plt = pyplot()
    canvas, panels = plt.subplots(
        len(figures),
        1,
        figsize=(WIDTH_INCHES, 0.7 + PANEL_INCHES * len(figures)),
        squeeze=False,
        layout="constrained",
    )
    used: set[str] = set()
    for axes, figure in zip(panels[:, 0], figures, strict=True):
        used |= _panel(axes, figure, topic)
    _legend(canvas, used)
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
            "better": figure.direction,
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
