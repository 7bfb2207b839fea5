"""``bench/run.py --plot DIR``: an SVG chart per benchmark, each figure beside its reference, and
``run.json`` with what the docs' Performance page shows under each chart."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from html import unescape
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from _common import Figure  # noqa: E402
from _plot import RUN_FILE, Recording, redraw, write_charts  # noqa: E402


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
    for words in ("send rate", "measured", "reference: raw client", "900 msg/s", "1,000 msg/s"):
        assert words in shown, (words, shown)
    assert "0.9x the reference; target >= 0.7x: target met" in shown
    assert "messages lost" in shown and "target <= 0: target met" in shown
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
    }


def test_a_ratio_just_under_its_target_does_not_read_as_met(tmp_path: Path) -> None:
    close = Figure("demo: rate", 699.0, "msg/s", reference=1000.0, at_least=0.7)
    write_charts(tmp_path, [_recording("demo", close)])
    assert "0.699x the reference; target >= 0.7x: target MISSED" in _texts(tmp_path / "demo.svg")


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
