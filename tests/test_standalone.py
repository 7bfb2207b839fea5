"""The repo stands alone: a user's clone has nothing beside it, so nothing it ships reads or names
what lies outside it. Only .ci/run may use reference data next to the repo, when CI has it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ("README.md", "docs", "tests", "adapter", "charts", "config", "scripts")
# Built from pieces, so that this file does not match itself.
OUTSIDE = re.compile(r"\.\./" + "shared" + "|" + "DESIGN" + r"\.md")


def _files() -> list[Path]:
    found = []
    for top in SHIPPED:
        path = ROOT / top
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        found += [
            p
            for p in candidates
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".png")
        ]
    return found


def test_nothing_the_repo_ships_points_outside_it() -> None:
    files = _files()
    assert len(files) > 50
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
        if OUTSIDE.search(line)
    ]
    assert offenders == []


def test_ci_uses_reference_data_only_when_it_is_there() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    uses = [line for line in ci.splitlines() if OUTSIDE.search(line)]
    assert uses, ".ci/run no longer checks the real vCO WSDLs"
    assert 'if compgen -G "../' + 'shared/vro-wsdl/*.wsdl"' in ci
