"""Install a pretraining export as the shipped Prophet (``lightning_prophrl/assets/prophet_metaworld``) with its
model card.

    python -m lightning_prophrl.assets.ship --export runs/prophet_unet/export --run runs/prophet_unet \
        --corpus runs/corpus [--results runs/heldout/results.md ...] [--steps N]

The card records the data recipe (from the corpus's ``corpus.json``), the training (steps, batch, wall time from the
run's TensorBoard events, the Lightning config the run saved), the machine, the held-out metrics when given, and the
commands that reproduce all of it. The copy is refused above ``--max-mb`` (50 MB by default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

from lightning_prophrl.assets import SHIPPED_PROPHET
from lightning_prophrl.constants import STATS_FILE

FILES = ("config.json", "diffusion_pytorch_model.safetensors", STATS_FILE)


def training_summary(run_dir: str | Path, until_step: int | None = None) -> dict[str, Any]:
    """Steps, wall time and last losses of a ``prophrl fit`` run, from its TensorBoard events (all versions, so a
    resumed run counts each segment's own time) and its saved ``config.yaml``; ``until_step`` reads the run only up
    to that optimizer step (the step of the exported checkpoint)."""
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_dir)
    events = sorted(run_dir.rglob("events.out.tfevents.*"))
    if not events:
        raise FileNotFoundError(f"{run_dir}: no TensorBoard events (is it the trainer's default_root_dir?)")
    seconds, last_step, losses = 0.0, 0, {}
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        if "train/loss" not in tags:
            continue
        train = [e for e in acc.Scalars("train/loss") if until_step is None or e.step < until_step]
        if not train:
            continue
        seconds += train[-1].wall_time - train[0].wall_time
        last_step = max(last_step, train[-1].step + 1)
        losses["train/loss"] = train[-1].value
        val = (
            [e for e in acc.Scalars("val/loss") if until_step is None or e.step < until_step]
            if "val/loss" in tags
            else []
        )
        if val:
            losses["val/loss"] = val[-1].value
    if until_step is not None:
        last_step = until_step
    configs = sorted(run_dir.rglob("config.yaml"))
    config = yaml.safe_load(configs[-1].read_text()) if configs else {}
    return {"steps": last_step, "wall_seconds": seconds, "losses": losses, "config": config}


def model_card(export: Path, corpus: dict[str, Any], training: dict[str, Any], results_md: str | None) -> str:
    """The ``README.md`` of the shipped model (see the module docstring)."""
    from lightning_prophrl.envs.task_split import HELDOUT_TASKS

    cfg = json.loads((export / "config.json").read_text())
    data = training["config"].get("data", {}).get("init_args", {})
    opt = training["config"].get("model", {}).get("init_args", {}).get("optimizer", {}).get("init_args", {})
    from safetensors.torch import load_file

    params = sum(t.numel() for t in load_file(str(export / "diffusion_pytorch_model.safetensors")).values())
    cams = ", ".join(f"{n} episodes/task from the `{c}` camera" for c, n in corpus.get("cameras", {}).items())
    lines = [
        "# Prophet, Meta-World pretraining (embedded default)",
        "",
        "An action-conditioned video world model: from the current 64 px frame, the last "
        f"{cfg['history_length']} frames and one 4-step action chunk in the unified 14-D action space, it generates "
        "the frame 4 simulator steps later, and a success logit. Load it with no network:",
        "",
        "```python",
        "from lightning_prophrl.assets import load_shipped_prophet",
        "",
        "prophet, action_stats = load_shipped_prophet()",
        "```",
        "",
        "## Model",
        f"- Backbone `{cfg['backbone']}`: diffusers `UNet2DModel`, blocks {cfg['unet_kwargs']['block_out_channels']}, "
        f"{params / 1e6:.2f} M parameters, EDM preconditioning (sigma_data {cfg['sigma_data']}), float32.",
        f"- Conditioning: current + {cfg['history_length']} past frames stacked as channels (noise augmentation "
        f"{cfg['cond_noise']}), action-chunk MLP + pooled rendered action frame through the scale-shift norms, the "
        f"rendered action frame also as input channels (`action_frame_mode: {cfg['action_frame_mode']}`).",
        "- Sampling: 1-4 Euler steps on the Karras schedule (1 step = the conditional mean).",
        "- Actions are normalized with `stats.json` (quantile normalization pooled over the whole corpus).",
        "",
        "## Data",
        f"- {len(corpus.get('tasks', []))} Meta-World v3 pretraining tasks, {cams}: "
        f"{corpus.get('frames', 0):,} frames at 64 px, episodes of 150 steps run to the cap (no stop at success).",
        "- Scripted experts with a per-episode Gaussian action noise drawn in [0.1, 1.0] (near-perfect runs, "
        "near-successes, failures); half the episodes make smooth random excursions (rate 0.5).",
        f"- Held out of pretraining entirely ({len(HELDOUT_TASKS)} tasks): " + ", ".join(HELDOUT_TASKS) + ".",
        "",
        "## Training",
        f"- {training['steps']} optimizer steps at batch {data.get('batch_size', '?')} (stride {data.get('stride', '?')}"
        f", history {data.get('history_len', '?')}), AdamW lr {opt.get('lr', '?')}, weight decay "
        f"{opt.get('weight_decay', '?')}, 200 warm-up steps, EMA 0.999 (the shipped weights are the average).",
        f"- Wall time {training['wall_seconds'] / 3600:.2f} h on {platform.machine()} CPU ({os.cpu_count()} cores, "
        "no GPU); last losses " + ", ".join(f"{k} {v:.4f}" for k, v in training["losses"].items()) + ".",
        "",
        "## Reproduce",
        "```bash",
        "prophrl-data corpus --out runs/corpus --workspace 24 --overview 8 --seed 0",
        "prophrl-data corpus --out runs/corpus_val --workspace 1 --overview 1 --seed 900",
        f"prophrl fit --config configs/prophet/pretrain_metaworld.yaml --trainer.max_steps {training['steps']}",
        "# resume an interrupted run: add --ckpt_path last",
        "python -m lightning_prophrl.assets.ship --export runs/prophet_unet/export --run runs/prophet_unet "
        "--corpus runs/corpus --results runs/heldout/results.md",
        "```",
    ]
    if results_md:
        lines += ["", "## Held-out tasks (`python -m lightning_prophrl.studies.heldout`)", "", results_md.strip()]
    return "\n".join(lines) + "\n"


def ship(export: str | Path, run_dir: str | Path, corpus_dir: str | Path, results: str | Path | None = None,
         dest: str | Path = SHIPPED_PROPHET, max_mb: float = 50.0, steps: int | None = None) -> str:  # fmt: skip
    """Copy ``export`` to ``dest`` with its model card; returns ``dest``. ``steps``: the exported checkpoint's step
    when the run went on past it (see :func:`training_summary`)."""
    export, dest = Path(export), Path(dest)
    missing = [f for f in FILES if not (export / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{export}: missing {missing} (a ProphetPretrainModule export with `stats_from` set)")
    size_mb = sum((export / f).stat().st_size for f in FILES) / 2**20
    if size_mb > max_mb:
        raise ValueError(f"{export} holds {size_mb:.1f} MB, above --max-mb {max_mb}: save it in float16 first")
    corpus = json.loads((Path(corpus_dir) / "corpus.json").read_text())
    results_md = "\n".join(
        Path(r).read_text() for r in ([results] if isinstance(results, (str, Path)) else results or [])
    )
    card = model_card(export, corpus, training_summary(run_dir, steps), results_md or None)
    dest.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        shutil.copy(export / f, dest / f)
    (dest / "README.md").write_text(card)
    return str(dest)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", required=True, help="the run's save_pretrained export (with stats.json)")
    ap.add_argument("--run", required=True, help="the run's default_root_dir (TensorBoard events, config.yaml)")
    ap.add_argument("--corpus", required=True, help="the pretraining corpus directory (corpus.json)")
    ap.add_argument("--results", nargs="*", default=[], help="held-out results tables (markdown) for the card")
    ap.add_argument("--steps", type=int, default=None, help="the exported checkpoint's step (a run that went on)")
    ap.add_argument("--dest", default=str(SHIPPED_PROPHET))
    ap.add_argument("--max-mb", type=float, default=50.0)
    args = ap.parse_args(argv)
    print(ship(args.export, args.run, args.corpus, args.results, args.dest, args.max_mb, args.steps))


if __name__ == "__main__":
    main()
