"""Stage caching for long multi-stage runs (``prophrl demo``, the studies): a stage is done when its output
directory holds ``done.json``, which also records what the stage produced, so a rerun resumes where it stopped."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def is_done(path: str | Path) -> bool:
    return (Path(path) / "done.json").exists()


def mark_done(path: str | Path, info: dict[str, Any]) -> dict[str, Any]:
    """Write ``done.json`` atomically (a crash never leaves a half-written marker) and return ``info``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "done.json.tmp"
    tmp.write_text(json.dumps(info, indent=2, default=str))
    os.replace(tmp, path / "done.json")
    return info


def load_done(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / "done.json").read_text())
