"""The docs' Python files (the mkdocs hooks, the examples) loaded as modules, for the tests."""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path
from types import ModuleType

DOCS = Path(__file__).resolve().parents[2] / "docs"


def load_module(path: Path) -> ModuleType:
    """The file at ``path`` as a fresh module of its own (examples run as scripts would)."""
    spec = importlib.util.spec_from_file_location(f"docs_{path.stem}_{uuid.uuid4().hex}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def docs_hooks() -> ModuleType:
    """docs/hooks.py, which generates the reference pages."""
    return load_module(DOCS / "hooks.py")
