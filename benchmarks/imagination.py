"""Benchmark of imagination inside the shipped Prophet at the demo's RL settings: success from Prophet's own head
against success from a frame classifier (the demo's reward), side by side in one run.

``WorldModelEnv`` over the shipped Prophet (its real weights, float32, CPU) with the demo's branch settings: the
target task's real initial frames (``MetaWorldEnv`` resets of held-out seeds), ``num_prompts x group_size = 4 x 8 =
32`` rollouts of ``--segments`` (10, the demo's branch length) one-frame segments of 4 random actions, one sampling
step (``wm_num_steps``) and the commanded-pose action frames. Two worlds differ only in where success comes from:

* ``head``: Prophet's success head, which costs a clean U-Net pass over every generated segment;
* ``scorer``: a success classifier of the reward stage's architecture (``recipes.reward.classifier_settings``, random
  weights: its cost, not its verdicts, is measured) over the imagined video, as the demo's branch-replay classifier
  is used; Prophet then skips its head's pass.

The two run in alternation for ``--rounds`` episodes each on the same prompts and actions (so that a load change hits
both) and the frames are checked to be identical. Reported: milliseconds per ``step`` call (32 rollouts), medians over
the rounds, and their ratio. The last line of the output is one JSON object with the machine facts.

    OMP_NUM_THREADS=2 MUJOCO_GL=egl .venv/bin/python benchmarks/imagination.py [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _envs import random_unified_chunks  # noqa: E402
from _machine import run_info  # noqa: E402


def imagination_cost(task: str, segments: int, rounds: int, num_prompts: int = 4, group_size: int = 8,
                     seed: int = 0) -> dict:  # fmt: skip
    """Milliseconds per ``WorldModelEnv.step`` with Prophet's success head and with a classifier scorer (module
    docstring); raises ``RuntimeError`` when the two worlds imagine different frames."""
    from lightning_prophrl.assets import load_shipped_prophet
    from lightning_prophrl.envs.base import Prompt
    from lightning_prophrl.envs.metaworld import MetaWorldEnv
    from lightning_prophrl.envs.poses import CommandedPoses
    from lightning_prophrl.envs.world_model import WorldModelEnv, classifier_scorer
    from lightning_prophrl.models.reward import VideoSuccessClassifier
    from lightning_prophrl.recipes.reward import classifier_settings

    prophet, stats = load_shipped_prophet()
    torch.manual_seed(seed)
    scorer = classifier_scorer(VideoSuccessClassifier(**classifier_settings()["classifier"]).eval())
    reset = MetaWorldEnv(task, num_prompts=num_prompts, group_size=1, image_size=64, max_steps=500)
    poses = CommandedPoses.metaworld(task, 64, "workspace")
    common = dict(num_prompts=num_prompts, group_size=group_size, max_segments=segments, num_steps=1, seed=seed,
                  initial_env=reset, poses=poses, stop_at_success=False)  # fmt: skip
    worlds = {"head": WorldModelEnv(prophet, stats, **common),
              "scorer": WorldModelEnv(prophet, stats, success_scorer=scorer, **common)}  # fmt: skip
    prompts = [Prompt(task, 1000 + p) for p in range(num_prompts)]
    ms: dict[str, list[float]] = {k: [] for k in worlds}
    try:
        for r in range(rounds):
            chunks = random_unified_chunks(segments, num_prompts * group_size, 4, seed + r)
            videos = {}
            for name, world in worlds.items():
                world.reseed(seed + r)
                world.reset(prompts)
                t0 = time.perf_counter()
                for c in chunks:
                    world.step(c)
                ms[name].append(1000 * (time.perf_counter() - t0) / segments)
                videos[name] = world.video()
            if not torch.equal(videos["head"], videos["scorer"]):
                raise RuntimeError("the two worlds imagined different frames for the same prompts, actions and noise")
    finally:
        reset.close()
    out = {"task": task, "rollouts": num_prompts * group_size, "segments": segments, "rounds": rounds,
           "prophet_params": prophet.num_parameters(), "threads": torch.get_num_threads()}  # fmt: skip
    for name in worlds:
        out[f"ms_per_step_{name}"] = round(statistics.median(ms[name]), 1)
    out["head_over_scorer"] = round(out["ms_per_step_head"] / out["ms_per_step_scorer"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="window-open-v3")
    parser.add_argument("--segments", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    res = imagination_cost(args.task, args.segments, args.rounds)
    print(f"imagined {res['rollouts']} rollouts x {res['segments']} segments, {res['task']}, shipped Prophet, "
          f"{res['threads']} thread(s): success head {res['ms_per_step_head']} ms/step, classifier scorer "
          f"{res['ms_per_step_scorer']} ms/step ({res['head_over_scorer']}x)")  # fmt: skip
    print(json.dumps({**res, **run_info(t0)}))


if __name__ == "__main__":
    main()
