"""Adaptation with the policy's own episodes in the mix: does the adapted Prophet then tell that policy's successes from
its failures in closed loop?

``python -m lightning_prophrl.studies.adapt_mix --task plate-slide-v3 --policy runs/demo_plate/sft/seed0/sft.ckpt
--out runs/heldout_plate --seeds 0,1``

The held-out study (:mod:`lightning_prophrl.studies.heldout`) adapts on 20 noisy-expert episodes, which all succeed.
Here the 20 adaptation episodes are ``20 - K`` noisy-expert episodes (initial states ``ADAPT_SEED + i``, the same
noise range) and ``K`` real SDE rollouts of the policy (``--policy-episodes``, at ``--policy-noise``, initial states
``MIX_POLICY_SEED + i``, apart from the study's ``cf_policy`` and closed-loop states), sampled half and half. Per seed:
LoRA adaptation of the shipped model on the mixture (the held-out study's recipe otherwise), then
:func:`~lightning_prophrl.recipes.heldout.closed_loop_check` of the same policy (the closed-loop table of the held-out
study, its success threshold fitted on ``--calibration`` episodes from other initial states) and, unless
``--no-report``, the open-loop report on ``eval`` and ``cf_policy``. Stages are cached under
``--out`` beside the held-out study's (``data/<task>/adapt<N>_expert``, ``adapt<K>_policy``;
``<task>/lora_mix_seed<s>``; a mixture of other counts or noise is a new stage directory).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_prophrl.recipes.heldout import ADAPT_SEED, POLICY_SET, adapt, closed_loop_check, heldout_data
from lightning_prophrl.stage_cache import is_done, mark_done

MIX_POLICY_SEED = 7700  # initial states of the policy's adaptation episodes (cf_policy: 7800.., closed loop: 7900..)


def mix_data(task: str, policy: str, data_dir: str | Path, policy_episodes: int = 10, policy_noise: float = 1.0,
             episodes: int = 20, size: int = 64, camera: str = "workspace", max_steps: int = 150,
             noise: float = 0.1, noise_max: float = 0.6) -> list[str]:  # fmt: skip
    """The two halves of the adaptation mixture: ``episodes - policy_episodes`` noisy-expert episodes and
    ``policy_episodes`` SDE rollouts of ``policy``; returns their directories (cached)."""
    from lightning_prophrl.datamodules.metaworld_gen import generate_metaworld, generate_policy_rollouts
    from lightning_prophrl.envs.rollout import ActionDecoder
    from lightning_prophrl.modules.policy_loading import load_policy

    if not 1 <= policy_episodes < episodes <= 20:
        raise ValueError(f"need 1 <= --policy-episodes ({policy_episodes}) < episodes ({episodes}) <= 20")
    data_dir = Path(data_dir)
    expert = data_dir / f"adapt{episodes - policy_episodes}_expert"
    own = data_dir / (f"adapt{policy_episodes}_policy" + ("" if policy_noise == 1.0 else f"_noise{policy_noise:g}"))
    if not is_done(expert):
        mark_done(expert, generate_metaworld(out=str(expert), tasks=[task], size=size, camera=camera,
                                             max_steps=max_steps, stop_at_success=False, progress=False,
                                             episodes=episodes - policy_episodes, seed=ADAPT_SEED, noise=noise,
                                             noise_max=noise_max))  # fmt: skip
    if not is_done(own):
        net, meta = load_policy(policy)
        decoder = ActionDecoder(meta["action_stats"], meta["action_dims"], "metaworld",
                                meta.get("norm_mode", "quantile"))  # fmt: skip
        seeds = range(MIX_POLICY_SEED, MIX_POLICY_SEED + policy_episodes)
        mark_done(own, generate_policy_rollouts(net, decoder, task, seeds, str(own), math.ceil(max_steps / net.exec_horizon),
                                                size=size, camera=camera, max_steps=max_steps,
                                                noise_level=policy_noise, progress=False))  # fmt: skip
    return [str(expert), str(own)]


def run_mix(model: str, task: str, policy: str, out: str | Path, seeds: Sequence[int] = (0,),
            policy_episodes: int = 10, policy_noise: float = 1.0, adapt_steps: int = 400, closed_loop: int = 30,
            report: bool = True, size: int = 64, max_steps: int = 150, batch_size: int = 16,
            num_segments: int = 38, calibration: int = 30) -> dict[str, Any]:  # fmt: skip
    """The study of the module docstring; returns ``{"mixture", "seeds": {seed: {"closed_loop", "report"}}}``."""
    from lightning_prophrl.recipes.prophet_report import world_model_report

    out = Path(out)
    data = heldout_data(task, out / "data" / task, size=size, max_steps=max_steps, policy=policy)
    mixture = mix_data(task, policy, out / "data" / task, policy_episodes, policy_noise, size=size,
                       max_steps=max_steps)  # fmt: skip
    name = "lora_mix" if (policy_episodes, policy_noise) == (10, 1.0) else f"lora_mix{policy_episodes}_{policy_noise:g}"
    results: dict[str, Any] = {"mixture": mixture, "seeds": {}}
    for seed in seeds:
        stage = out / task / f"{name}_seed{seed}"
        model_dir = adapt(model, mixture, stage, adapt_steps, "lora", seed, batch_size=batch_size)  # type: ignore[arg-type]
        row: dict[str, Any] = {"closed_loop": closed_loop_check(model_dir, task, policy, stage / "report" / "closed_loop",
                                                                closed_loop, size=size, max_steps=max_steps,
                                                                calibration=calibration)}  # fmt: skip
        if report:
            row["report"] = {s: world_model_report(model_dir, data[s], stage / "report" / s, num_episodes=20,
                                                   num_segments=num_segments, num_steps=1, seed=0)
                             for s in ("eval", POLICY_SET)}  # fmt: skip
        results["seeds"][seed] = row
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="lightning_prophrl/assets/prophet_metaworld")
    ap.add_argument("--task", required=True, help="a held-out task")
    ap.add_argument("--policy", required=True, help="the task's policy (save_pretrained directory or SFT checkpoint)")
    ap.add_argument("--out", default="runs/heldout")
    ap.add_argument("--seeds", default="0", help="adaptation seeds, comma-separated")
    ap.add_argument("--policy-episodes", type=int, default=10, help="K of the 20 adaptation episodes")
    ap.add_argument("--policy-noise", type=float, default=1.0, help="SDE noise level of the policy's episodes")
    ap.add_argument("--closed-loop", type=int, default=30, metavar="N")
    ap.add_argument(
        "--calibration",
        type=int,
        default=30,
        metavar="N",
        help="fit the closed loop's success threshold on N episodes from other states (0: no fit)",
    )
    ap.add_argument("--no-report", action="store_true", help="skip the open-loop report")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("PROPHRL_THREADS", 2)))
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    res = run_mix(args.model, args.task, args.policy, args.out, [int(s) for s in args.seeds.split(",") if s],
                  args.policy_episodes, args.policy_noise, closed_loop=args.closed_loop, report=not args.no_report,
                  calibration=args.calibration)  # fmt: skip
    for seed, row in res["seeds"].items():
        cl = row["closed_loop"]
        print(f"seed {seed}: real {cl['real_success']:.2f}, imagined {cl['imagined_success']:.2f}, "
              f"kappa {cl['kappa']:.2f}, score AUC {cl['score_auc']}; fitted: {cl.get('fitted')}")  # fmt: skip
    (Path(args.out) / f"adapt_mix_{args.task}.json").write_text(json.dumps(res, indent=2, default=str))
    return res


if __name__ == "__main__":
    os.environ.setdefault("MUJOCO_GL", "egl")
    main()
