"""Stage caching for long multi-stage runs (``prophrl demo``, the studies): a stage is done when its output
directory holds ``done.json``, which also records what the stage produced, so a rerun resumes where it stopped.

:func:`run_stage` adds two guarantees on top: the arguments that made a stage are stored in its ``done.json`` and a
rerun with other arguments is refused, and the output directory appears atomically (built under ``<dir>.partial``)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
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


def _jsonable(args: dict[str, Any]) -> dict[str, Any]:
    """Arguments as stored in ``done.json`` (paths resolved, so a rerun from another directory still matches)."""
    out = {}
    for k, v in args.items():
        out[k] = str(Path(v).resolve()) if isinstance(v, Path) or (isinstance(v, str) and k.endswith("dir")) else v
    return json.loads(json.dumps(out, default=str))


def _cached_with(out_dir: Path, args: dict[str, Any]) -> bool:
    """Whether ``out_dir`` is a finished stage made with ``args``.

    Raises:
        ValueError: it was made with other arguments.
        FileExistsError: ``out_dir`` exists but is no finished stage (never overwritten).
    """
    if is_done(out_dir):
        made, now = load_done(out_dir).get("args") or {}, _jsonable(args)
        if made != now:
            diff = sorted(k for k in {**made, **now} if made.get(k) != now.get(k))
            raise ValueError(f"{out_dir} was made with other arguments (differ: {diff}); delete it or choose another "
                             "output directory")  # fmt: skip
        return True
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists but holds no done.json; delete it or choose another output directory")
    return False


def run_stage(out_dir: Path, args: dict[str, Any], build: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Run ``build(partial_dir)`` unless cached, then publish it atomically as ``out_dir``; returns ``done.json``."""
    if _cached_with(out_dir, args):
        return load_done(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run
    partial.mkdir(parents=True)
    info = mark_done(partial, {**build(partial), "args": _jsonable(args)})
    if out_dir.exists():
        out_dir.rmdir()  # empty (checked by _cached_with)
    os.replace(partial, out_dir)
    return info
