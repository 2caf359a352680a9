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


def jsonable(args: dict[str, Any]) -> dict[str, Any]:
    """Arguments as stored in ``done.json`` (paths resolved, so a rerun from another directory still matches)."""
    out = {}
    for k, v in args.items():
        out[k] = str(Path(v).resolve()) if isinstance(v, Path) or (isinstance(v, str) and k.endswith("dir")) else v
    return json.loads(json.dumps(out, default=str))


def cached_done(out_dir: str | Path, args: dict[str, Any], key: str = "args") -> dict[str, Any] | None:
    """The ``done.json`` of a finished stage made with ``args`` (recorded under ``key``); None when not finished.

    Raises:
        ValueError: naming ``done.json`` and each argument that differs, with both values, when it was made with
            others (a stage without a record under ``key`` is taken as it is).
    """
    if not is_done(out_dir):
        return None
    info = load_done(out_dir)
    made, now = info.get(key), jsonable(args)
    if made is not None and made != now:
        diff = "; ".join(f"{k}: {made.get(k)!r} there, {now.get(k)!r} now" for k in sorted({**made, **now})
                         if made.get(k) != now.get(k))  # fmt: skip
        raise ValueError(f"{Path(out_dir) / 'done.json'} was made with other arguments ({diff}); delete {out_dir} or "
                         "choose another output directory (--out)")  # fmt: skip
    return info


def _cached_with(out_dir: Path, args: dict[str, Any]) -> bool:
    """Whether ``out_dir`` is a finished stage made with ``args``.

    Raises:
        ValueError: it was made with other arguments (:func:`cached_done`).
        FileExistsError: ``out_dir`` exists but is no finished stage (never overwritten).
    """
    if cached_done(out_dir, args) is not None:
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
    info = mark_done(partial, {**build(partial), "args": jsonable(args)})
    if out_dir.exists():
        out_dir.rmdir()  # empty (checked by _cached_with)
    os.replace(partial, out_dir)
    return info
