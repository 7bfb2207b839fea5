"""``bench/run.py --plot DIR``: an SVG chart per benchmark, each figure beside its reference, and
``run.json`` with what the docs' Performance page shows under each chart."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from html import unescape
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from _common import Figure  # noqa: E402
from _plot import (  # noqa: E402
    INFO_COLOUR,
    LEGEND,
    MET_COLOUR,
    MISSED_COLOUR,
    OTHER_COLOUR,
    REFERENCE_COLOUR,
    RUN_FILE,
    Recording,
    _panel,
    pyplot,
    redraw,
    write_charts,
)


def _texts(svg: Path) -> str:
    """The words an SVG shows (its text stays text: ``svg.fonttype`` none)."""
    return " ".join(unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg.read_text()))


def _recording(topic: str, *figures: Figure) -> Recording:
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return Recording(topic, figures, started, 12.3, 1.5, 2.5, f"python bench/run.py {topic}")


RATE = Figure(
    "demo: send rate",
    900.0,
    "msg/s",
    reference=1000.0,
    reference_name="raw client",
    at_least=0.7,
    samples=(880.0, 900.0, 950.0),
)
LOST = Figure("demo: messages lost", 0.0, at_most=0)


def test_each_figure_is_charted_beside_its_reference(tmp_path: Path) -> None:
    [chart] = write_charts(tmp_path, [_recording("demo", RATE, LOST)])
    assert chart == tmp_path / "demo.svg"
    shown = _texts(chart)
    for words in ("send rate", "the bridge", "reference: raw client", "900 msg/s", "1,000 msg/s"):
        assert words in shown, (words, shown)
    assert "higher is better (msg/s); 0.9x the reference; target >= 0.7x (dashed line): " in shown
    assert (
        "messages lost" in shown
        and "lower is better; target <= 0 (dashed line): target met" in shown
    )
    assert "demo:" not in shown  # the topic is the chart's, not repeated in every panel
    run = json.loads((tmp_path / RUN_FILE).read_text())
    entry = run["topics"]["demo"]
    assert entry["chart"] == "demo.svg" and entry["recorded"] == "2026-01-02T03:04:05+00:00"
    assert entry["command"] == "python bench/run.py demo" and entry["seconds"] == 12.3
    assert entry["machine"]["cores"] == os.cpu_count()
    assert entry["machine"]["memory_gib"] > 0 and entry["machine"]["load_average"] == [1.5, 2.5]
    rate = entry["figures"][0]
    assert rate["name"] == "send rate" and rate["samples"] == [880.0, 900.0, 950.0]
    assert rate["shown"] == {
        "value": "900 msg/s",
        "reference": "1,000 msg/s",
        "ratio": "0.9x",
        "target": ">= 0.7x",
        "verdict": "pass",
        "better": "higher",
    }


def test_a_ratio_just_under_its_target_does_not_read_as_met(tmp_path: Path) -> None:
    close = Figure("demo: rate", 699.0, "msg/s", reference=1000.0, at_least=0.7)
    write_charts(tmp_path, [_recording("demo", close)])
    shown = _texts(tmp_path / "demo.svg")
    assert "0.699x the reference; target >= 0.7x (dashed line): target MISSED" in shown


def test_a_run_of_some_benchmarks_keeps_the_others(tmp_path: Path) -> None:
    lost = dataclasses.replace(LOST, name="two: messages lost")
    write_charts(tmp_path, [_recording("one", RATE), _recording("two", lost)])
    again = Figure("one: send rate", 500.0, "msg/s", reference=1000.0)
    write_charts(tmp_path, [_recording("one", again), _recording("empty")])
    topics = json.loads((tmp_path / RUN_FILE).read_text())["topics"]
    assert sorted(topics) == ["one", "two"]  # a benchmark without figures gets no chart
    assert topics["one"]["figures"][0]["value"] == 500.0
    assert topics["two"]["figures"][0]["name"] == "messages lost"
    assert not (tmp_path / "empty.svg").exists()


def test_charts_are_reproducible_and_redrawn_from_the_record(tmp_path: Path) -> None:
    [chart] = write_charts(tmp_path, [_recording("demo", RATE, LOST)])
    first, record = chart.read_bytes(), (tmp_path / RUN_FILE).read_text()
    chart.unlink()
    assert redraw(tmp_path) == [chart]
    assert chart.read_bytes() == first
    assert (tmp_path / RUN_FILE).read_text() == record


@contextlib.contextmanager
def _drawn(figure: Figure) -> Iterator[Any]:
    """One figure's panel, drawn (so that text has its size), for its parts to be measured."""
    plt = pyplot()
    canvas, axes = plt.subplots(figsize=(8, 1.4), layout="constrained")
    try:
        _panel(axes, figure, "demo")
        canvas.canvas.draw()
        yield axes
    finally:
        plt.close(canvas)


def _bars(axes: Any) -> list[tuple[float, float, str]]:
    """Each bar's (start, length, colour), top row first."""
    from matplotlib.colors import to_hex

    bars = sorted(axes.patches, key=lambda bar: -bar.get_y())
    return [(bar.get_x(), bar.get_width(), to_hex(bar.get_facecolor())) for bar in bars]


def _subtitle(axes: Any) -> str:
    [line] = [
        t.get_text() for t in axes.texts if "better" in t.get_text() or "inform" in t.get_text()
    ]
    return line


def test_bars_start_at_zero_on_one_axis_and_their_lengths_are_the_values() -> None:
    with _drawn(RATE) as axes:
        (start, figure, own), (ref_start, reference, ref_colour) = _bars(axes)
        assert axes.get_xlim()[0] == 0 and start == ref_start == 0
        assert (figure, reference) == (900.0, 1000.0)  # so 0.9 of the reference's length
        assert own == MET_COLOUR and ref_colour == REFERENCE_COLOUR
        [target] = [line for line in axes.lines if line.get_linestyle() == "--"]
        assert list(target.get_xdata()) == [700.0, 700.0]  # 0.7x the reference
        assert axes.get_xlim()[1] > 1000.0


@pytest.mark.parametrize(
    ("figure", "direction", "colour"),
    [
        (RATE, "higher is better (msg/s)", MET_COLOUR),
        (dataclasses.replace(RATE, value=600.0, samples=()), "higher is better", MISSED_COLOUR),
        (
            Figure("demo: p99", 12.0, "ms", reference=4.0, at_most=1.5),
            "lower is better",
            MISSED_COLOUR,
        ),
        (Figure("demo: p50", 5.0, "ms", reference=4.0, at_most=1.5), "lower is better", MET_COLOUR),
        (Figure("demo: set-up", 3.0, "s"), "lower is better (s)", INFO_COLOUR),
        (Figure("demo: rate", 3.0, "msg/s"), "higher is better", INFO_COLOUR),
        (Figure("demo: dups", 0.0, better="lower"), "lower is better", INFO_COLOUR),
        (Figure("demo: count", 7.0), "informational", INFO_COLOUR),
        (
            Figure("demo: peer", 7.0, "msg/s", reference=9.0, subject="a peer"),
            "higher",
            OTHER_COLOUR,
        ),
    ],
)
def test_each_panel_says_which_way_is_better_and_colours_by_its_verdict(
    figure: Figure, direction: str, colour: str
) -> None:
    with _drawn(figure) as axes:
        assert _subtitle(axes).startswith(direction), _subtitle(axes)
        bars = _bars(axes)
        assert bars[0][2] == colour
        assert all(c == REFERENCE_COLOUR for _, _, c in bars[1:])
        if figure.subject:
            assert figure.subject in [t.get_text() for t in axes.get_yticklabels()]


def test_a_bound_on_the_value_itself_is_drawn_where_the_value_must_reach() -> None:
    with _drawn(Figure("demo: held", 8000.0, at_least=10_000)) as axes:
        [target] = [line for line in axes.lines if line.get_linestyle() == "--"]
        assert list(target.get_xdata()) == [10_000.0, 10_000.0]
        assert axes.get_xlim()[1] > 10_000 and _bars(axes)[0][2] == MISSED_COLOUR


def test_value_labels_sit_after_the_bars_and_rounds_inside_the_panel_clear_of_each_other() -> None:
    wide = dataclasses.replace(RATE, samples=(700.0, 900.0, 1240.0), reference_name="x" * 60)
    with _drawn(wide) as axes:
        renderer = axes.figure.canvas.get_renderer()
        panel = axes.get_window_extent(renderer)
        labels = [t for t in axes.texts if t.get_text().endswith("msg/s")]
        assert [t.get_text() for t in labels] == ["900 msg/s", "1,000 msg/s"]
        boxes = [t.get_window_extent(renderer) for t in labels]
        ticks = [t.get_window_extent(renderer) for t in axes.get_xticklabels() if t.get_text()]
        for box in boxes:
            assert panel.x0 <= box.x0 and box.x1 <= panel.x1, (box, panel)
            assert not any(box.overlaps(tick) for tick in ticks)
        assert not boxes[0].overlaps(boxes[1])
        to_pixels = axes.transData.transform
        assert boxes[0].x0 >= to_pixels((1240.0, 0))[0]  # after the furthest round's tick
        assert boxes[1].x0 >= to_pixels((1000.0, 0))[0]
        for a, b in itertools.pairwise(ticks):
            assert a.x1 < b.x0, "tick labels collide"


def test_the_legend_names_exactly_the_colours_the_chart_uses(tmp_path: Path) -> None:
    info = Figure("demo: release", 1.2, "s")
    [chart] = write_charts(tmp_path, [_recording("demo", RATE, info)])
    shown = _texts(chart)
    for colour in (MET_COLOUR, INFO_COLOUR, REFERENCE_COLOUR):
        assert LEGEND[colour] in shown
    for colour in (MISSED_COLOUR, OTHER_COLOUR):
        assert LEGEND[colour] not in shown
    assert "target" in shown


def test_a_figure_refuses_an_unknown_direction() -> None:
    with pytest.raises(ValueError, match="better must be 'higher' or 'lower', not 'faster'"):
        Figure("demo: x", 1.0, better="faster")


def test_without_matplotlib_the_runner_says_what_to_install() -> None:
    script = (
        "import sys; sys.modules['matplotlib'] = None; import run; "
        "sys.exit(run.main(['retain', '--plot', 'unused']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=BENCH, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "--plot needs matplotlib, a dev dependency" in done.stderr


@pytest.mark.rabbitmq
def test_run_plot_charts_a_real_benchmark(amqp_url: str, tmp_path: Path) -> None:
    """The runner end to end, on the quickest benchmark against the real broker."""
    argv = ["bench/run.py", "retain", "--quick", "--plot", str(tmp_path), "--amqp-url", amqp_url]
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"chart: {tmp_path / 'retain.svg'}" in done.stdout
    entry = json.loads((tmp_path / RUN_FILE).read_text())["topics"]["retain"]
    assert "--plot" in entry["command"] and entry["figures"]
    shown = _texts(tmp_path / "retain.svg")
    for figure in entry["figures"]:
        assert figure["name"] in shown
        assert figure["reference"] is not None, figure  # every retain figure has its reference
        assert f"reference: {figure['reference_name']}"[:25] in shown.replace("\n", " ")
