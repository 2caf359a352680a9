"""The plumbing both converters share: the missing-key error, the checks of every source array and assembled
episode, action mapping with the episode named in errors, frame post-processing (flip / resize), the output guard
and the conversion loop (progress bar, ``on_error``)."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from lightning_prophrl.actions import SourceConvention, to_unified
from lightning_prophrl.constants import ARM_DIM, STATS_FILE
from lightning_prophrl.datamodules.shards import INDEX_FILE, Episode, ShardWriter, validate_arrays

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]
Flip = Literal["none", "vertical", "rotate180"]
FrameFormat = Literal["npy", "mp4"]


class MissingKeyError(KeyError):
    """A key/column/dataset the conversion needs is absent. The message names the file and the key.

    Args:
        path: the file (or directory) that lacks the key.
        key: the missing key.
        available: what the container does hold, listed in the message to help pick the right key.
    """

    def __init__(self, path: str | Path, key: str, available: Iterable[str] | None = None):
        self.path, self.key = str(path), key
        hint = f" (available: {sorted(map(str, available))})" if available is not None else ""
        self.message = f"{self.path}: missing key {key!r}{hint}"
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


# What each source convention expects (``to_unified``), listed by ``prophrl-data convert --help``.
CONVENTIONS: dict[str, str] = {
    "unified": "(T, 14) already in the unified space: 2 arms x [dpos xyz, deuler xyz, gripper opening]",
    "metaworld": "(T, 4) Meta-World: world-frame xyz delta in units of 1 cm + gripper effort in [-1, 1]",
    "ee_abs_quat": "(T, n_arms*8) absolute end-effector xyz + quaternion wxyz + gripper opening [0, 1] per arm",
    "ee_abs_euler": "(T, n_arms*7) absolute end-effector xyz + Euler xyz + gripper opening [0, 1] per arm",
    "ee_delta_euler": "(T, 7) or (T, 14) tool-frame deltas dpos xyz + deuler xyz + gripper opening per arm",
    "joint": "joint positions, through forward kinematics (--urdf PATH --ee-link NAME, or --joint-mapping; below)",
}
JOINT_MAPPING_HELP = (
    "joint-space robots (SO-100, Koch, ALOHA, ...): --action-convention joint --urdf PATH --ee-link NAME [NAME]\n"
    "  (forward kinematics of the URDF: per arm, its chain's joint positions then the gripper's; --gripper-range\n"
    "  CLOSED OPEN maps the gripper to [0, 1]), or --joint-mapping MODULE:FUNCTION with your own kinematics:\n"
    "  FUNCTION((T, D) joint actions) -> (unified (T, 14) actions, mask (14,) bool)"
)
# A forward-kinematics mapping: ``(T, D)`` joint-space actions -> ``(unified (T, 14), mask (14,) bool)``.
JointMapping = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
# Values per arm of each convention (None: not split by arm).
_ARM_WIDTH = {"metaworld": 4, "ee_abs_quat": 8, "ee_abs_euler": 7, "ee_delta_euler": ARM_DIM}


def check_convention(convention: str, joint_mapping: JointMapping | None = None) -> None:
    """Reject anything that is not a known ``SourceConvention`` (the argument is mandatory and never guessed),
    ``"joint"`` without a ``joint_mapping`` (the library has no robot's forward kinematics) and a ``joint_mapping``
    with any other convention, before anything is read or written."""
    known = get_args(SourceConvention)
    if convention not in known:
        raise ValueError(f"action_convention must be one of {list(known)}, got {convention!r}")
    if convention == "joint" and joint_mapping is None:
        raise ValueError(
            "action_convention 'joint': joint-space actions need the robot's forward-kinematics mapping to reach "
            "the unified end-effector action space: pass joint_mapping=FUNCTION (prophrl-data: --joint-mapping "
            "MODULE:FUNCTION), or convert the dataset to end-effector poses first"
        )
    if convention != "joint" and joint_mapping is not None:
        raise ValueError(f"joint_mapping is used only with action_convention 'joint', got {convention!r}")
    if joint_mapping is not None and not callable(joint_mapping):
        raise ValueError(
            f"joint_mapping must be a function (T, D) -> (actions (T, 14), mask (14,)), got {joint_mapping!r}"
        )


def load_joint_mapping(spec: str) -> JointMapping:
    """The function ``MODULE:FUNCTION`` names (``--joint-mapping``), importing ``MODULE`` from the installed packages
    or the current directory.

    Raises:
        ValueError: naming the flag, when ``spec`` is not ``MODULE:FUNCTION`` or does not import to a function.
    """
    import importlib
    import sys

    module, sep, name = spec.partition(":")
    if not (sep and module and name):
        raise ValueError(f"--joint-mapping {spec!r}: expected MODULE:FUNCTION, e.g. my_robot.kinematics:to_unified")
    if os.getcwd() not in sys.path:  # console scripts do not search the current directory
        sys.path.append(os.getcwd())
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"--joint-mapping {spec!r}: {err}") from err
    if not callable(fn):
        raise ValueError(f"--joint-mapping {spec!r}: {name} is not a function")
    return fn


def check_source_array(
    array: Any,
    where: str,
    source: str,
    *,
    length: int | None = None,
    width: int | None = None,
    width_from: str | None = None,
) -> np.ndarray:
    """Check one per-step source array (actions, state, a pose component) and return it as ``(T, D) float64``.

    Args:
        array: ``(T,)`` or ``(T, D)`` numbers.
        where: the episode, for the message.
        source: the file / key it was read from, for the message.
        length: the episode's step count ``T``, if known.
        width: the expected ``D``, if known.
        width_from: what declares ``width`` (e.g. ``meta/info.json``), named in the width error.

    Raises:
        ValueError: ``<where>: <source> ...`` for a non-numeric array, another shape, another step count, another
            width (naming both widths) or a NaN/inf (naming the first step and value).
    """
    a = np.asarray(array)
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{where}: {source} must hold numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{where}: {source} must have one row per step (T, D), got shape {tuple(a.shape)}")
    if length is not None and a.shape[0] != length:
        raise ValueError(f"{where}: {source} has {a.shape[0]} steps but the episode has {length}")
    if width is not None and a.shape[1] != width:
        declared = f"{width_from} declares {width}" if width_from else f"expected {width}"
        raise ValueError(f"{where}: {source} has {a.shape[1]} values per step but {declared}")
    if not np.isfinite(a).all():
        t, d = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{where}: {source} contains NaN/inf (first at step {t}, value {d})")
    return a


def check_frames(frames: Any, where: str, source: str) -> np.ndarray:
    """Check source images: ``(T, H, W, 3) uint8`` (other dtypes are refused rather than cast).

    Raises:
        ValueError: ``<where>: <source> must be (T, H, W, 3) uint8 RGB images, got <shape> <dtype>``.
    """
    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8 or f.shape[0] == 0:
        raise ValueError(f"{where}: {source} must be (T, H, W, 3) uint8 RGB images, got {tuple(f.shape)} {f.dtype}")
    return f


def check_arm_count(width: int, convention: str, arms: int | None, where: str, source: str, declared_in: str) -> None:
    """Refuse an action width that ``convention`` would read as more arms than the dataset declares robots.

    Raises:
        ValueError: naming the column's width, the expected width and where the robots are declared.
    """
    per_arm = _ARM_WIDTH.get(convention)
    if per_arm is None or arms is None or width <= arms * per_arm:
        return
    raise ValueError(
        f"{where}: {source} has {width} values per step but {declared_in} declares {arms} robot arm(s): "
        f"expected {arms * per_arm} for {convention!r} ({per_arm} per arm); a wider column is not read as more arms"
    )


def validate_episode(ep: Episode, where: str) -> Episode:
    """The shard reader's checks (``shards.validate_arrays``) plus finite ``state`` / ``ee_poses`` /
    ``target_poses``, on an assembled episode; ``where`` (episode, source file) prefixes the error."""
    meta = {"dataset": "", **ep.meta}
    problem = validate_arrays(ep.frames, ep.actions, ep.action_mask, meta, ep.state, ep.ee_poses)
    for name, value in (("state", ep.state), ("ee_poses", ep.ee_poses), ("target_poses", ep.target_poses)):
        if problem is None and value is not None and not np.isfinite(np.asarray(value, dtype=np.float64)).all():
            step = int(np.argwhere(~np.isfinite(np.asarray(value, dtype=np.float64)))[0][0])
            problem = f"{name} contain NaN/inf (first at step {step})"
    if problem:
        raise ValueError(f"{where}: {problem}")
    return ep


def _created_root(path: Path) -> Path | None:
    """The topmost directory that creating ``path`` (with parents) would make, or None if ``path`` exists."""
    if path.exists():
        return None
    root = path
    while not root.parent.exists():
        root = root.parent
    return root


@contextmanager
def guarded_output(out: str | Path, keep_if: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Undo what the block wrote under ``out`` when it raises (``KeyboardInterrupt`` included), then re-raise.

    A directory the block created (with any parents it made) is removed; in a directory that existed, the files and
    folders the block added are deleted and ``index.json`` / ``stats.json`` get their previous content back, so what
    was there before is never lost.

    Args:
        out: the output directory.
        keep_if: a resumable command's test of ``out`` after a failure: when it returns True nothing is removed
            (e.g. a corpus keeps its finished datasets for the rerun).
    """
    out = Path(out)
    created = _created_root(out)
    before = set() if created is not None or not out.is_dir() else set(out.rglob("*"))
    saved = {n: (out / n).read_bytes() for n in (INDEX_FILE, STATS_FILE) if created is None and (out / n).is_file()}
    try:
        yield out
    except BaseException:
        if keep_if is not None and out.is_dir() and keep_if(out):
            raise
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        elif out.is_dir():
            for p in sorted(set(out.rglob("*")) - before, key=lambda q: len(q.parts), reverse=True):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
            for name, data in saved.items():
                tmp = out / f"{name}.restore"
                tmp.write_bytes(data)
                os.replace(tmp, out / name)
        raise


def map_actions(
    actions: np.ndarray,
    convention: SourceConvention,
    where: str,
    source: str = "actions",
    width: int | None = None,
    width_from: str | None = None,
    joint_mapping: JointMapping | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Check the source actions (``check_source_array``) and map them with ``to_unified``, naming the episode and
    the source in any error.

    Args:
        actions: ``(T, D)`` source actions.
        convention: the source convention (see ``to_unified``).
        where: episode description used in error messages.
        source: the file / key the actions come from, used in error messages.
        width: the action width the dataset declares (``D`` must equal it), or None.
        width_from: where ``width`` is declared, named in the error.
        joint_mapping: the forward kinematics of ``convention="joint"``.

    Returns:
        ``(actions (T, 14) float32, mask (14,) bool)``.
    """
    actions = check_source_array(actions, where, source, width=width, width_from=width_from)
    try:
        return to_unified(actions, convention, joint_mapping=joint_mapping)
    except ValueError as err:
        raise ValueError(f"{where}: cannot map actions with convention {convention!r} ({source}): {err}") from err


def postprocess_frames(frames: np.ndarray, flip: Flip = "none", resize: tuple[int, int] | None = None) -> np.ndarray:
    """Flip and/or resize ``(T, H, W, 3) uint8`` frames.

    Args:
        frames: ``(T, H, W, 3) uint8``.
        flip: ``"none"``, ``"vertical"`` (rows reversed) or ``"rotate180"`` (rows and columns reversed).
        resize: ``(height, width)`` of the output (``cv2.INTER_AREA``), or None to keep the size.

    Returns:
        ``(T, H', W', 3) uint8`` contiguous frames.
    """
    if flip == "vertical":
        frames = frames[:, ::-1]
    elif flip == "rotate180":
        frames = frames[:, ::-1, ::-1]
    elif flip != "none":
        raise ValueError(f"flip must be 'none', 'vertical' or 'rotate180', got {flip!r}")
    if resize is not None:
        import cv2

        h, w = (int(v) for v in resize)
        if h < 1 or w < 1:
            raise ValueError(f"resize must be a positive (height, width), got {resize!r}")
        if frames.shape[1:3] != (h, w):
            frames = np.stack(
                [cv2.resize(np.ascontiguousarray(f), (w, h), interpolation=cv2.INTER_AREA) for f in frames]
            )
    return np.ascontiguousarray(frames, dtype=np.uint8)


def key_part(text: str) -> str:
    """Make ``text`` safe inside a WebDataset key (no dots, no separators): other characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_") or "dataset"


EpisodeJob = tuple[str, Callable[[], Episode]]


def run_conversion(
    jobs: Iterable[EpisodeJob],
    out: str | Path,
    *,
    dataset: str,
    total: int | None,
    frame_format: FrameFormat = "npy",
    episodes_per_shard: int = 100,
    append: bool = False,
    on_error: OnError = "raise",
    progress: bool = True,
    desc: str = "convert",
) -> dict[str, Any]:
    """Build and write episodes one by one; the shared loop of every converter.

    Args:
        jobs: ``(description, build)`` pairs; ``build()`` returns one ``Episode``.
        out: output directory of the shards.
        dataset: dataset name (``meta.json`` and ``stats.json``).
        total: number of jobs, for the progress bar.
        frame_format: ``"npy"`` or ``"mp4"`` frames in the shards.
        episodes_per_shard: episodes per tar shard.
        append: add shards to an existing output directory.
        on_error: ``"raise"`` stops at the first bad episode; ``"skip"`` skips it, logs it and lists it in the
            summary. Missing keys (``MissingKeyError``) always raise: they are a wrong argument, not a bad episode.
        progress: show a tqdm progress bar.
        desc: progress bar label.

    Returns:
        ``{"dataset", "out", "episodes", "frames", "skipped", "skipped_episodes"}``.

    Raises:
        ValueError / OSError / MissingKeyError: after ``out`` is put back as it was (``guarded_output``).
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    summary: dict[str, Any] = {"dataset": dataset, "out": str(out), "episodes": 0, "frames": 0, "skipped": 0}
    summary["skipped_episodes"] = []
    from tqdm.auto import tqdm

    with guarded_output(out):
        writer = ShardWriter(out, dataset, max_count=episodes_per_shard, frame_format=frame_format, append=append)
        with writer, tqdm(total=total, desc=desc, unit="ep", disable=not progress) as bar:
            for where, build in jobs:
                try:
                    ep = validate_episode(build(), where)
                    writer.write(ep)
                except MissingKeyError:
                    raise
                except (ValueError, OSError) as err:
                    if on_error == "raise":
                        raise
                    log.warning("skipping %s: %s", where, err)
                    summary["skipped"] += 1
                    summary["skipped_episodes"].append({"episode": where, "reason": str(err)})
                else:
                    summary["episodes"] += 1
                    summary["frames"] += len(ep)
                bar.update(1)
        if summary["episodes"] == 0:
            reasons = summary["skipped_episodes"][:1]
            raise ValueError(f"no episode was converted into {out} (skipped {summary['skipped']}; first: {reasons})")
    return summary
