"""Run the benchmarks: ``python bench/run.py [core|http|mqtt|all] [options] [-- module args]``.

Finds ``bench/bench_<topic>.py`` modules (the convention is in ``bench/_common.py``), runs the
ones asked for, and prints one table of every figure; ``--plot DIR`` also charts each
benchmark's figures beside their references as ``DIR/<topic>.svg`` (``bench/_plot.py``). Exit
status: 0 when every benchmark ran (missed targets included: they are reported, not failed), 1
when one raised or crashed, 2 for a topic that does not exist.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import inspect
import json
import os
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    # The benchmarks import their helpers as ``from _common import ...``, run directly or not.
    sys.path.insert(0, str(HERE))

from _common import Figure, add_common_arguments, parse_figures, print_table  # noqa: E402
from _plot import Recording, pyplot, write_charts  # noqa: E402


def discover() -> dict[str, Path]:
    """Topic -> module path, for every ``bench_<topic>.py`` next to this file."""
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def _load(topic: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{topic}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _in_process(path: Path) -> bool:
    """Whether to import the module and call its ``main`` (``main(args)``, or ``async def
    main()``), rather than run it as a script (a plain ``def main()``, which reads ``sys.argv``
    and may ``sys.exit``, or no ``main`` at all). Read from the source: importing a script-style
    module could run things, and would be wasted."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "main":
            a = node.args
            takes_args = bool(a.posonlyargs or a.args or a.vararg)
            return takes_args or isinstance(node, ast.AsyncFunctionDef)
    return False


def _call_main(module: ModuleType, args: argparse.Namespace) -> list[Figure]:
    main = module.main
    takes_args = bool(inspect.signature(main).parameters)
    result = main(args) if takes_args else main()
    if inspect.isawaitable(result):
        result = asyncio.run(_awaited(result))
    if result is None:
        return []
    if isinstance(result, int):  # a main() that returns an exit status
        if result != 0:
            raise RuntimeError(f"main() returned {result}")
        return []
    return [f if isinstance(f, Figure) else Figure(**f) for f in result]


async def _awaited(awaitable: object) -> object:
    return await awaitable  # type: ignore[misc]


def _run_subprocess(path: Path, args: argparse.Namespace) -> list[Figure]:
    command = [sys.executable, str(path), *args.extra]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1, cwd=HERE.parent)
    assert proc.stdout is not None
    captured = []
    for line in proc.stdout:  # relay as it comes, so a long run shows progress
        captured.append(line)
        if not line.startswith("#figures "):
            sys.stdout.write(line)
            sys.stdout.flush()
    status = proc.wait()
    if status != 0:
        raise RuntimeError(f"{' '.join(command)} exited with status {status}")
    return parse_figures("".join(captured))


def main(argv: list[str] | None = None) -> int:
    available = discover()
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Run the benchmarks and print their figures next to references and targets.",
        epilog=f"available: {', '.join(available) or '(none)'}; "
        "arguments after -- go to the modules",
    )
    parser.add_argument("topics", nargs="*", default=["all"], help="benchmarks to run, or 'all'")
    add_common_arguments(parser)
    parser.add_argument(
        "--plot",
        metavar="DIR",
        type=Path,
        help="also write an SVG chart of each benchmark's figures, and run.json, to DIR "
        "(docs/performance holds the recorded run of the docs' Performance page)",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python bench/run.py", *argv])
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    args.extra = extra

    topics = list(available) if "all" in args.topics else args.topics
    unknown = [t for t in topics if t not in available]
    if unknown:
        print(
            f"no benchmark named {', '.join(unknown)}; available: {', '.join(available)}",
            file=sys.stderr,
        )
        return 2

    if args.plot is not None:
        pyplot()  # no matplotlib: say so now, not after the benchmarks ran
    figures: list[Figure] = []
    recordings: list[Recording] = []
    failed: list[str] = []
    started = time.perf_counter()
    for topic in topics:
        path = available[topic]
        print(f"== {topic} ({path.name})", flush=True)
        t0 = time.perf_counter()
        began, load_before = datetime.now(UTC), os.getloadavg()[0]
        try:
            if _in_process(path):
                got = _call_main(_load(topic, path), args)
            else:
                got = _run_subprocess(path, args)
        except Exception:
            traceback.print_exc()
            failed.append(topic)
            continue
        figures += [dataclasses.replace(f, name=f"{topic}: {f.name}") for f in got]
        seconds = time.perf_counter() - t0
        print(f"== {topic}: {len(got)} figures in {seconds:.1f}s", flush=True)
        if args.plot is not None:
            load_after = os.getloadavg()[0]
            recordings.append(
                Recording(topic, got, began, seconds, load_before, load_after, command)
            )

    print()
    print_table(figures, title=f"results ({time.perf_counter() - started:.0f}s)")
    if args.json:
        Path(args.json).write_text(json.dumps([f.to_json() for f in figures], indent=2) + "\n")
    if args.plot is not None:
        for chart in write_charts(args.plot, recordings):
            print(f"chart: {chart}")
    if failed:
        print(f"FAILED to run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
