"""The domain-bridged reward classifier study (paper: reward; issue 5): does training the video success classifier on
Prophet-imagined episodes as well as real ones make it a better judge of imagined rollouts?

Stages (``stage_cache.run_stage``: each writes ``done.json`` with the arguments that made it; a rerun with the same
arguments is skipped, one with other arguments is refused; outputs appear atomically, built under ``<dir>.partial``
and renamed when complete):

1. :func:`generate_reward_data`: real noisy-expert Meta-World episodes (``generate_metaworld``; per-episode action
   noise in ``[noise, noise_max]``, ``stop_at_success=False``) for training (seeds ``600..``) and held out (``700..``),
   disjoint from the Prophet study's target seeds (``500..519`` train, ``800..819`` eval).
2. :func:`stride_dataset`: each real set time-subsampled as Prophet's training data was (``stride_episode``) and cut
   to whole rollout segments (:func:`strided_segments`).
3. :func:`imagine_dataset`: every real episode imagined by Prophet from its first frame under its own actions; frames
   imagined, everything else (actions, per-frame ``success_steps``, ``success``) the real episode's.
4. :func:`train_classifier`: ``RewardModelModule`` (``configs/reward/classifier_tiny.yaml``'s classifier and loss)
   twice with the same steps, batch and seed: on the real strided episodes ("real-only"), and on the equal-weight
   mixture of the real strided and the imagined episodes ("bridged").
5. :func:`evaluate_classifier`: each classifier as ``ClassifierReward`` (persistence rule: ``k`` consecutive frames
   above ``threshold``) on the held-out real strided episodes and on their imagined twins, against the simulator's
   success: precision, recall, kappa and confusion counts (``binary_report``), plus the frame-level AUC against the
   per-frame flags. For reference the table also scores Prophet's own success head on the imagined episodes
   (:func:`success_head_report`), and the footer gives the imagined-vs-real PSNR (:func:`domain_gap`, with a contact
   sheet ``imagined_vs_real.png``).
6. :func:`reward_study`: all of it; ``results.md`` / ``results.json`` / ``config.json`` under ``out``.

Decisions:

* Like with like: every classifier trains and is evaluated on strided videos (one frame per ``stride`` simulator
  steps, cut to whole segments). Imagined videos only exist at Prophet's frame rate, so the real data is strided the
  same way rather than scored at 80 fps; the persistence rule's ``k`` frames then span the same time (``k * stride``
  simulator steps) on real and imagined videos, and a real episode and its imagined twin have identical lengths,
  actions and labels. The classifier is per-frame (``temporal_kernel=1``, ``frame_stack=1``), so no stacking stride
  is involved.
* The imagined episodes keep the real per-frame labels: they answer "did the simulator succeed at this frame under
  these actions". Where Prophet's video departs from the real one, that label is what the reward model must predict
  for FA-GRPO (the rollouts are judged against real-world success).
* Equal budget: both classifiers take the same optimizer steps on batches of the same size, so the bridged one sees
  half as many real frames; what it gains is measured net of that.
* Training setup checks: a Prophet trained by ``lightning_prophrl.studies.prophet`` has the study's ``config.json``
  a few directories above its model directory (:func:`training_setup`); stride, frame size, camera and episode length
  are read from it and any explicit mismatch is an error. Without it only the frame size is checked against the
  model's codec.
* One Euler step per imagined segment (``num_steps=1``), as the world-model RL loop of ``prophrl demo`` imagines
  (``wm_num_steps``): the reward model is studied on the videos it will judge there.

Cost (one torch thread on a loaded 2-core CPU, the defaults): the real episodes ~3 min (100 x 151 frames), the
imagination ~1 min (100 episodes x 37 one-frame segments), each classifier ~1 min (500 steps x 64 frames), the
evaluation seconds. ``--quick`` (3 + 2 episodes, 10 classifier steps) takes seconds beyond the data generation.

Run: ``python -m lightning_prophrl.studies.reward --model-dir DIR [--out runs/reward_study] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")


from lightning_prophrl.recipes.imagined import (  # noqa: F401 (re-exported)
    _batches,
    _imagine,
    _imagine_branches,
    imagine_branch_dataset,
    imagine_dataset,
)
from lightning_prophrl.recipes.reward import (  # noqa: F401 (re-exported)
    CLASSIFIER_YAML,
    NORM_MODE,
    SETUP_KEYS,
    _cut_extra,
    _fit_classifier,
    check_setup,
    classifier_settings,
    domain_gap,
    evaluate_classifier,
    load_classifier,
    stride_dataset,
    strided_segments,
    success_head_report,
    train_classifier,
    training_setup,
)

# ---------------------------------------------------------------------------------------------------------------------
# 4. Study
# ---------------------------------------------------------------------------------------------------------------------
from lightning_prophrl.recipes.reward_report import (  # noqa: F401 (re-exported)
    RewardStudyConfig,
    _row,
    generate_reward_data,
    reward_study,
    study_table,
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m lightning_prophrl.studies.reward", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--model-dir", default=None, help="Prophet save_pretrained directory")
    ap.add_argument("--out", default=None, help="output directory")
    ap.add_argument("--quick", action="store_true", help="a few episodes and steps that prove the plumbing")
    ap.add_argument("--train-episodes", type=int, default=None)
    ap.add_argument("--heldout-episodes", type=int, default=None)
    ap.add_argument("--classifier-steps", type=int, default=None)
    ap.add_argument("--classifier-batch-size", type=int, default=None)
    ap.add_argument("--num-steps", type=int, default=None, help="Euler steps per imagined segment (default 1)")
    ap.add_argument("--stats-from", default=None, help="dir of the stats.json of Prophet's training actions")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "quick" and v is not None}
    cfg = RewardStudyConfig.quick(**overrides) if args.quick else RewardStudyConfig(**overrides)
    return reward_study(cfg)


if __name__ == "__main__":
    main()
