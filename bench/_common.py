"""What every benchmark shares: the module convention, figures, timing, RSS and the table.

A benchmark is a module ``bench/bench_<topic>.py``. ``bench/run.py`` finds it by that name and
runs it in one of two ways:

- **in process**, when the module defines ``async def main(args) -> list[Figure]`` (a plain
  ``def main(args)`` and ``async def main()`` work too). ``args`` is the runner's
  ``argparse.Namespace`` (see ``add_common_arguments``); whatever is not the runner's own is in
  ``args.extra``. Figures come back as the return value (None: no figures);
- **as a subprocess**, when the module has a plain ``def main()`` without parameters (a script's
  entry point, which reads ``sys.argv`` and may ``sys.exit``) or no ``main`` at all:
  ``python bench/bench_<topic>.py <args after -->``. Its output is relayed as it comes; a line
  that ``emit_figures`` printed (``#figures <json>``) is taken back as figures for the table, and
  a non-zero exit status is a failure.

A benchmark never fails the run for a missed target: the table says MISSED and the exit status
stays 0. An exception in a benchmark is reported and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "FIGURES_PREFIX",
    "Figure",
    "Stopwatch",
    "add_common_arguments",
    "alternating",
    "amqp_url",
    "emit_figures",
    "format_table",
    "in_flight",
    "log",
    "median",
    "parse_figures",
    "peak_rss_mib",
    "print_table",
    "rate",
    "run_id",
]

FIGURES_PREFIX = "#figures "
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
# Units of figures where less is better (times, sizes, CPU), when no target says which way.
LOWER_IS_BETTER_UNITS = frozenset({"s", "ms", "us", "µs", "MB", "MiB", "GiB", "cores"})


@dataclass(frozen=True)
class Figure:
    """One measured figure, with an optional reference to compare it with and a target.

    With a ``reference``, the target applies to ``ratio`` (value / reference); without one, to
    ``value``. ``at_least`` / ``at_most`` are the target's bounds; neither: informational.
    ``samples`` keeps every round's value (``value`` is usually their median). ``subject`` names
    what ``value`` measures when it is not the bridge (a reference against another, in charts
    drawn in neither the bridge's colours); ``better`` ("higher" or "lower") says which way is
    good when there is no target to say it (``direction``).
    """

    name: str
    value: float
    unit: str = ""
    reference: float | None = None
    reference_name: str = ""
    at_least: float | None = None
    at_most: float | None = None
    samples: tuple[float, ...] = field(default=())
    note: str = ""
    subject: str = ""
    better: str = ""

    def __post_init__(self) -> None:
        if self.better not in ("", "higher", "lower"):
            raise ValueError(
                f"Figure {self.name!r}: better must be 'higher' or 'lower', not {self.better!r}"
            )

    @property
    def direction(self) -> str:
        """ "higher" or "lower" (which is better), or "" when nothing says: ``at_least`` means
        higher, ``at_most`` lower; else ``better``; else the unit (a rate higher, a time, size
        or CPU share lower)."""
        if self.at_least is not None:
            return "higher"
        if self.at_most is not None:
            return "lower"
        if self.better:
            return self.better
        if self.unit.endswith("/s"):
            return "higher"
        return "lower" if self.unit in LOWER_IS_BETTER_UNITS else ""

    @property
    def ratio(self) -> float | None:
        if self.reference is None or self.reference == 0:
            return None
        return self.value / self.reference

    @property
    def checked(self) -> float | None:
        """The number the target applies to."""
        return self.ratio if self.reference is not None else self.value

    @property
    def target(self) -> str:
        suffix = "x" if self.reference is not None else f" {self.unit}".rstrip()
        parts = []
        if self.at_least is not None:
            parts.append(f">= {_number(self.at_least)}{suffix}")
        if self.at_most is not None:
            parts.append(f"<= {_number(self.at_most)}{suffix}")
        return ", ".join(parts)

    @property
    def passed(self) -> bool | None:
        """True or False against the target; None when there is no target."""
        if self.at_least is None and self.at_most is None:
            return None
        checked = self.checked
        if checked is None or math.isnan(checked):
            return False
        if self.at_least is not None and checked < self.at_least:
            return False
        return not (self.at_most is not None and checked > self.at_most)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["samples"] = list(self.samples)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Figure:
        data = dict(data)
        data["samples"] = tuple(data.get("samples", ()))
        return cls(**data)


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else math.nan


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.inf


class Stopwatch:
    """``with Stopwatch() as sw: ...`` then ``sw.seconds`` (monotonic, high resolution)."""

    seconds: float = 0.0

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


async def in_flight(count: int, concurrency: int, send: Callable[[int], Awaitable[Any]]) -> float:
    """Seconds to run ``send(0)`` .. ``send(count - 1)`` with ``concurrency`` of them at once."""
    next_index = iter(range(count))

    async def worker() -> None:
        for i in next_index:
            await send(i)

    with Stopwatch() as sw:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sw.seconds


def log(message: str) -> None:
    """A progress line under the runner's ``== topic`` heading."""
    print(f"   {message}", flush=True)


async def alternating(
    rounds: int, variants: dict[str, Callable[[int], Awaitable[float]]]
) -> dict[str, list[float]]:
    """Run each variant once per round (``variant(round)`` returns its figure), in an order that
    alternates between rounds, so load from elsewhere falls on every variant alike."""
    results: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for r in range(rounds):
        for name in order if r % 2 == 0 else reversed(order):
            value = await variants[name](r)
            results[name].append(value)
            log(f"round {r + 1}/{rounds} {name}: {value:,.0f}")
    return results


def peak_rss_mib() -> float:
    """This process's peak resident set size, MiB. On Linux, ``VmHWM``: ``ru_maxrss`` carries the
    peak of the process that started this one across its exec (a runner with matplotlib loaded
    made a subprocess's baseline look like 110 MiB)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def run_id() -> str:
    """A short unique id for the names a run creates (exchanges, queues, topics)."""
    return os.urandom(4).hex()


def amqp_url(args: argparse.Namespace | None = None) -> str:
    url = getattr(args, "amqp_url", None)
    return url or os.environ.get("CUSTOMEVENT_AMQP__URL") or DEFAULT_AMQP_URL


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark gets in ``args`` (a module reads only the ones it needs)."""
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds per figure; the median is reported"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes and one round, for a smoke run"
    )
    parser.add_argument(
        "--amqp-url",
        default=None,
        help=f"RabbitMQ (default $CUSTOMEVENT_AMQP__URL or {DEFAULT_AMQP_URL})",
    )
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON to FILE")


def emit_figures(figures: Sequence[Figure], stream: Any = None) -> None:
    """Print figures as one ``#figures <json>`` line, for a runner that started us as a
    subprocess (``parse_figures`` reads it back)."""
    line = FIGURES_PREFIX + json.dumps([f.to_json() for f in figures])
    print(line, file=stream or sys.stdout, flush=True)


def parse_figures(output: str) -> list[Figure]:
    figures: list[Figure] = []
    for line in output.splitlines():
        if line.startswith(FIGURES_PREFIX):
            figures.extend(Figure.from_json(d) for d in json.loads(line[len(FIGURES_PREFIX) :]))
    return figures


def _number(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf"
    if abs(x) >= 100 or float(x).is_integer():
        text = f"{x:,.0f}"
    elif abs(x) >= 10:
        text = f"{x:.1f}"
    else:
        text = f"{x:.2f}".rstrip("0").rstrip(".")
    return f"{text} {unit}".rstrip()


def format_table(figures: Sequence[Figure], *, title: str = "") -> str:
    """The figures as a "figure | value | reference | ratio | target | pass" table, then one
    MISSED line per target missed."""
    header = ("figure", "value", "reference", "ratio", "target", "pass")
    rows = []
    for f in figures:
        reference = "-"
        if f.reference is not None:
            reference = _number(f.reference, f.unit)
            if f.reference_name:
                reference += f" ({f.reference_name})"
        ratio = f"{f.ratio:.2f}x" if f.ratio is not None else "-"
        verdict = {True: "pass", False: "MISSED", None: "-"}[f.passed]
        rows.append((f.name, _number(f.value, f.unit), reference, ratio, f.target or "-", verdict))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [title] if title else []
    out += [line(header), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    notes = [f"  {f.name}: {f.note}" for f in figures if f.note]
    if notes:
        out += ["", "notes:", *notes]
    missed = [f for f in figures if f.passed is False]
    out.append("")
    for f in missed:
        checked = f.checked
        shown = "n/a" if checked is None else _number(checked)
        out.append(f"MISSED: {f.name}: {shown} against target {f.target}")
    targets = sum(f.passed is not None for f in figures)
    if not figures:
        out.append("no figures")
    elif not missed:
        out.append(f"all {targets} targets met")
    return "\n".join(out)


def print_table(figures: Sequence[Figure], *, title: str = "") -> None:
    print(format_table(figures, title=title), flush=True)
