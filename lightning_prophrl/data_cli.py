"""``prophrl-data``: generate, convert and inspect episode shards.

prophrl-data metaworld --tasks pick-place-v3,push-v3 --episodes 20 --noise 0.1 --size 64 --seed 0 --out DIR
prophrl-data corpus --out DIR --workspace 24 --overview 8 --workers 2
prophrl-data convert lerobot SRC --out DIR --action-convention ee_abs_quat
prophrl-data convert hdf5 SRC --out DIR --action-convention ee_abs_quat --layout libero --action-key ee_poses
prophrl-data stats DIR [--recompute]
prophrl-data inspect DIR [--png sheet.png]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("MUJOCO_GL", "egl")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prophrl-data", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    mw = sub.add_parser("metaworld", help="demonstrations from Meta-World's scripted experts")
    mw.add_argument("--tasks", type=_csv, required=True, help="comma-separated Meta-World v3 task names")
    mw.add_argument("--episodes", type=int, required=True, help="episodes per task")
    mw.add_argument("--noise", type=float, default=0.1, help="Gaussian action-noise std of the expert")
    mw.add_argument("--noise-max", type=float, default=None, help="draw the std per episode in [noise, noise-max]")
    mw.add_argument("--size", type=int, default=64, help="rendered frame size (square)")
    mw.add_argument("--camera", default="workspace", help="camera preset of lightning_prophrl.envs.rendering")
    mw.add_argument("--max-steps", type=int, default=150, help="episode step cap")
    mw.add_argument("--no-stop-at-success", action="store_true", help="run every episode to the step cap")
    mw.add_argument("--seed", type=int, default=0, help="first seed; episode i of a task uses seed + i")
    mw.add_argument("--per-shard", type=int, default=10, help="episodes per shard")
    mw.add_argument("--excursion", type=float, default=0.0, help="rate of smooth random excursions (0: none)")
    mw.add_argument("--driver", default=None,
                    help="who acts: another task's expert (its name) or 'random' smooth motions (default: the task's "
                         "own expert)")  # fmt: skip
    mw.add_argument("--out", required=True, help="output directory (one dataset)")

    co = sub.add_parser("corpus", help="Prophet's multi-task pretraining corpus (pretraining tasks only)")
    co.add_argument("--out", required=True, help="corpus directory (finished datasets are kept on a rerun)")
    co.add_argument("--tasks", type=_csv, default=None, help="subset of the pretraining tasks (default: all)")
    co.add_argument("--workspace", type=int, default=24, help="episodes per task from the workspace camera")
    co.add_argument("--overview", type=int, default=8, help="episodes per task from the overview camera")
    co.add_argument("--noise", type=float, default=0.1, help="lower end of the per-episode action-noise std")
    co.add_argument("--noise-max", type=float, default=1.0, help="upper end of the per-episode action-noise std")
    co.add_argument("--excursion", type=float, default=0.5, help="rate of smooth random excursions")
    co.add_argument("--excursion-share", type=float, default=0.5, help="fraction of episodes with excursions")
    co.add_argument("--size", type=int, default=64, help="rendered frame size (square)")
    co.add_argument("--seed", type=int, default=0, help="first seed; episode i of a task uses seed + i")
    co.add_argument("--workers", type=int, default=2, help="parallel generator processes")

    conv = sub.add_parser("convert", help="convert a LeRobot or robomimic/LIBERO dataset")
    csub = conv.add_subparsers(dest="source", required=True)
    for name in ("lerobot", "hdf5"):
        c = csub.add_parser(name)
        c.add_argument("src")
        c.add_argument("--out", required=True)
        c.add_argument("--action-convention", required=True,
                       help="source action convention (see lightning_prophrl.actions.to_unified)")  # fmt: skip
        c.add_argument("--action-key", default=None)
        c.add_argument("--image-key", default=None)
        c.add_argument("--frame-format", choices=["mp4", "npy"], default="mp4")
        c.add_argument("--max-episodes", type=int, default=None)
        c.add_argument("--on-error", choices=["raise", "skip"], default="raise")
        if name == "hdf5":
            c.add_argument("--layout", choices=["robomimic", "libero"], default="robomimic")

    st = sub.add_parser("stats", help="(re)compute stats.json by streaming the actions only")
    st.add_argument("dir")
    st.add_argument("--recompute", action="store_true")

    ins = sub.add_parser("inspect", help="counts, lengths, success rate and a contact sheet PNG")
    ins.add_argument("dir")
    ins.add_argument("--png", default=None, help="contact sheet path (default DIR/contact_sheet.png)")
    ins.add_argument("--episodes", type=int, default=4)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "metaworld":
        from lightning_prophrl.datamodules.metaworld_gen import generate_metaworld

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
        summary = generate_corpus(
            args.out, tasks=args.tasks or PRETRAIN_TASKS, cameras=cameras, noise=args.noise, noise_max=args.noise_max,
            excursion=args.excursion, excursion_share=args.excursion_share, size=args.size, seed=args.seed,
            workers=args.workers,
        )  # fmt: skip
        summary.pop("success_rate", None)
    elif args.command == "convert":
        kwargs = {"action_convention": args.action_convention, "frame_format": args.frame_format,
                  "max_episodes": args.max_episodes, "on_error": args.on_error}  # fmt: skip
        if args.image_key:
            kwargs["image_key"] = args.image_key
        if args.action_key:
            kwargs["action_key"] = args.action_key
        if args.source == "lerobot":
            from lightning_prophrl.datamodules.converters import convert_lerobot

            summary = convert_lerobot(args.src, args.out, **kwargs)
        else:
            from lightning_prophrl.datamodules.converters import convert_hdf5

            summary = convert_hdf5(args.src, args.out, layout=args.layout, **kwargs)
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
