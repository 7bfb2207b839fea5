"""Figures of the fault and fuzz tests, written as JSON lines for docs/reliability.md.

``scripts/reliability_report.py`` renders the table from the file; nothing in it is typed by hand.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(os.environ.get("CUSTOMEVENT_RELIABILITY_OUT", ".reliability/results.jsonl"))


def record(test: str, *, load: str, fault: str, outcome: str, **figures: Any) -> None:
    """Append one test's result: what ran, what was done to it, and the counted figures."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    row = {
        "test": test,
        "load": load,
        "fault": fault,
        "outcome": outcome,
        "figures": figures,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with RESULTS.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
