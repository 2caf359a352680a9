"""``prophrl-data``: generate, convert and inspect episode shards.

prophrl-data metaworld --tasks pick-place-v3,push-v3 --episodes 20 --noise 0.1 --size 64 --seed 0 --out DIR
prophrl-data corpus --out DIR --workspace 24 --overview 8 --workers 2
prophrl-data convert lerobot SRC --out DIR --action-convention ee_abs_quat
prophrl-data convert hdf5 SRC --out DIR --action-convention ee_abs_quat --layout libero --action-key ee_poses
prophrl-data stats DIR [--recompute]
prophrl-data encode --model PROPHET_DIR --shards DIR --out NEW_DIR --image-size 256 [--drop-frames] [--resume]
prophrl-data inspect DIR [--png sheet.png]

Errors (a missing file or key, a bad value, an unknown flag or Meta-World task, invalid source data) are printed as
one line naming the file, key or flag; --debug (or PROPHRL_DEBUG=1) shows the full traceback. Options are never
abbreviated. A generation or conversion that fails leaves --out as it found it: a directory it created is removed,
and in an existing directory (convert --append) the shards it added are deleted. An encode that fails keeps the
shards it finished (and removes a partial one): finish it with --resume.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
from pathlib import Path
from typing import Any

from lightning_prophrl.cli_errors import DEBUG_HELP, ArgumentParser, user_command

os.environ.setdefault("MUJOCO_GL", "egl")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _at_least(lo: int | float, kind: type = int):
    """An argparse ``type``: a number of ``kind`` that is at least ``lo``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {text}")
        return value

    return parse


def _device(text: str) -> str:
    """``--device``: a torch device name (``cpu``, ``cuda``, ``cuda:1`` ...)."""
    import torch

    try:
        torch.device(text)
    except RuntimeError as err:
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} ({err})") from None
    return text


def _known_task(task: str, valid: tuple[str, ...], what: str = "Meta-World v3 task") -> str:
    if task not in valid:
        close = difflib.get_close_matches(task, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; valid: {', '.join(sorted(valid))}"
        raise argparse.ArgumentTypeError(f"unknown {what} {task!r}{hint}")
    return task


def _all_tasks() -> tuple[str, ...]:
    from lightning_prophrl.envs.task_split import HELDOUT_TASKS, PRETRAIN_TASKS

    return PRETRAIN_TASKS + HELDOUT_TASKS


def _metaworld_tasks(text: str) -> list[str]:
    """``--tasks`` of ``metaworld``: comma-separated Meta-World v3 task names, checked before anything is made."""
    tasks = _csv(text)
    if not tasks:
        raise argparse.ArgumentTypeError("expected comma-separated Meta-World v3 task names, got none")
    return [_known_task(t, _all_tasks()) for t in tasks]


def _pretrain_tasks(text: str) -> list[str]:
    """``--tasks`` of ``corpus``: pretraining tasks only (held-out tasks never enter the corpus)."""
    from lightning_prophrl.envs.task_split import PRETRAIN_TASKS

    tasks = _metaworld_tasks(text)
    held_out = [t for t in tasks if t not in PRETRAIN_TASKS]
    if held_out:
        raise argparse.ArgumentTypeError(
            f"{held_out} are held out of pretraining (lightning_prophrl.envs.task_split): the corpus never "
            "includes a held-out task"
        )
    return tasks


def _driver(text: str) -> str:
    """``--driver``: ``random`` or a Meta-World v3 task whose expert acts."""
    return _known_task(text, (*_all_tasks(), "random"), "driver")


def _conventions_help() -> str:
    from lightning_prophrl.datamodules.converters import CONVENTIONS

    width = max(map(len, CONVENTIONS))
    from lightning_prophrl.datamodules.converters import JOINT_MAPPING_HELP

    return (
        "action conventions (--action-convention, see lightning_prophrl.actions.to_unified):\n"
        + "\n".join(f"  {name:<{width}}  {text}" for name, text in CONVENTIONS.items())
        + f"\n\n{JOINT_MAPPING_HELP}"
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``prophrl-data`` parser: no abbreviated options, usage errors raise ``cli_errors.UsageError``."""
    from lightning_prophrl.datamodules.converters import CONVENTIONS

    raw = argparse.RawTextHelpFormatter
    p = ArgumentParser(prog="prophrl-data", description=__doc__, epilog=_conventions_help(), formatter_class=raw)
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)  # taken out of argv by run_user_command
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mw = sub.add_parser("metaworld", help="demonstrations from Meta-World's scripted experts", formatter_class=raw)
    mw.add_argument("--tasks", type=_metaworld_tasks, required=True, help="comma-separated Meta-World v3 task names")
    mw.add_argument("--episodes", type=_at_least(1), required=True, help="episodes per task")
    mw.add_argument("--noise", type=_at_least(0.0, float), default=0.1, help="Gaussian action-noise std of the expert")
    mw.add_argument("--noise-max", type=_at_least(0.0, float), default=None,
                    help="draw the std per episode in [noise, noise-max]")  # fmt: skip
    mw.add_argument("--size", type=_at_least(1), default=64, help="rendered frame size (square)")
    mw.add_argument("--camera", default="workspace",
                    help="camera preset ('workspace', 'overview') or a camera of the Meta-World model")  # fmt: skip
    mw.add_argument("--max-steps", type=_at_least(1), default=150, help="episode step cap")
    mw.add_argument("--no-stop-at-success", action="store_true", help="run every episode to the step cap")
    mw.add_argument("--seed", type=_at_least(0), default=0, help="first seed; episode i of a task uses seed + i")
    mw.add_argument("--per-shard", type=_at_least(1), default=10, help="episodes per shard")
    mw.add_argument("--excursion", type=_at_least(0.0, float), default=0.0,
                    help="rate of smooth random excursions (0: none)")  # fmt: skip
    mw.add_argument("--driver", type=_driver, default=None,
                    help="who acts: another task's expert (its name) or 'random' smooth motions (default: the task's "
                         "own expert)")  # fmt: skip
    mw.add_argument("--out", required=True, help="output directory (one dataset; must not hold shards yet)")

    co = sub.add_parser("corpus", help="Prophet's multi-task pretraining corpus (pretraining tasks only)")
    co.add_argument("--out", required=True, help="corpus directory (finished datasets are kept on a rerun)")
    co.add_argument(
        "--tasks", type=_pretrain_tasks, default=None, help="subset of the pretraining tasks (default: all)"
    )
    co.add_argument("--workspace", type=_at_least(0), default=24, help="episodes per task from the workspace camera")
    co.add_argument("--overview", type=_at_least(0), default=8, help="episodes per task from the overview camera")
    co.add_argument("--noise", type=_at_least(0.0, float), default=0.1,
                    help="lower end of the per-episode action-noise std")  # fmt: skip
    co.add_argument("--noise-max", type=_at_least(0.0, float), default=1.0,
                    help="upper end of the per-episode action-noise std")  # fmt: skip
    co.add_argument("--excursion", type=_at_least(0.0, float), default=0.5, help="rate of smooth random excursions")
    co.add_argument("--excursion-share", type=_at_least(0.0, float), default=0.5,
                    help="fraction of episodes with excursions")  # fmt: skip
    co.add_argument("--size", type=_at_least(1), default=64, help="rendered frame size (square)")
    co.add_argument("--seed", type=_at_least(0), default=0, help="first seed; episode i of a task uses seed + i")
    co.add_argument("--workers", type=_at_least(1), default=2, help="parallel generator processes")

    conv = sub.add_parser("convert", help="convert a LeRobot or robomimic/LIBERO dataset", epilog=_conventions_help(),
                          formatter_class=raw)  # fmt: skip
    csub = conv.add_subparsers(dest="source", required=True)
    sources = {"lerobot": "a LeRobotDataset v2.0 / v2.1 / v3.0 directory (holding meta/info.json)",
               "hdf5": "a robomimic / LIBERO hdf5 file, or a directory of *.hdf5 files"}  # fmt: skip
    for name, src_help in sources.items():
        c = csub.add_parser(name, help=src_help, epilog=_conventions_help(), formatter_class=raw)
        c.add_argument("src", help=src_help)
        c.add_argument("--out", required=True, help="output directory (empty or new, unless --append)")
        c.add_argument("--action-convention", required=True, choices=list(CONVENTIONS), metavar="CONVENTION",
                       help="how the source actions are written (mandatory, never guessed): "
                            f"{', '.join(CONVENTIONS)}; see below")  # fmt: skip
        key_help = "parquet column of the actions (default: action)" if name == "lerobot" else (
            "dataset under data/demo_N holding the actions (default: actions), or 'ee_poses' to derive them from the "
            "end-effector poses (with --action-convention ee_abs_quat)")  # fmt: skip
        c.add_argument("--action-key", default=None, help=key_help)
        c.add_argument("--urdf", default=None, metavar="PATH",
                       help="a joint-space robot's URDF (with --action-convention joint and --ee-link; see below)")  # fmt: skip
        c.add_argument("--ee-link", nargs="+", default=None, metavar="NAME",
                       help="the end-effector link of each arm in the URDF (two for a bimanual robot)")  # fmt: skip
        c.add_argument("--gripper-range", nargs=2, type=float, default=(0.0, 1.0), metavar=("CLOSED", "OPEN"),
                       help="gripper joint positions of fully closed and fully open (default 0 1)")  # fmt: skip
        c.add_argument("--joint-mapping", default=None, metavar="MODULE:FUNCTION",
                       help="your own forward kinematics instead of --urdf (with --action-convention joint)")  # fmt: skip
        c.add_argument("--image-key", default=None, help="camera to convert (default: the layout's / first video)")
        c.add_argument("--frame-format", choices=["mp4", "npy"], default="mp4", help="frames in the shards")
        c.add_argument("--max-episodes", type=_at_least(1), default=None, help="convert at most this many episodes")
        c.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                       help="raise: stop at the first invalid episode (and leave --out as it was); skip: log it, "
                            "list it in the summary and go on")  # fmt: skip
        c.add_argument("--append", action="store_true",
                       help="add the episodes to a directory that already holds shards")  # fmt: skip
        if name == "hdf5":
            c.add_argument("--layout", choices=["robomimic", "libero"], default="robomimic",
                           help="key names and conventions of the file (robomimic or LIBERO)")  # fmt: skip

    en = sub.add_parser("encode", help="copy a dataset with pre-encoded latents, so training skips the codec "
                                       "(RobotClipDataModule latents: true; docs/scale.md)")  # fmt: skip
    en.add_argument("--model", required=True,
                    help="a Prophet directory (save_pretrained), a Prophet model YAML or a diffusers Wan VAE "
                         "directory: the codec (and, from a Prophet, the chunk length and action-frame style)")  # fmt: skip
    en.add_argument("--shards", required=True, help="source dataset directory (shards, index.json, stats.json)")
    en.add_argument("--out", required=True, help="new or empty output directory (never overwritten; see --resume)")
    en.add_argument("--image-size", type=_at_least(1), required=True, help="the training datamodule's image_size")
    en.add_argument("--chunk-len", type=_at_least(1), default=None,
                    help="action chunk length (default: the Prophet's action_chunk_length)")  # fmt: skip
    en.add_argument("--stride", type=_at_least(1), default=1, help="the training datamodule's stride of this dataset")
    en.add_argument("--every", type=_at_least(1), default=1,
                    help="store windows at every N-th conditioning frame (training draws its windows from those)")  # fmt: skip
    en.add_argument("--drop-frames", action="store_true", help="leave the frames out of the output (latents only)")
    en.add_argument("--batch-size", type=_at_least(1), default=8, help="clips per codec call")
    en.add_argument("--device", type=_device, default="cpu", help="torch device of the codec (e.g. cuda)")
    en.add_argument("--resume", action="store_true", help="finish an interrupted encode run into --out")

    st = sub.add_parser("stats", help="(re)compute stats.json by streaming the actions only")
    st.add_argument("dir", help="dataset directory")
    st.add_argument("--recompute", action="store_true", help="recompute even if stats.json exists")

    ins = sub.add_parser("inspect", help="counts, lengths, success rate and a contact sheet PNG")
    ins.add_argument("dir", help="dataset directory")
    ins.add_argument("--png", default=None, help="contact sheet path (default DIR/contact_sheet.png)")
    ins.add_argument("--episodes", type=_at_least(1), default=4, help="episodes (rows) in the contact sheet")
    return p


def _holds_shards(out: str | Path) -> bool:
    from lightning_prophrl.datamodules.shards import INDEX_FILE

    d = Path(out)
    return d.is_dir() and ((d / INDEX_FILE).is_file() or any(d.glob("*.tar")))


def _require_new_output(out: str, append_flag: bool) -> None:
    """Refuse an ``--out`` that already holds shards, before anything is generated."""
    if _holds_shards(out):
        hint = ", or pass --append to add episodes to it" if append_flag else " (or remove it first)"
        raise FileExistsError(f"--out {out} already holds shards: choose a new or empty directory{hint}")


def _corpus_finished(out: Path) -> bool:
    """A corpus keeps its finished datasets for a rerun (``stage_cache`` writes ``done.json`` in each)."""
    return any(out.rglob("done.json"))


def _joint_mapping(args: argparse.Namespace) -> Any:
    """The forward kinematics ``convert`` was given (``--urdf`` + ``--ee-link``, or ``--joint-mapping``), or None."""
    if args.joint_mapping and args.urdf:
        raise ValueError("pass either --urdf with --ee-link or --joint-mapping, not both")
    if bool(args.urdf) != bool(args.ee_link):
        raise ValueError("--urdf and --ee-link go together: the URDF and the end-effector link of each arm in it")
    if args.action_convention == "joint" and not (args.urdf or args.joint_mapping):
        raise ValueError("--action-convention joint needs the robot's forward kinematics: --urdf PATH --ee-link NAME "
                         "(or --joint-mapping MODULE:FUNCTION)")  # fmt: skip
    if args.urdf:
        from lightning_prophrl.datamodules.converters.kinematics import URDFJointMapping

        return URDFJointMapping(args.urdf, args.ee_link, args.gripper_range)
    if args.joint_mapping:
        from lightning_prophrl.datamodules.converters import load_joint_mapping

        return load_joint_mapping(args.joint_mapping)
    return None


@user_command("prophrl-data")
def main(argv: list[str] | None = None) -> None:
    """Parse ``argv`` and run one ``prophrl-data`` command; prints its JSON summary."""
    from lightning_prophrl.datamodules.converters import guarded_output

    args = build_parser().parse_args(argv)
    if args.command == "metaworld":
        from lightning_prophrl.datamodules.metaworld_gen import generate_metaworld

        if args.noise_max is not None and args.noise_max < args.noise:
            raise ValueError(f"--noise-max ({args.noise_max}) must be >= --noise ({args.noise})")
        _require_new_output(args.out, append_flag=False)
        with guarded_output(args.out):
            summary = generate_metaworld(
                tasks=args.tasks, episodes=args.episodes, out=args.out, noise=args.noise, noise_max=args.noise_max,
                size=args.size, camera=args.camera, max_steps=args.max_steps,
                stop_at_success=not args.no_stop_at_success, seed=args.seed, per_shard=args.per_shard,
                excursion=args.excursion, driver=args.driver,
            )  # fmt: skip
    elif args.command == "corpus":
        from lightning_prophrl.datamodules.metaworld_corpus import generate_corpus
        from lightning_prophrl.envs.task_split import PRETRAIN_TASKS

        cameras = {k: v for k, v in (("workspace", args.workspace), ("overview", args.overview)) if v > 0}
        with guarded_output(args.out, keep_if=_corpus_finished):
            summary = generate_corpus(
                args.out, tasks=args.tasks or PRETRAIN_TASKS, cameras=cameras, noise=args.noise,
                noise_max=args.noise_max, excursion=args.excursion, excursion_share=args.excursion_share,
                size=args.size, seed=args.seed, workers=args.workers,
            )  # fmt: skip
        summary.pop("success_rate", None)
    elif args.command == "convert":
        kwargs = {"action_convention": args.action_convention, "frame_format": args.frame_format,
                  "max_episodes": args.max_episodes, "on_error": args.on_error, "append": args.append}  # fmt: skip
        if args.image_key:
            kwargs["image_key"] = args.image_key
        if args.action_key:
            kwargs["action_key"] = args.action_key
        kwargs["joint_mapping"] = _joint_mapping(args)
        if not args.append:
            _require_new_output(args.out, append_flag=True)
        if args.source == "lerobot":  # the converters put --out back as it was when they fail
            from lightning_prophrl.datamodules.converters import convert_lerobot

            summary = convert_lerobot(args.src, args.out, **kwargs)
        else:
            from lightning_prophrl.datamodules.converters import convert_hdf5

            summary = convert_hdf5(args.src, args.out, layout=args.layout, **kwargs)
    elif args.command == "encode":
        from lightning_prophrl.datamodules.latent_encode import encode_dataset

        summary = encode_dataset(
            args.shards, args.out, args.model, args.image_size, chunk_len=args.chunk_len, stride=args.stride,
            every=args.every, drop_frames=args.drop_frames, batch_size=args.batch_size, device=args.device,
            resume=args.resume,
        )  # fmt: skip
    elif args.command == "stats":
        from lightning_prophrl.datamodules.inspect import dataset_stats

        summary = dataset_stats(args.dir, recompute=args.recompute)
    else:
        from lightning_prophrl.datamodules.inspect import inspect_dataset

        png = args.png or os.path.join(args.dir, "contact_sheet.png")
        summary = inspect_dataset(args.dir, out_png=png, n_episodes=args.episodes)
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
