"""The documentation site, built as ``make docs`` builds it (strictly), for the docs tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def build_site(site: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` into ``site``; the caller asserts on the result."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTOMEVENT_")}
    config = str(ROOT / "mkdocs.yml")
    return subprocess.run(
        # Not -q: it silences the warnings that --strict counts, and the build "passes".
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", config, "-d", str(site)],
        cwd=ROOT,
        env={**env, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
