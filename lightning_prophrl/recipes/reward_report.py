"""The reward report (cached): real-only and domain-bridged success classifiers trained on one task's real episodes
(and their Prophet-imagined twins), and Prophet's own success head, judged at the episode level against the
simulator on held-out real episodes and their imagined twins.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import torch

from lightning_prophrl.recipes.imagined import imagine_dataset
from lightning_prophrl.recipes.reward import (
    check_setup,
    domain_gap,
    evaluate_classifier,
    load_classifier,
    stride_dataset,
    success_head_report,
    train_classifier,
    training_setup,
)
from lightning_prophrl.stage_cache import run_stage

# ---------------------------------------------------------------------------------------------------------------------
# 4. Study
# ---------------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------------
# 4. Study
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class RewardStudyConfig:
    """Settings of the study (defaults: the full run, see :func:`reward_study`); :meth:`quick` proves the plumbing.

    ``image_size``, ``camera``, ``max_steps`` and ``stride`` default (None) to the Prophet's training setup when
    :func:`training_setup` finds it, else to 64 px, ``workspace``, 150 steps and stride 4; explicit values are checked
    against it.
    """

    model_dir: str = "runs/prophet_study/adapt_lora/seed0/model"
    out: str = "runs/reward_study"
    task: str = "pick-place-v3"
    train_episodes: int = 60
    heldout_episodes: int = 40
    train_seed: int = 600
    heldout_seed: int = 700
    noise: float = 0.1
    noise_max: float = 1.0
    image_size: int | None = None
    camera: str | None = None
    max_steps: int | None = None
    stride: int | None = None
    stats_from: str | None = None
    num_steps: int = 1
    imagine_batch_size: int = 8
    classifier_steps: int = 500
    classifier_batch_size: int = 64
    threshold: float = 0.9
    persistence: int = 3
    seed: int = 0
    threads: int = 1

    @classmethod
    def quick(cls, **kw: Any) -> RewardStudyConfig:
        base = dict(out="runs/reward_study_quick", train_episodes=3, heldout_episodes=2, classifier_steps=10,
                    classifier_batch_size=16)  # fmt: skip
        base.update(kw)
        return cls(**base)

    def resolve(self, setup: dict[str, Any] | None) -> dict[str, Any]:
        """``{image_size, camera, max_steps, stride}``: explicit values, else the training setup's, else defaults.

        Raises:
            ValueError: an explicit value differs from the training setup.
        """
        explicit = {k: getattr(self, k) for k in ("image_size", "camera", "max_steps", "stride")}
        check_setup(setup, **{k: v for k, v in explicit.items() if v is not None})
        defaults = {"image_size": 64, "camera": "workspace", "max_steps": 150, "stride": 4}
        return {k: v if v is not None else (setup or {}).get(k) or defaults[k] for k, v in explicit.items()}


def generate_reward_data(out: Path, cfg: RewardStudyConfig, size: int, camera: str, max_steps: int) -> dict[str, str]:
    """Real training and held-out episodes (cached); returns ``{"train": dir, "heldout": dir}``."""
    from lightning_prophrl.datamodules.metaworld_gen import generate_metaworld

    sets = {"train": (cfg.train_episodes, cfg.train_seed), "heldout": (cfg.heldout_episodes, cfg.heldout_seed)}
    lo, hi = sorted(sets.values(), key=lambda s: s[1])
    if lo[1] + lo[0] > hi[1]:
        raise ValueError(f"training seeds {cfg.train_seed}.. and held-out seeds {cfg.heldout_seed}.. overlap")
    dirs = {}
    for name, (n, first_seed) in sets.items():
        args = {"task": cfg.task, "episodes": n, "seed": first_seed, "noise": cfg.noise, "noise_max": cfg.noise_max,
                "size": size, "camera": camera, "max_steps": max_steps}  # fmt: skip

        def build(tmp: Path, a: dict[str, Any] = args) -> dict[str, Any]:
            return generate_metaworld([a["task"]], a["episodes"], str(tmp), noise=a["noise"], noise_max=a["noise_max"],
                                      size=a["size"], camera=a["camera"], max_steps=a["max_steps"],
                                      stop_at_success=False, seed=a["seed"], progress=False)  # fmt: skip

        run_stage(out / "data" / f"real_{name}", args, build)
        dirs[name] = str(out / "data" / f"real_{name}")
    return dirs


def reward_study(cfg: RewardStudyConfig) -> dict[str, Any]:
    """All stages; writes ``config.json``, ``results.md`` and ``results.json`` under ``cfg.out``, prints the table.

    Returns:
        ``{"table": markdown, "reports": {classifier: {"real": report, "imagined": report}}, "success_head": report,
        "setup": resolved settings}``.
    """
    import lightning as L

    from lightning_prophrl.models.prophet import Prophet

    torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, verbose=False)
    t0 = time.perf_counter()
    setup = training_setup(cfg.model_dir)
    resolved = cfg.resolve(setup)
    if setup is None:
        print(f"note: no Prophet study config.json above {cfg.model_dir}; stride / size / camera / episode length "
              f"are not verified (using {resolved})")  # fmt: skip
    chunk = int(Prophet.load_config(cfg.model_dir)["action_chunk_length"])
    check_setup(setup, chunk_len=chunk)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**asdict(cfg), "resolved": resolved, "training_setup": setup},
                                                indent=2))  # fmt: skip
    # 1. Data: real, real strided (whole segments), imagined
    real = generate_reward_data(out, cfg, resolved["image_size"], resolved["camera"], resolved["max_steps"])
    data = {}
    for name, src in real.items():
        data[f"real_{name}"] = str(out / "data" / f"real_{name}_strided")
        stride_dataset(src, data[f"real_{name}"], resolved["stride"], chunk)
        data[f"imagined_{name}"] = str(out / "data" / f"imagined_{name}")
        imagine_dataset(cfg.model_dir, src, data[f"imagined_{name}"], resolved["stride"], cfg.num_steps, cfg.seed,
                        cfg.imagine_batch_size, cfg.stats_from)  # fmt: skip
    # 2. Classifiers: same steps, batch and seed
    mixtures = {"real-only": ([data["real_train"]], None),
                "bridged": ([data["real_train"], data["imagined_train"]], [1.0, 1.0])}  # fmt: skip
    reports, classifiers = {}, {}
    for name, (datasets, weights) in mixtures.items():
        stage = out / "classifier" / name
        classifiers[name] = train_classifier(datasets, stage, weights, cfg.classifier_steps, cfg.seed,
                                             cfg.classifier_batch_size, resolved["image_size"], out / "tb")  # fmt: skip
        model = load_classifier(stage)
        # 3. Episode-level evaluation on held-out real episodes and their imagined twins
        reports[name] = {split: evaluate_classifier(model, data[f"{split}_heldout"], cfg.threshold, cfg.persistence,
                                                    resolved["image_size"]) for split in ("real", "imagined")}  # fmt: skip
    head = success_head_report(data["imagined_heldout"])
    gap = domain_gap(data["real_heldout"], data["imagined_heldout"], out / "imagined_vs_real.png")
    table = study_table(cfg, resolved, chunk, reports, head, gap)
    (out / "results.md").write_text(table + "\n")
    results = {"config": asdict(cfg), "resolved": resolved, "training_setup": setup, "data": data,
               "classifiers": classifiers, "reports": reports, "success_head": head, "domain_gap": gap,
               "seconds": time.perf_counter() - t0}  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(table)
    print(f"\nwrote {out / 'results.md'} ({time.perf_counter() - t0:.0f} s)")
    return {"table": table, "reports": reports, "success_head": head, "setup": resolved}


def _row(label: str, evaluated_on: str, r: dict[str, Any]) -> str:
    cells = [label, evaluated_on, str(r["episodes"]), f"{r['success_rate']:.2f}", f"{r['predicted_rate']:.2f}",
             f"{r['precision']:.2f}", f"{r['recall']:.2f}", f"{r['kappa']:.2f}",
             "–" if r["frame_auc"] is None else f"{r['frame_auc']:.2f}",
             *(str(r[c]) for c in ("tp", "fp", "fn", "tn"))]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def study_table(cfg: RewardStudyConfig, resolved: dict[str, Any], chunk: int, reports: dict[str, dict[str, Any]],
                head: dict[str, Any] | None, gap: dict[str, Any]) -> str:  # fmt: skip
    """Markdown table: one row per (classifier, held-out set), episode-level scores against the simulator."""
    cols = ["classifier", "evaluated on", "episodes", "success rate (sim)", "predicted rate", "precision", "recall",
            "kappa", "frame AUC", "TP", "FP", "FN", "TN"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, by_split in reports.items():
        lines += [_row(name, f"held-out {split}", r) for split, r in by_split.items()]
    if head is not None:
        lines.append(_row("Prophet success head (2 segments > 0.5)", "held-out imagined", head))
    lines.append(
        f"\n{cfg.task}, {resolved['image_size']} px {resolved['camera']} camera, {resolved['max_steps']} steps, "
        f"stride {resolved['stride']}, {chunk} frame(s) per segment, {cfg.num_steps} Euler step(s); "
        f"{cfg.train_episodes} training episodes (seeds {cfg.train_seed}..), {cfg.heldout_episodes} held-out "
        f"(seeds {cfg.heldout_seed}..); classifier {cfg.classifier_steps} steps x {cfg.classifier_batch_size} frames, "
        f"seed {cfg.seed}; episode success = {cfg.persistence} consecutive frames above {cfg.threshold}; "
        f"Prophet {cfg.model_dir}; imagined vs real held-out frames: PSNR {gap['psnr']:.1f} dB (first frame held "
        f"still: {gap['psnr_copy_first']:.1f} dB)."
    )
    return "\n".join(lines)
