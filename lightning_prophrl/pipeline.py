"""``prophrl demo``: the ProphRL pipeline on the embedded Meta-World default, stage by stage, cached.

The default (``make demo``, about 30 minutes on 2 cores) is one seed of FA-GRPO inside the shipped Prophet on
window-open-v3 against its SFT policy; ``--table10`` runs the whole comparison (3 seeds; FA-GRPO with and without
FlowScale, in the simulator and inside Prophet; hours).

Stages (each writes under ``runs/demo/`` and is skipped when its output exists, so a rerun resumes):

1. ``data``: scripted-expert demonstrations of the target task (few, low noise: the SFT data);
2. ``sft``: a deliberately weak flow-matching policy from the few target demos, one per seed, and its success on the
   paired held-out states (with ``parallel``, in a second process while the world model is built);
   ``world_model`` (only with ``wm_*`` variants and no ``--wm-model-dir``): the shipped Prophet LoRA-adapted to a few
   noisy target-task episodes (``--wm-base pretrain``: a tiny Prophet pretrained on the pretraining tasks first, the
   functions of :mod:`lightning_prophrl.studies.prophet`), with its open-loop report on held-out target episodes;
   ``reward`` (when a ``wm_*`` variant's reward needs it, or with ``--reward-report``): the domain-bridged success
   classifier (:mod:`lightning_prophrl.studies.reward`: trained on real episodes and on their Prophet-imagined twins
   labelled by the simulator) and the precision / recall of it, of a real-only classifier and of Prophet's success
   head against the simulator on held-out real episodes and their imagined twins;
3. ``rl``: FA-GRPO variants from the SFT policy for a fixed budget of updates, in the real simulator
   (``sim_*``) and, when a world model is available, inside it (``wm_*``). The default's ``wm_fagrpo_branch*``
   variants first refresh Prophet and the classifier on the SFT policy's own real rollouts, run the closed-loop
   agreement gate, then learn from short imagined branches started at those rollouts' real states, with the
   imagined-vs-real guard and a KL anchor to the SFT policy;
4. ``eval``: every policy in the real simulator on held-out initial states during RL (ODE, fixed noise), then the
   final policies paired state by state with their SFT policy on ``paired_states`` held-out states, and the table.

Every row of the table states its RL updates and the real environment interactions it used; ``results.md`` ends with
the wall time of every stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch

from lightning_prophrl.cli_errors import DEBUG_HELP, ArgumentParser, user_command
from lightning_prophrl.stage_cache import is_done, mark_done

VARIANTS = {
    # name: (loss, flowscale, environment)
    "sim_fagrpo": ("fa_grpo", False, "sim"),
    "sim_fagrpo_flowscale": ("fa_grpo", True, "sim"),
    "sim_flowgrpo": ("flow_grpo", False, "sim"),
    "wm_fagrpo": ("fa_grpo", False, "wm"),
    "wm_fagrpo_flowscale": ("fa_grpo", True, "wm"),
    # world-model refresh before RL: Prophet fine-tuned on the SFT policy's own real rollouts (stage_rl_wm)
    "wm_fagrpo_refresh": ("fa_grpo", False, "wm"),
    # refresh, then short imagined branches from the refresh rollouts' real states (MBPO style, stage_rl_wm)
    "wm_fagrpo_branch": ("fa_grpo", False, "wm"),
    "wm_fagrpo_branch_flowscale": ("fa_grpo", True, "wm"),
}
BRANCHED = ("wm_fagrpo_branch", "wm_fagrpo_branch_flowscale")
REFRESHED = ("wm_fagrpo_refresh", *BRANCHED)


def refresh_owner(variant: str) -> str:
    """The variant whose run directory holds a refresh: the branch variants share one (FlowScale changes only RL)."""
    return "wm_fagrpo_branch" if variant in BRANCHED else variant


POLICY_DIMS = [0, 1, 2, 6]  # Meta-World's real unified dims: dpos xyz + gripper


@dataclass
class DemoConfig:
    """Settings of the demo; ``quick()`` shrinks everything to prove the plumbing in minutes, ``table10()`` is the
    whole comparison.

    The defaults are the embedded default of ``make demo`` (about 30 minutes on 2 cores): a window-open-v3 target (a
    large visual outcome that a 64 px Prophet can show) with a weak SFT policy cloned from 2 demos, one seed, FA-GRPO
    inside the shipped Prophet adapted to the target, on short imagined branches from the real states of a refresh
    (graded reward of the branch-replay classifier, SDE noise 2.0), paired with the SFT policy on 200 held-out states.
    """

    out: str = "runs/demo"
    target_task: str = "window-open-v3"
    pretrain_tasks: list[str] = field(
        default_factory=lambda: ["push-v3", "reach-v3", "drawer-open-v3", "button-press-topdown-v3"]
    )
    sft_demos: int = 2
    sft_noise: float = 0.1
    image_size: int = 64
    camera: str = "workspace"
    max_steps: int = 150
    chunk_len: int = 4
    sft_steps: int = 3000
    sft_batch: int = 64
    seeds: list[int] = field(default_factory=lambda: [0])
    variants: list[str] = field(default_factory=lambda: ["wm_fagrpo_branch"])
    rl_updates: int = 40
    num_prompts: int = 4
    group_size: int = 8
    lr: float = 3e-5
    eval_seeds: int = 60
    eval_every: int = 20
    # after RL, every final policy and its seed's SFT policy on this many held-out states (the first ``eval_seeds`` of
    # them are the evaluation's), paired state by state (``studies.evaluate``): 60 states resolve ~6 pp, 200 ~3 pp
    paired_states: int = 200
    # torch threads of the demo's process; with ``parallel`` the SFT policies (and their paired evaluation) are trained
    # in a second process while the world model is adapted, each process with half the threads
    threads: int = 2
    parallel: bool = True
    # the reward-model stage's report (real-only vs bridged classifiers vs the success head on held-out real episodes
    # and their imagined twins; minutes) also when no variant's reward needs its classifier
    reward_report: bool = False
    # world-model RL (wm_* variants): a saved Prophet and the stats.json directory of its training data
    wm_model_dir: str | None = None
    wm_stats_dir: str | None = None
    wm_num_steps: int = 1
    wm_beta_kl: float = 0.04
    # the closed-loop gate's and the imagination guard's episodes (the branch agreement takes twice as many starts) and
    # the guard's period in RL updates (it also checks before the first)
    wm_check_seeds: int = 20
    wm_check_every: int = 20
    # world-model refresh (``*_refresh`` variants): real SDE rollouts of the SFT policy (seeds 6000 + 10000 * seed ..)
    # mixed with weight ``wm_refresh_weight`` into the target data Prophet was adapted on (``wm_target_data``; the
    # demo's own when it trains the world model) for ``wm_refresh_steps`` LoRA steps, before the gate and RL
    wm_refresh_episodes: int = 60
    wm_refresh_steps: int = 200
    wm_refresh_weight: float = 0.5
    # SDE noise level of the refresh rollouts (None: the policy's 0.7); more noise shows Prophet more varied actions
    # (and outcomes) from the policy's states, which is what action-level fidelity is learned from (round v9)
    wm_refresh_noise_level: float | None = None
    # within-start contrast in the refresh: ``wm_refresh_branch_starts`` recorded states of the refresh rollouts (the
    # branch starts RL uses, drawn at random with the seed) are each branched ``wm_refresh_branch_group`` times for real
    # (``wm_branch_segments`` chunks at the RL noise ``wm_noise_level``, the recorded prefix replayed to reach the
    # state) and added to the refresh mixture: the same memory, different actions, different outcomes (0: off)
    wm_refresh_branch_starts: int = 0
    wm_refresh_branch_group: int = 4
    wm_target_data: str | None = None
    # also retrain the bridged classifier with the refresh rollouts and their imagined twins (by the refreshed Prophet),
    # for more steps than the reward stage's: 500 steps could not tell the policy's own successes from failures
    wm_refresh_reward: bool = True
    wm_refresh_reward_steps: int = 2000
    # what the refreshed classifier learns the imagined domain from: "twins" (whole-episode open-loop replays from the
    # first frame, with the reward stage's data) or "branches" (branch replays from the rollouts' real states,
    # labelled with the recorded frames, with the rollouts' real frames; held-out kappa 0.80 vs 0.42, round v8)
    wm_refresh_reward_data: str = "branches"
    # the branch-replay classifier's imagined branches start every this many chunks of the refresh rollouts
    wm_refresh_reward_branch_every: int = 4
    # branches (``wm_fagrpo_branch``): imagined rollouts of ``wm_branch_segments`` policy chunks started at every
    # ``wm_branch_every``-th chunk boundary of the refresh rollouts before their first success, with the recorded
    # memory; the reward is imagined success within the branch (the world model's drift grows with the horizon)
    wm_branch_segments: int = 10
    wm_branch_every: int = 1
    # exploration inside Prophet: the SDE noise level of the RL rollouts (None: the policy's 0.7) and the group size
    # (None: ``group_size``); more noise or larger groups give more branches of one start different outcomes, which
    # is all a group-normalized advantage learns from (``studies.branches`` measures it before RL, round v9)
    wm_noise_level: float | None = 2.0
    wm_group_size: int | None = None
    # dual-noise verification: every imagined RL rollout imagined ``wm_draws`` times under independent world-model
    # noise (the same actions), its reward the ``wm_draws_reduce`` ("mean" or "min") of the draws' rewards
    # (``envs.world_model.draws_reward``; 1: off; costs ``wm_draws`` times the imagination)
    wm_draws: int = 1
    wm_draws_reduce: str = "mean"
    # on-policy branch starts (branch variants): every ``wm_onpolicy_starts_every`` RL updates, real SDE rollouts of the
    # current policy (``wm_onpolicy_starts_episodes``, at the refresh's noise and after its seeds, counted as real
    # interactions) replace the branch starts, so that RL keeps branching from the states the moving policy visits
    # (``callbacks.OnPolicyBranchStarts``; 0: the refresh rollouts' states throughout)
    wm_onpolicy_starts_every: int = 0
    wm_onpolicy_starts_episodes: int = 30
    # imagined success: the domain-bridged classifier of the reward stage (3 frames > 0.9, the reward study's rule) or
    # Prophet's success head (2 segments > 0.5); measured on imagined twins: kappa 0.75 vs -0.08 (docs/results.md)
    wm_reward: str = "bridged"
    # the RL reward inside Prophet: "success" (0/1 imagined success) or "graded" (the scorer's best probability held
    # for k segments, ``envs.world_model.graded_reward``: imagined frames compress the probabilities, round v8)
    wm_reward_signal: str = "graded"
    # graded scores below this count as 0 (noise among failures; 0.3 was the best 0/1 threshold on branch replays)
    wm_graded_floor: float = 0.2
    # the world model the demo builds when no wm_model_dir is given (one Prophet, seed 0, shared by all RL seeds):
    # "shipped" LoRA-adapts the shipped pretrained Prophet (``adapt_shipped``; 64 px, the target held out of its
    # pretraining), "pretrain" pretrains a tiny Prophet on ``pretrain_tasks`` first (``wm_history_len``,
    # ``wm_episodes_per_task``, ``wm_pretrain_steps``; minutes, the tests' path) and adapts that
    wm_base: str = "shipped"
    wm_chunk_len: int = 1  # Prophet frames per segment; one frame = chunk_len / wm_chunk_len simulator steps
    wm_history_len: int = 8
    wm_episodes_per_task: int = 30
    wm_target_episodes: int = 20
    wm_eval_episodes: int = 10
    wm_pretrain_steps: int = 4000
    wm_adapt_steps: int = 300
    wm_batch: int = 16
    # the reward-model stage (wm_* variants): real episodes for the classifiers (seeds 600.. and 700..)
    reward_train_episodes: int = 60
    reward_heldout_episodes: int = 40
    reward_steps: int = 500

    def __post_init__(self) -> None:
        if self.target_task in self.pretrain_tasks:
            raise ValueError(f"--target-task {self.target_task} (`target_task`) is also a pretraining task; the "
                             "target must be held out")  # fmt: skip
        if self.wm_base not in ("shipped", "pretrain"):
            raise ValueError(f"--wm-base (`wm_base`) must be 'shipped' or 'pretrain', got {self.wm_base!r}")
        if self.wm_base == "shipped" and any(VARIANTS[v][2] == "wm" for v in self.variants):
            from lightning_prophrl.envs.task_split import HELDOUT_TASKS

            if self.target_task not in HELDOUT_TASKS:
                raise ValueError(f"--target-task {self.target_task} was in the shipped Prophet's pretraining; pick one "
                                 "of lightning_prophrl.envs.task_split.HELDOUT_TASKS or pass --wm-base pretrain")  # fmt: skip
            if self.image_size != 64 or self.wm_chunk_len != 1 or self.chunk_len != 4:
                raise ValueError(f"the shipped Prophet works at 64 px, one frame per 4-step policy chunk: --wm-base "
                                 f"shipped needs image_size 64, chunk_len 4 and wm_chunk_len 1 (got {self.image_size}, "
                                 f"{self.chunk_len}, {self.wm_chunk_len}); pass --wm-base pretrain otherwise")  # fmt: skip
        if self.sft_demos < 1:
            raise ValueError(f"--sft-demos (`sft_demos`) must be >= 1, got {self.sft_demos}")
        if self.wm_reward_signal not in ("success", "graded"):
            raise ValueError(f"--wm-reward-signal (`wm_reward_signal`) must be 'success' or 'graded', got "
                             f"{self.wm_reward_signal!r}")  # fmt: skip
        if self.wm_refresh_reward_data not in ("twins", "branches"):
            raise ValueError(f"--wm-refresh-reward-data (`wm_refresh_reward_data`) must be 'twins' or 'branches', got "
                             f"{self.wm_refresh_reward_data!r}")  # fmt: skip
        if not 0.0 <= self.wm_graded_floor < 1.0:
            raise ValueError(f"`wm_graded_floor` must lie in [0, 1), got {self.wm_graded_floor}")
        if self.wm_refresh_noise_level is not None and self.wm_refresh_noise_level <= 0:
            raise ValueError(f"--wm-refresh-noise-level (`wm_refresh_noise_level`) must be > 0, got "
                             f"{self.wm_refresh_noise_level}")  # fmt: skip
        if self.wm_noise_level is not None and self.wm_noise_level <= 0:
            raise ValueError(f"--wm-noise-level (`wm_noise_level`) must be > 0, got {self.wm_noise_level}")
        if self.wm_draws < 1 or self.wm_draws_reduce not in ("mean", "min"):
            raise ValueError(f"--wm-draws (`wm_draws`) must be >= 1 and --wm-draws-reduce (`wm_draws_reduce`) 'mean' "
                             f"or 'min', got {self.wm_draws} and {self.wm_draws_reduce!r}")  # fmt: skip
        if self.wm_group_size is not None and self.wm_group_size < 2:
            raise ValueError(f"--wm-group-size (`wm_group_size`) must be >= 2, got {self.wm_group_size}")
        if self.wm_refresh_branch_starts < 0 or self.wm_refresh_branch_group < 1:
            raise ValueError(f"--wm-refresh-branch-starts (`wm_refresh_branch_starts`) must be >= 0 and "
                             f"--wm-refresh-branch-group (`wm_refresh_branch_group`) >= 1, got "
                             f"{self.wm_refresh_branch_starts} and {self.wm_refresh_branch_group}")  # fmt: skip
        if self.wm_onpolicy_starts_every < 0 or self.wm_onpolicy_starts_episodes < 1:
            raise ValueError(f"--wm-onpolicy-starts-every (`wm_onpolicy_starts_every`) must be >= 0 and "
                             f"--wm-onpolicy-starts-episodes (`wm_onpolicy_starts_episodes`) >= 1, got "
                             f"{self.wm_onpolicy_starts_every} and {self.wm_onpolicy_starts_episodes}")  # fmt: skip
        if self.wm_onpolicy_starts_every and self.rl_updates % self.wm_onpolicy_starts_every:
            raise ValueError(f"--rl-updates ({self.rl_updates}) must be a multiple of --wm-onpolicy-starts-every "
                             f"({self.wm_onpolicy_starts_every})")  # fmt: skip
        # on-policy start seeds continue the refresh's (6000 + 10000 * seed ..) and stay below 8000 + 10000 * seed
        onpolicy = (self.rl_updates // max(self.wm_onpolicy_starts_every, 1) - 1) * self.wm_onpolicy_starts_episodes
        if self.wm_onpolicy_starts_every and self.wm_refresh_episodes + onpolicy > 2000:
            raise ValueError(f"--wm-refresh-episodes plus the on-policy starts' episodes ({self.wm_refresh_episodes} + "
                             f"{onpolicy}) must stay <= 2000 (their seed range)")  # fmt: skip
        if self.paired_states and self.paired_states < self.eval_seeds:
            raise ValueError(f"`paired_states` ({self.paired_states}) must be 0 or >= --eval-seeds ({self.eval_seeds})")
        if self.wm_refresh_reward_branch_every < 1:
            raise ValueError(
                f"`wm_refresh_reward_branch_every` must be >= 1, got {self.wm_refresh_reward_branch_every}"
            )
        if self.wm_branch_segments < 1 or self.wm_branch_every < 1:
            raise ValueError(f"--wm-branch-segments (`wm_branch_segments`) and `wm_branch_every` must be >= 1, got "
                             f"{self.wm_branch_segments} and {self.wm_branch_every}")  # fmt: skip

    @property
    def max_queries(self) -> int:
        return -(-self.max_steps // self.chunk_len)

    @classmethod
    def load(cls, out: str | Path) -> DemoConfig:
        """The settings a demo run saved in ``OUT/config.json`` (keys this version does not know are dropped)."""
        saved = Path(out) / "config.json"
        if not saved.exists():
            raise FileNotFoundError(f"{saved} not found: run `prophrl demo --out {out}` first")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(saved.read_text()).items() if k in known})

    @classmethod
    def table10(cls, **kw: Any) -> DemoConfig:
        """The whole comparison in the form of the paper's Table 10: 3 seeds, FA-GRPO with and without FlowScale, in
        the simulator and inside Prophet (``--table10``; ``kw`` override)."""
        base = dict(out="runs/table10", seeds=[0, 1, 2],
                    variants=["sim_fagrpo", "sim_fagrpo_flowscale", "wm_fagrpo_branch", "wm_fagrpo_branch_flowscale"])  # fmt: skip
        base.update(kw)
        return cls(**base)

    @classmethod
    def quick(cls, **kw: Any) -> DemoConfig:
        base = dict(out="runs/demo_quick", variants=["sim_fagrpo", "sim_fagrpo_flowscale"], sft_demos=3, sft_steps=30,
                    sft_batch=16, seeds=[0], rl_updates=2,
                    num_prompts=2, group_size=2, eval_seeds=4, eval_every=2, max_steps=40, image_size=32,
                    pretrain_tasks=["reach-v3"], wm_check_seeds=2, wm_check_every=1, wm_history_len=2,
                    wm_refresh_episodes=2, wm_refresh_steps=2, wm_refresh_reward_steps=10, wm_branch_segments=3,
                    wm_episodes_per_task=2, wm_target_episodes=2, wm_eval_episodes=2, wm_pretrain_steps=4,
                    wm_adapt_steps=2, wm_batch=2, reward_train_episodes=3, reward_heldout_episodes=2,
                    reward_steps=10, paired_states=4, wm_base="pretrain", threads=1, parallel=False,
                    # the plainest RL inside Prophet: the tests switch each option of the default on by itself
                    wm_reward_signal="success", wm_refresh_reward_data="twins", wm_noise_level=None)  # fmt: skip
        base.update(kw)
        return cls(**base)


def _trainer(root: str, name: str, **kw: Any):
    """A CPU trainer logging to ``<root>/tb/<name>`` (one TensorBoard directory for the whole demo)."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    return L.Trainer(accelerator="cpu", devices=1, logger=TensorBoardLogger(str(Path(root) / "tb"), name=name),
                     enable_checkpointing=False, enable_model_summary=False, **kw)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------------------------
def stage_data(cfg: DemoConfig) -> dict[str, str]:
    """Target-task SFT demos (seeds 0..N-1, low noise)."""
    from lightning_prophrl.datamodules.metaworld_gen import generate_metaworld

    out = Path(cfg.out) / "data"
    paths = {"sft": str(out / "target_sft")}
    if not is_done(Path(paths["sft"])):
        s = generate_metaworld([cfg.target_task], cfg.sft_demos, paths["sft"], noise=cfg.sft_noise,
                               size=cfg.image_size, camera=cfg.camera, max_steps=cfg.max_steps, seed=0, per_shard=5)  # fmt: skip
        mark_done(Path(paths["sft"]), s)
    return paths


def build_policy(cfg: DemoConfig):
    from lightning_prophrl.envs.instructions import instruction_for
    from lightning_prophrl.models.policy import FlowMatchingPolicy

    return FlowMatchingPolicy(action_dim=len(POLICY_DIMS), chunk_len=cfg.chunk_len, state_dim=4,
                              instructions=[instruction_for(cfg.target_task)], cond_dim=128, width=64, depth=2,
                              num_heads=4, cnn_channels=(16, 32, 64, 64), num_steps=10, noise_level=0.7)  # fmt: skip


def stage_sft(cfg: DemoConfig, data: dict[str, str], seed: int) -> str:
    """Behaviour cloning from the few target demos; returns the checkpoint path."""
    import lightning as L

    from lightning_prophrl.datamodules.robot import PolicyDataModule
    from lightning_prophrl.modules import PolicySFTModule

    out = Path(cfg.out) / "sft" / f"seed{seed}"
    ckpt = out / "sft.ckpt"
    if is_done(out):
        return str(ckpt)
    L.seed_everything(seed, workers=True)
    dm = PolicyDataModule([data["sft"]], chunk_len=cfg.chunk_len, action_dims=POLICY_DIMS, state_dim=4,
                          image_size=cfg.image_size, batch_size=cfg.sft_batch,
                          samples_per_epoch=cfg.sft_batch * min(cfg.sft_steps, 500), seed=seed)  # fmt: skip
    module = PolicySFTModule(
        build_policy(cfg), optimizer=lambda p: torch.optim.Adam(p, lr=3e-4), shift_pad=4, action_dims=POLICY_DIMS
    )
    trainer = _trainer(cfg.out, f"sft_seed{seed}", max_steps=cfg.sft_steps, max_epochs=-1, log_every_n_steps=25)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    trainer.save_checkpoint(ckpt)
    mark_done(out, {"seconds": time.perf_counter() - t0, "steps": cfg.sft_steps})
    return str(ckpt)


def stage_world_model(cfg: DemoConfig) -> tuple[str, str, dict[str, Any] | None]:
    """The Prophet of the ``wm_*`` variants: ``cfg.wm_model_dir`` when given, else pretrained on the pretraining tasks
    and LoRA-adapted to ``wm_target_episodes`` noisy target episodes (seed 0), with its open-loop report (model vs
    copy-last vs shuffled actions) on held-out target episodes.

    One Prophet frame is ``chunk_len / wm_chunk_len`` simulator steps, so one policy chunk is exactly one segment
    (``WorldModelEnv``'s chunk mapping rule) and the policy sees every imagined frame, as it sees every real one.

    Returns:
        ``(model_dir, stats_dir, report)``; the report is None for a given model.
    """
    if cfg.wm_model_dir:
        return cfg.wm_model_dir, cfg.wm_stats_dir or cfg.wm_model_dir, None
    if cfg.wm_base == "shipped":
        return adapt_shipped(cfg)
    from lightning_prophrl.studies.prophet import (
        adapt_prophet,
        generate_wm_data,
        pretrain_prophet,
        prophet_config,
        world_model_report,
    )

    if cfg.wm_chunk_len < 1 or cfg.chunk_len % cfg.wm_chunk_len:
        raise ValueError(f"`wm_chunk_len`={cfg.wm_chunk_len} must divide the policy's `chunk_len`={cfg.chunk_len}")
    root = Path(cfg.out) / "world_model"
    data = generate_wm_data(root / "data", cfg.pretrain_tasks, cfg.target_task, cfg.wm_episodes_per_task,
                            cfg.wm_target_episodes, cfg.wm_eval_episodes, cfg.image_size, max_steps=cfg.max_steps,
                            camera=cfg.camera)  # fmt: skip
    stride = cfg.chunk_len // cfg.wm_chunk_len
    kw = dict(seed=0, stride=stride, chunk_len=cfg.wm_chunk_len, history_len=cfg.wm_history_len,
              image_size=cfg.image_size, batch_size=cfg.wm_batch, log_dir=Path(cfg.out) / "tb",
              model_config=prophet_config(cfg.image_size, cfg.wm_chunk_len, cfg.wm_history_len))  # fmt: skip
    pretrained = pretrain_prophet(data["pretrain"], root / "pretrain", cfg.wm_pretrain_steps, **kw)
    adapted = adapt_prophet(pretrained, data["target"], root / "adapt_lora", cfg.wm_adapt_steps, "lora", **kw)
    segments = -(-cfg.max_steps // (stride * cfg.wm_chunk_len))
    report = world_model_report(adapted, data["eval"], root / "report", cfg.wm_eval_episodes, segments,
                                cfg.wm_num_steps, 0, stride, cfg.image_size)  # fmt: skip
    return adapted, adapted, report


def adapt_shipped(cfg: DemoConfig) -> tuple[str, str, dict[str, Any]]:
    """The default world model: the shipped pretrained Prophet (``lightning_prophrl.assets``; the target task was held
    out of its pretraining) LoRA-adapted for ``wm_adapt_steps`` steps to ``wm_target_episodes`` noisy-expert target
    episodes, with its open-loop report on ``wm_eval_episodes`` held-out target episodes (the data, adaptation and
    report of :mod:`lightning_prophrl.studies.heldout`, seed 0, under ``OUT/world_model``).

    Returns:
        ``(model_dir, stats_dir, report)``: the adapted model carries the shipped action statistics.
    """
    from lightning_prophrl.assets import shipped_prophet_path
    from lightning_prophrl.studies.heldout import adapt, heldout_data
    from lightning_prophrl.studies.prophet import world_model_report

    root = Path(cfg.out) / "world_model"
    data = heldout_data(cfg.target_task, root / "data", adapt_episodes=cfg.wm_target_episodes,
                        eval_episodes=cfg.wm_eval_episodes, cf_episodes=1, size=cfg.image_size, camera=cfg.camera,
                        max_steps=cfg.max_steps, counterfactual=False)  # fmt: skip
    adapted = adapt(shipped_prophet_path(), data["adapt"], root / "adapt_lora", cfg.wm_adapt_steps, "lora", seed=0,
                    batch_size=cfg.wm_batch)  # fmt: skip
    stride = cfg.chunk_len // cfg.wm_chunk_len
    report = world_model_report(adapted, data["eval"], root / "report", cfg.wm_eval_episodes, cfg.max_queries,
                                cfg.wm_num_steps, 0, stride, cfg.image_size)  # fmt: skip
    return adapted, adapted, report


def stage_reward(cfg: DemoConfig, model_dir: str, stats_dir: str) -> dict[str, Any]:
    """Real-only and domain-bridged success classifiers and the success head, scored against the simulator on held-out
    real episodes and their Prophet-imagined twins (:func:`lightning_prophrl.studies.reward.reward_study`, cached)."""
    from lightning_prophrl.studies.reward import RewardStudyConfig, reward_study

    rcfg = RewardStudyConfig(model_dir=model_dir, out=str(Path(cfg.out) / "reward"), task=cfg.target_task,
                             train_episodes=cfg.reward_train_episodes, heldout_episodes=cfg.reward_heldout_episodes,
                             image_size=cfg.image_size, camera=cfg.camera, max_steps=cfg.max_steps,
                             stride=cfg.chunk_len // cfg.wm_chunk_len, stats_from=stats_dir,
                             num_steps=cfg.wm_num_steps, classifier_steps=cfg.reward_steps,
                             classifier_batch_size=min(64, 16 * cfg.reward_train_episodes),
                             threads=cfg.threads)  # fmt: skip
    return reward_study(rcfg)


def reward_summary(reward: dict[str, Any]) -> str:
    """One line per reward model: precision / recall / kappa against the simulator, real and imagined episodes."""
    parts = []
    for name, by_split in reward["reports"].items():
        cells = [f"{split} P {r['precision']:.2f} / R {r['recall']:.2f} / kappa {r['kappa']:.2f}"
                 for split, r in by_split.items()]  # fmt: skip
        parts.append(f"{name} classifier: " + "; ".join(cells))
    head = reward.get("success_head")
    if head is not None:
        parts.append(f"success head (the RL reward): imagined P {head['precision']:.2f} / R {head['recall']:.2f} / "
                     f"kappa {head['kappa']:.2f}")  # fmt: skip
    return "Reward models vs the simulator on held-out episodes: " + " | ".join(parts) + "."


def wm_success_scoring(cfg: DemoConfig, classifier_dir: str | Path | None = None) -> dict[str, Any]:
    """``WorldModelEnv`` success arguments for ``cfg.wm_reward`` (the bridged classifier comes from the reward stage,
    or from ``classifier_dir``, e.g. a refresh's)."""
    if cfg.wm_reward == "success_head":
        return {"success_threshold": 0.5, "success_k": 2}
    if cfg.wm_reward != "bridged":
        raise ValueError(f"`wm_reward` must be 'bridged' or 'success_head', got {cfg.wm_reward!r}")
    from lightning_prophrl.envs.world_model import classifier_scorer
    from lightning_prophrl.studies.reward import load_classifier

    stage = Path(classifier_dir) if classifier_dir else Path(cfg.out) / "reward" / "classifier" / "bridged"
    if not is_done(stage):
        raise FileNotFoundError(f"--wm-reward bridged needs the reward stage's classifier at {stage} (run the demo)")
    return {"success_scorer": classifier_scorer(load_classifier(stage)), "success_threshold": 0.9, "success_k": 3}


def stage_refresh(cfg: DemoConfig, sft_ckpt: str, seed: int, out: Path) -> dict[str, Any]:
    """World-model refresh on the SFT policy's own behaviour (cached under ``out``): ``wm_refresh_episodes`` real SDE
    rollouts of the policy (seeds ``6000 + 10000 * seed`` on, disjoint from the gate's, the guard's and the evaluation's)
    written as shards normalized with Prophet's statistics, then ``wm_refresh_steps`` LoRA steps on the mixture of
    them (weight ``wm_refresh_weight``) and the target data Prophet was adapted on.

    With ``wm_refresh_reward`` (and the bridged reward), the bridged classifier is retrained on the reward stage's data
    plus the rollouts and their imagined twins by the refreshed Prophet, all labelled by the simulator: a classifier
    that only saw noisy-expert episodes may take the policy's own failures for successes.

    Returns:
        the stage record: ``model_dir`` of the refreshed Prophet, ``classifier_dir`` (None when not retrained), the
        rollouts' ``success_rate`` and ``env_steps`` (real interactions), and the fine-tune's summary.
    """
    from lightning_prophrl.envs.rollout import ActionDecoder
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.modules.fa_grpo import load_policy_weights
    from lightning_prophrl.studies.prophet import adapt_prophet

    if is_done(out):
        return _with_branch_classifier(cfg, json.loads((out / "done.json").read_text()), out)
    if not cfg.wm_target_data:
        raise ValueError(f"variant {REFRESHED} with --wm-model-dir needs --wm-target-data (the shards Prophet was "
                         "adapted on), so that the refresh mixes old and new data")  # fmt: skip
    counts = {k: getattr(cfg, k) for k in ("wm_refresh_episodes", "wm_refresh_steps", "wm_refresh_reward_steps")}
    if not 0.0 < cfg.wm_refresh_weight < 1.0 or min(counts.values()) < 1:
        raise ValueError(f"`wm_refresh_weight` must lie in (0, 1) and {list(counts)} be >= 1, got "
                         f"{cfg.wm_refresh_weight}, {list(counts.values())}")  # fmt: skip
    policy = build_policy(cfg)
    hp = load_policy_weights(policy, sft_ckpt)
    decoder = ActionDecoder(hp["action_stats"], hp["action_dims"], "metaworld")
    first = 6000 + 10000 * seed
    data = refresh_rollouts(cfg, sft_ckpt, seed, out, cfg.wm_model_dir)
    rollouts = json.loads((data / "done.json").read_text())
    config = Prophet.load_config(cfg.wm_model_dir)  # the refresh keeps the model's segment and memory lengths
    mixture = [{"path": cfg.wm_target_data, "weight": 1.0 - cfg.wm_refresh_weight},
               {"path": str(data), "weight": cfg.wm_refresh_weight}]  # fmt: skip
    branches = None
    if cfg.wm_refresh_branch_starts:  # half the refresh weight goes to the real branches from the rollouts' states
        branches = refresh_branches(cfg, policy, decoder, data, int(config["history_length"]), seed, out / "branches")
        mixture[1]["weight"] = cfg.wm_refresh_weight / 2
        mixture.append({"path": str(out / "branches"), "weight": cfg.wm_refresh_weight / 2})
    t0 = time.perf_counter()
    model_dir = adapt_prophet(cfg.wm_model_dir, mixture, out / "prophet", cfg.wm_refresh_steps, "lora", seed=seed,
                              stride=cfg.chunk_len // cfg.wm_chunk_len, chunk_len=int(config["action_chunk_length"]),
                              history_len=int(config["history_length"]), image_size=cfg.image_size,
                              batch_size=cfg.wm_batch, log_dir=Path(cfg.out) / "tb")  # fmt: skip
    # keep the model's own action statistics (adapt_prophet copied the mixture's first dataset's)
    shutil.copy(Path(cfg.wm_model_dir) / "stats.json", Path(model_dir) / "stats.json")
    classifier_dir = None
    if cfg.wm_refresh_reward and cfg.wm_reward == "bridged" and cfg.wm_refresh_reward_data == "twins":
        classifier_dir = refresh_classifier(cfg, model_dir, data, out)
    info = {"model_dir": model_dir, "classifier_dir": classifier_dir, "episodes": rollouts["episodes"],
            "success_rate": rollouts["success_rate"],
            "env_steps": rollouts["env_steps"] + (branches or {}).get("env_steps", 0), "branches": branches,
            "seeds": [first, first + cfg.wm_refresh_episodes],
            "steps": cfg.wm_refresh_steps, "weight": cfg.wm_refresh_weight, "target_data": cfg.wm_target_data,
            "seconds": time.perf_counter() - t0}  # fmt: skip
    mark_done(out, info)
    return _with_branch_classifier(cfg, info, out)


def refresh_rollouts(cfg: DemoConfig, sft_ckpt: str, seed: int, out: Path, stats_from: str) -> Path:
    """The refresh's real SFT-policy rollouts (``out/rollouts``, cached): ``wm_refresh_episodes`` SDE episodes from seeds
    ``6000 + 10000 * seed`` on, their actions normalized with the ``stats.json`` of ``stats_from`` (Prophet's). They
    need only the SFT policy, so with ``parallel`` the SFT process makes them while Prophet is adapted; a cached set
    normalized with other statistics is made again."""
    from lightning_prophrl.datamodules.metaworld_gen import generate_policy_rollouts
    from lightning_prophrl.envs.rollout import ActionDecoder
    from lightning_prophrl.modules.fa_grpo import load_policy_weights

    data = out / "rollouts"
    stats = (Path(stats_from) / "stats.json").read_text()
    if is_done(data) and (data / "stats.json").read_text() == stats:
        return data
    shutil.rmtree(data, ignore_errors=True)  # a half-written set from an interrupted run, or other statistics
    policy = build_policy(cfg)
    hp = load_policy_weights(policy, sft_ckpt)
    decoder = ActionDecoder(hp["action_stats"], hp["action_dims"], "metaworld")
    first = 6000 + 10000 * seed
    summary = generate_policy_rollouts(policy.eval(), decoder, cfg.target_task,
                                       range(first, first + cfg.wm_refresh_episodes), str(data), cfg.max_queries,
                                       size=cfg.image_size, camera=cfg.camera, max_steps=cfg.max_steps,
                                       noise_seed=seed, noise_level=cfg.wm_refresh_noise_level,
                                       stats_from=stats_from)  # fmt: skip
    mark_done(data, summary)
    return data


def branch_prompts(cfg: DemoConfig, rollouts: str | Path, history_len: int, **kw: Any) -> Any:
    """The branch starts of RL inside Prophet (``wm_fagrpo_branch``): every ``wm_branch_every``-th chunk boundary of the
    refresh ``rollouts`` before their first success and ``wm_branch_segments`` chunks before their end, with the
    recorded memory of a ``history_len`` Prophet; ``kw`` go to the ``PromptDataModule`` (not set up)."""
    from lightning_prophrl.datamodules.prompts import PromptDataModule

    kw = {"num_prompts": cfg.num_prompts, **kw}
    return PromptDataModule(datasets=[str(rollouts)], eval_fraction=0.0, image_size=cfg.image_size,
                            branch_every=cfg.wm_branch_every * cfg.chunk_len,
                            branch_margin=cfg.wm_branch_segments * cfg.chunk_len, history_len=history_len,
                            history_stride=cfg.chunk_len // cfg.wm_chunk_len, **kw)  # fmt: skip


def refresh_branches(cfg: DemoConfig, policy: Any, decoder: Any, rollouts: Path, history_len: int, seed: int,
                     out: Path) -> dict[str, Any]:  # fmt: skip
    """``wm_refresh_branch_starts`` branch starts of the refresh ``rollouts`` (drawn at random with ``seed``, so that
    evenly spaced measurements such as ``studies.branches`` mostly see other starts), each branched
    ``wm_refresh_branch_group`` times in the real simulator (``generate_branch_rollouts``; cached under ``out``)."""
    from lightning_prophrl.datamodules.metaworld_gen import generate_branch_rollouts

    if is_done(out):
        return json.loads((out / "done.json").read_text())
    shutil.rmtree(out, ignore_errors=True)  # a half-written set from an interrupted run
    prompts = branch_prompts(cfg, rollouts, history_len)
    prompts.setup()
    n = len(prompts.train_prompts)
    pick = np.sort(np.random.default_rng([seed, 7]).choice(n, min(cfg.wm_refresh_branch_starts, n), replace=False))
    summary = generate_branch_rollouts(policy.eval(), decoder, prompts, pick.tolist(), str(out),
                                       cfg.wm_refresh_branch_group, cfg.wm_branch_segments, size=cfg.image_size,
                                       camera=cfg.camera, max_steps=cfg.max_steps, noise_seed=seed,
                                       noise_level=cfg.wm_noise_level, stats_from=cfg.wm_model_dir)  # fmt: skip
    summary["start_indices"] = pick.tolist()
    mark_done(out, summary)
    return summary


def onpolicy_starts(cfg: DemoConfig, decoder: Any, seed: int, out: Path) -> Any:
    """``callbacks.OnPolicyBranchStarts`` for ``wm_onpolicy_starts_every``: after update ``u``, the current policy's
    ``wm_onpolicy_starts_episodes`` real SDE rollouts (the refresh's noise; seeds continuing the refresh's, a new block
    per period) are written to ``out/onpolicy_starts/update<u>`` and become the branch starts."""
    from lightning_prophrl.callbacks import OnPolicyBranchStarts
    from lightning_prophrl.datamodules.metaworld_gen import generate_policy_rollouts

    every, n = cfg.wm_onpolicy_starts_every, cfg.wm_onpolicy_starts_episodes

    def collect(policy: Any, update: int) -> tuple[str, dict[str, Any]]:
        first = 6000 + 10000 * seed + cfg.wm_refresh_episodes + (update // every - 1) * n
        shards = out / "onpolicy_starts" / f"update{update}"
        shutil.rmtree(shards, ignore_errors=True)
        summary = generate_policy_rollouts(policy, decoder, cfg.target_task, range(first, first + n), str(shards),
                                           cfg.max_queries, size=cfg.image_size, camera=cfg.camera,
                                           max_steps=cfg.max_steps, noise_seed=seed + update,
                                           noise_level=cfg.wm_refresh_noise_level, stats_from=cfg.wm_model_dir,
                                           progress=False)  # fmt: skip
        return str(shards), {**summary, "seeds": [first, first + n]}

    return OnPolicyBranchStarts(collect, every, history_path=str(out / "onpolicy_starts.jsonl"))


def _with_branch_classifier(cfg: DemoConfig, info: dict[str, Any], out: Path) -> dict[str, Any]:
    """With ``wm_refresh_reward_data="branches"``, the refresh's classifier is the branch-replay one (its own cached
    stages under ``out``, so it can be added to a refresh made without it)."""
    if not (cfg.wm_refresh_reward and cfg.wm_reward == "bridged" and cfg.wm_refresh_reward_data == "branches"):
        return info
    return {**info, "classifier_dir": branch_classifier(cfg, info["model_dir"], out / "rollouts", out)}


def branch_classifier(cfg: DemoConfig, model_dir: str, rollouts: Path, out: Path) -> str:
    """The bridged classifier retrained (``wm_refresh_reward_steps``) on the refresh ``rollouts``' real frames and on
    their imagined branch replays by the refreshed Prophet ``model_dir`` (a start every
    ``wm_refresh_reward_branch_every`` chunks, ``wm_branch_segments`` chunks long, labelled with the recorded frames'
    success; ``studies.reward.imagine_branch_dataset``), equal weights."""
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.studies.reward import imagine_branch_dataset, stride_dataset, train_classifier

    stride = cfg.chunk_len // cfg.wm_chunk_len
    stride_dataset(
        rollouts, out / "rollouts_strided", stride, int(Prophet.load_config(model_dir)["action_chunk_length"])
    )
    imagine_branch_dataset(model_dir, rollouts, out / "rollouts_branches", cfg.target_task, cfg.wm_branch_segments,
                           cfg.chunk_len, cfg.wm_refresh_reward_branch_every * cfg.chunk_len, cfg.image_size,
                           cfg.camera, cfg.wm_num_steps)  # fmt: skip
    datasets = [str(out / "rollouts_strided"), str(out / "rollouts_branches")]
    train_classifier(datasets, out / "classifier_branches", [1.0, 1.0], cfg.wm_refresh_reward_steps, 0,
                     min(64, 16 * cfg.reward_train_episodes), cfg.image_size, Path(cfg.out) / "tb")  # fmt: skip
    return str(out / "classifier_branches")


def refresh_classifier(cfg: DemoConfig, model_dir: str, rollouts: Path, out: Path) -> str:
    """The bridged classifier retrained (``wm_refresh_reward_steps``, the reward stage's batch) on the reward stage's
    real and imagined training episodes plus the refresh ``rollouts`` and their imagined twins by the refreshed
    Prophet ``model_dir``, equal weights."""
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.studies.reward import imagine_dataset, stride_dataset, train_classifier

    stride = cfg.chunk_len // cfg.wm_chunk_len
    chunk = int(Prophet.load_config(model_dir)["action_chunk_length"])
    reward_data = Path(cfg.out) / "reward" / "data"
    old = [reward_data / "real_train_strided", reward_data / "imagined_train"]
    if not all(is_done(d) for d in old):
        raise FileNotFoundError(f"the classifier refresh needs the reward stage's training data {old} (run the demo)")
    stride_dataset(rollouts, out / "rollouts_strided", stride, chunk)
    imagine_dataset(model_dir, rollouts, out / "rollouts_imagined", stride, cfg.wm_num_steps, stats_from=model_dir)
    datasets = [*map(str, old), str(out / "rollouts_strided"), str(out / "rollouts_imagined")]
    train_classifier(datasets, out / "classifier", [1.0] * 4, cfg.wm_refresh_reward_steps, 0,
                     min(64, 16 * cfg.reward_train_episodes), cfg.image_size, Path(cfg.out) / "tb")  # fmt: skip
    return str(out / "classifier")


def stage_rl_sim(cfg: DemoConfig, sft_ckpt: str, seed: int, variant: str) -> dict[str, Any]:
    """FA-GRPO variant in the real simulator for ``rl_updates`` updates; evaluates every ``eval_every`` updates."""
    import lightning as L

    from lightning_prophrl.callbacks import SimEvalCallback
    from lightning_prophrl.datamodules.prompts import PromptDataModule
    from lightning_prophrl.envs.metaworld import MetaWorldEnv
    from lightning_prophrl.modules import FAGRPOModule

    loss, flowscale, _ = VARIANTS[variant]
    out = Path(cfg.out) / "rl" / variant / f"seed{seed}"
    if is_done(out):
        return json.loads((out / "done.json").read_text())
    L.seed_everything(seed, workers=True)
    env = MetaWorldEnv(cfg.target_task, num_prompts=cfg.num_prompts, group_size=cfg.group_size,
                       image_size=cfg.image_size, max_steps=cfg.max_steps, camera=cfg.camera)  # fmt: skip
    module = FAGRPOModule(build_policy(cfg), env, group_size=cfg.group_size, max_queries=cfg.max_queries,
                          sft_checkpoint=sft_ckpt, loss=loss, flowscale=flowscale, seed=seed,
                          optimizer=lambda p: torch.optim.Adam(p, lr=cfg.lr))  # fmt: skip
    prompts = PromptDataModule(tasks=[cfg.target_task], train_seeds=(2000 + 10000 * seed, 12000 + 10000 * seed),
                               eval_seeds=(1000, 1000 + cfg.eval_seeds), num_prompts=cfg.num_prompts,
                               updates_per_epoch=cfg.rl_updates, seed=seed)  # fmt: skip
    history = out / "eval.jsonl"
    history.unlink(missing_ok=True)
    sim_eval = SimEvalCallback(cfg.target_task, seeds=list(range(1000, 1000 + cfg.eval_seeds)),
                               every_n_steps=cfg.eval_every, max_queries=cfg.max_queries, image_size=cfg.image_size,
                               camera=cfg.camera, max_steps=cfg.max_steps, history_path=str(history))  # fmt: skip
    trainer = _trainer(cfg.out, f"{variant}_seed{seed}", max_epochs=1, callbacks=[sim_eval], log_every_n_steps=1)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=prompts)
    trainer.save_checkpoint(out / "policy.ckpt")
    env.close()
    rows = [json.loads(line) for line in history.read_text().splitlines()]
    info = {"variant": variant, "seed": seed, "updates": module.updates, "train_env_steps": module.env_steps_total,
            "train_episodes": module.episodes_total, "seconds": time.perf_counter() - t0, "eval": rows}  # fmt: skip
    mark_done(out, info)
    return info


def run_name(cfg: DemoConfig, variant: str) -> str:
    """A run's directory and table row: world-model runs with a non-default reward say so (they live beside the
    default ones)."""
    if VARIANTS[variant][2] != "wm":
        return variant
    name = variant if cfg.wm_reward == "bridged" else f"{variant}-{cfg.wm_reward}"
    name += "-graded" if cfg.wm_reward_signal == "graded" else ""
    name += "-brclf" if cfg.wm_refresh_reward_data == "branches" and variant in REFRESHED else ""
    name += f"-{refresh_name(cfg)}" if variant in REFRESHED and refresh_name(cfg) != "refresh" else ""
    name += "" if cfg.wm_noise_level is None else f"-noise{cfg.wm_noise_level:g}"
    name += "" if cfg.wm_group_size is None else f"-g{cfg.wm_group_size}"
    name += "" if cfg.wm_draws == 1 else f"-draws{cfg.wm_draws}{cfg.wm_draws_reduce}"
    onpolicy = cfg.wm_onpolicy_starts_every and variant in BRANCHED
    return name + (f"-onpolicy{cfg.wm_onpolicy_starts_every}x{cfg.wm_onpolicy_starts_episodes}" if onpolicy else "")


def wm_reward_model(cfg: DemoConfig) -> Any:
    """The FA-GRPO reward inside Prophet: 0/1 imagined success (None: the env's), the graded score, or either one
    reduced over the noise draws (``wm_draws > 1``)."""
    from lightning_prophrl.envs.world_model import draws_reward, graded_reward

    if cfg.wm_draws > 1:
        return partial(draws_reward, signal=cfg.wm_reward_signal, reduce=cfg.wm_draws_reduce,
                       floor=cfg.wm_graded_floor)  # fmt: skip
    return partial(graded_reward, floor=cfg.wm_graded_floor) if cfg.wm_reward_signal == "graded" else None


def refresh_name(cfg: DemoConfig) -> str:
    """The refresh's cache directory name: ``refresh``, suffixed with a non-default rollout noise level (like every
    other stage, the refresh's episode and step counts are not in its name: change ``--out`` to change them)."""
    name = "refresh" + ("" if cfg.wm_refresh_noise_level is None else f"-noise{cfg.wm_refresh_noise_level:g}")
    if cfg.wm_refresh_branch_starts:  # the real branches' noise is the RL noise
        noise = "" if cfg.wm_noise_level is None else f"-noise{cfg.wm_noise_level:g}"
        name += f"-br{cfg.wm_refresh_branch_starts}x{cfg.wm_refresh_branch_group}{noise}"
    return name


def stage_rl_wm(cfg: DemoConfig, sft_ckpt: str, seed: int, variant: str) -> dict[str, Any]:
    """FA-GRPO variant inside a frozen Prophet, with the closed-loop agreement gate before RL, the imagination guard
    (imagined vs real success, early stop) during RL, a KL anchor to the SFT policy, and real-simulator evaluation.
    Real interactions = the guard's checks + the gate + the refresh rollouts of ``*_refresh`` variants (evaluation
    episodes are measurement only)."""
    import lightning as L

    from lightning_prophrl.callbacks import ImaginationGuardCallback, SimEvalCallback
    from lightning_prophrl.datamodules.prompts import PromptDataModule
    from lightning_prophrl.datamodules.shards import load_stats
    from lightning_prophrl.envs.agreement import branch_agreement, closed_loop_agreement
    from lightning_prophrl.envs.metaworld import MetaWorldEnv
    from lightning_prophrl.envs.poses import CommandedPoses
    from lightning_prophrl.envs.rollout import ActionDecoder
    from lightning_prophrl.envs.world_model import WorldModelEnv
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.modules import FAGRPOModule

    if not cfg.wm_model_dir or not cfg.wm_stats_dir:
        raise ValueError(f"variant {variant!r} needs --wm-model-dir and --wm-stats-dir (a saved Prophet and its data)")
    loss, flowscale, _ = VARIANTS[variant]
    # runs with the success-head reward live beside the default (bridged) ones
    name = run_name(cfg, variant)
    out = Path(cfg.out) / "rl" / name / f"seed{seed}"
    if is_done(out):
        return json.loads((out / "done.json").read_text())
    # the refresh does not depend on the reward signal: runs that differ only in it share one
    refresh_dir = Path(cfg.out) / "rl" / refresh_owner(variant) / f"seed{seed}" / refresh_name(cfg)
    refresh = stage_refresh(cfg, sft_ckpt, seed, refresh_dir) if variant in REFRESHED else None
    branch = variant in BRANCHED
    L.seed_everything(seed, workers=True)
    prophet = Prophet.from_pretrained(refresh["model_dir"] if refresh else cfg.wm_model_dir)
    wm_stats = load_stats(cfg.wm_stats_dir)
    reset_env = MetaWorldEnv(cfg.target_task, num_prompts=cfg.num_prompts, group_size=1, image_size=cfg.image_size,
                             max_steps=cfg.max_steps, camera=cfg.camera)  # fmt: skip
    # commanded end-effector targets for the action-frame stream (the rule of the training data's target_poses.npy)
    poses = (
        CommandedPoses.metaworld(cfg.target_task, cfg.image_size, cfg.camera)
        if prophet.config.use_action_frames
        else None
    )
    scoring = wm_success_scoring(cfg, (refresh or {}).get("classifier_dir"))
    group = cfg.wm_group_size or cfg.group_size
    env = WorldModelEnv(prophet, wm_stats, num_prompts=cfg.num_prompts, group_size=group,
                        max_segments=cfg.wm_branch_segments if branch else cfg.max_queries, num_steps=cfg.wm_num_steps,
                        seed=seed, initial_env=reset_env, poses=poses, draws=cfg.wm_draws, **scoring)  # fmt: skip
    module = FAGRPOModule(build_policy(cfg), env, group_size=group, max_queries=cfg.max_queries,
                          noise_level=cfg.wm_noise_level, sft_checkpoint=sft_ckpt, action_target="unified", loss=loss,
                          flowscale=flowscale,
                          beta_kl=cfg.wm_beta_kl, seed=seed, optimizer=lambda p: torch.optim.Adam(p, lr=cfg.lr),
                          reward_model=wm_reward_model(cfg))  # fmt: skip
    # 1. closed-loop agreement gate of the SFT policy (before RL)
    n_gate = cfg.wm_check_seeds
    # the real gate episodes run to the cap so that the reward model's persistence rule can also judge them
    gate_real = MetaWorldEnv(cfg.target_task, num_prompts=n_gate, group_size=1, image_size=cfg.image_size,
                             max_steps=cfg.max_steps, camera=cfg.camera, stop_at_success=False)  # fmt: skip
    gate_wm = WorldModelEnv(prophet, wm_stats, num_prompts=n_gate, group_size=1, max_segments=cfg.max_queries,
                            num_steps=cfg.wm_num_steps, poses=poses, **scoring)  # fmt: skip
    dec = module.decoder
    gate = closed_loop_agreement(module.policy, gate_real, gate_wm,
                                 [{"task": cfg.target_task, "seed": s} for s in range(5000, 5000 + n_gate)],
                                 ActionDecoder(dec.stats, dec.action_dims, "metaworld"), dec, cfg.max_queries,
                                 reward_scorer=scoring.get("success_scorer"),
                                 reward_threshold=scoring["success_threshold"], reward_k=scoring["success_k"])  # fmt: skip
    gate_real.close()
    # 2. RL inside the world model with the guard, evaluated in the real simulator
    if branch:  # every prompt is a real state of the refresh rollouts (the real eval seeds are the callback's)
        prompts = branch_prompts(cfg, refresh_dir / "rollouts", int(prophet.config.history_length),
                                 updates_per_epoch=cfg.wm_onpolicy_starts_every or cfg.rl_updates,
                                 seed=seed)  # fmt: skip
        # can branches be trusted? replay the recorded actions from real states, and the policy's branches
        prompts.setup()
        branch_wm = WorldModelEnv(prophet, wm_stats, num_prompts=n_gate, group_size=1,
                                  max_segments=cfg.wm_branch_segments, num_steps=cfg.wm_num_steps, poses=poses,
                                  **scoring)  # fmt: skip
        branch_gate = branch_agreement(branch_wm, prompts, cfg.chunk_len, max_starts=2 * n_gate,
                                       policy=module.policy, decoder=dec, noise_seed=seed)  # fmt: skip
    else:
        prompts = PromptDataModule(tasks=[cfg.target_task], train_seeds=(2000 + 10000 * seed, 12000 + 10000 * seed),
                                   eval_seeds=(1000, 1000 + cfg.eval_seeds), num_prompts=cfg.num_prompts,
                                   updates_per_epoch=cfg.rl_updates, seed=seed)  # fmt: skip
        branch_gate = None
    history = out / "eval.jsonl"
    history.unlink(missing_ok=True)
    (out / "guard.jsonl").unlink(missing_ok=True)
    sim_eval = SimEvalCallback(cfg.target_task, seeds=list(range(1000, 1000 + cfg.eval_seeds)),
                               every_n_steps=cfg.eval_every, max_queries=cfg.max_queries, image_size=cfg.image_size,
                               camera=cfg.camera, max_steps=cfg.max_steps, history_path=str(history))  # fmt: skip
    guard = ImaginationGuardCallback(cfg.target_task, check_seeds=list(range(4000, 4000 + cfg.wm_check_seeds)),
                                     every_n_updates=cfg.wm_check_every, image_size=cfg.image_size,
                                     camera=cfg.camera, max_steps=cfg.max_steps,
                                     history_path=str(out / "guard.jsonl"), max_segments=cfg.max_queries)  # fmt: skip
    onpolicy = None
    if branch and cfg.wm_onpolicy_starts_every:  # one epoch per period; every epoch samples the newest starts
        (out / "onpolicy_starts.jsonl").unlink(missing_ok=True)
        onpolicy = onpolicy_starts(cfg, ActionDecoder(dec.stats, dec.action_dims, "metaworld"), seed, out)
    epochs = cfg.rl_updates // cfg.wm_onpolicy_starts_every if onpolicy else 1
    trainer = _trainer(cfg.out, f"{name}_seed{seed}", max_epochs=epochs,
                       reload_dataloaders_every_n_epochs=int(bool(onpolicy)), log_every_n_steps=1,
                       callbacks=[sim_eval, guard] + ([onpolicy] if onpolicy else []))  # fmt: skip
    t0 = time.perf_counter()
    n_starts = len(prompts.train_prompts)  # the refresh rollouts' (on-policy starts replace them during RL)
    trainer.fit(module, datamodule=prompts)
    trainer.save_checkpoint(out / "policy.ckpt")
    reset_env.close()
    rows = [json.loads(line) for line in history.read_text().splitlines()]
    if not rows or rows[-1]["step"] != module.updates:  # stopped early by the guard: evaluate the final policy
        sim_eval.evaluate(trainer, module)
        rows = [json.loads(line) for line in history.read_text().splitlines()]
    info = {"variant": variant, "seed": seed, "updates": module.updates, "train_env_steps": 0, "wm_reward": cfg.wm_reward,
            "wm_reward_signal": cfg.wm_reward_signal, "wm_graded_floor": cfg.wm_graded_floor,
            "real_interactions": gate["real_env_steps"] + guard.real_steps_total + (refresh or {}).get("env_steps", 0)
            + (onpolicy.real_steps_total if onpolicy else 0),
            "onpolicy_starts": onpolicy.history if onpolicy else None,
            "refresh": refresh, "gate": gate,
            "branch": {"starts": n_starts, "segments": cfg.wm_branch_segments,
                       "agreement": branch_gate} if branch else None,
            "guard": guard.history, "imagined_episodes": module.episodes_total,
            "seconds": time.perf_counter() - t0, "eval": rows}  # fmt: skip
    mark_done(out, info)
    return info


# ---------------------------------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------------------------------
def updates_to_reach(rows: list[dict[str, Any]], level: float) -> int | None:
    return next((r["step"] for r in rows if r["success"] >= level), None)


def eval_at(rows: list[dict[str, Any]], updates: int) -> dict[str, Any]:
    """The last evaluation at or before ``updates`` (runs cached with a longer budget compare at the same one)."""
    kept = [r for r in rows if r["step"] <= updates]
    if not kept:
        raise ValueError(f"no evaluation at or before update {updates} in {rows}")
    return kept[-1]


def results_table(cfg: DemoConfig, results: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown table in the form of the paper's LIBERO simulator-vs-world-model table (mean +- std over seeds of
    held-out real success)."""
    sft = [r["eval"][0]["success"] for rs in results.values() for r in rs[:1]]
    sft_by_seed = {r["seed"]: r["eval"][0]["success"] for rs in results.values() for r in rs}
    lines = [f"| setting | real success ({cfg.eval_seeds} held-out states) | RL updates | updates to reach SFT+10pp "
             "| real interactions (train env steps) | seeds |", "|---|---|---|---|---|---|"]  # fmt: skip
    s = np.array(list(sft_by_seed.values()) or sft)
    lines.append(
        f"| SFT ({cfg.sft_demos} demos) | {s.mean():.3f} ± {s.std():.3f} | – | – | {cfg.sft_demos} demos | {len(s)} |"
    )
    for variant, rs in results.items():
        final = np.array([eval_at(r["eval"], cfg.rl_updates)["success"] for r in rs])
        reach = [updates_to_reach(r["eval"], sft_by_seed[r["seed"]] + 0.10) for r in rs]
        reach = [None if x is not None and x > cfg.rl_updates else x for x in reach]
        reach_s = ", ".join("–" if x is None else str(x) for x in reach)
        steps = np.mean([r.get("real_interactions", eval_at(r["eval"], cfg.rl_updates)["train_env_steps"]) for r in rs])
        ups = max(min(r["updates"], eval_at(r["eval"], cfg.rl_updates)["step"]) for r in rs)
        lines.append(
            f"| {variant} | {final.mean():.3f} ± {final.std():.3f} | {ups} | {reach_s} | {steps:,.0f} | {len(rs)} |"
        )
    return "\n".join(lines)


def gate_summary(results: dict[str, list[dict[str, Any]]]) -> str:
    """One line per world-model variant: the closed-loop agreement gate of each seed (imagined vs real outcomes of the
    SFT policy, kappa) and, where recorded, the reward model judging the real gate episodes."""
    lines = []
    for variant, rs in results.items():
        cells = []
        for r in rs:
            g = r.get("gate")
            if not g:
                continue
            n = g["episodes"]
            cell = (f"seed {r['seed']}: imagined {round(g['imagined_success'] * n)}/{n} vs real "
                    f"{round(g['real_success'] * n)}/{n}, kappa {g['kappa']:.2f}")  # fmt: skip
            rew = g.get("reward_on_real")
            if rew:
                cell += f"; reward model on the real episodes: kappa {rew['kappa']:.2f}, predicted {rew['predicted_rate']:.2f}"
            cells.append(cell)
        if cells:
            lines.append(f"Closed-loop gate, {variant} (SFT policy): " + " | ".join(cells) + ".")
        cells = []
        for r in rs:
            a = ((r.get("branch") or {}).get("agreement")) or {}
            if a:
                rep, pol = a["replay"], a.get("policy") or {}
                cells.append(f"seed {r['seed']}: replay imagined {rep['imagined_rate']:.2f} vs real "
                             f"{rep['real_rate']:.2f}, kappa {rep['kappa']:.2f}, graded-score AUC "
                             f"{_fmt(rep.get('score_auc'))}; policy branches imagined "
                             f"{pol.get('imagined_rate', 0):.2f}")  # fmt: skip
        if cells:
            lines.append(f"Branch agreement, {variant} ({a['starts']} real starts x {a['segments']} chunks, success "
                         "within the branch): " + " | ".join(cells) + ".")  # fmt: skip
    return "\n\n".join(lines)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def world_model_summary(report: dict[str, Any]) -> str:
    """One-paragraph open-loop summary of the demo's Prophet on held-out target episodes."""
    line = (f"World model (held-out target episodes, open loop under recorded actions, {report['episodes']} episodes x "
            f"{report['segments']} segments): PSNR {report['psnr']:.2f} dB vs copy-last {report['psnr_copy_last']:.2f}"
            f" vs shuffled actions {report['psnr_shuffled']:.2f}; flow EPE {report['flow_epe']:.3f} vs "
            f"{report['flow_epe_copy_last']:.3f} / {report['flow_epe_shuffled']:.3f}")  # fmt: skip
    if "success" in report:
        s = report["success"]
        rates = f"{s['real_rate']:.2f} / {s['imagined_rate']:.2f}"
        line += f"; success head kappa {s['kappa']:.2f} (real / imagined success rate {rates})"
    return line + "."


def paired_summary(cfg: DemoConfig, results: dict[str, list[dict[str, Any]]]) -> str:
    """The final policies of every run and their SFT policies on ``paired_states`` held-out states, paired state by
    state (cached under ``OUT/studies/evaluate``, like ``python -m lightning_prophrl.studies.evaluate``)."""
    from lightning_prophrl.studies.evaluate import evaluate_checkpoint, paired_table

    n = cfg.paired_states
    sft = {s: evaluate_checkpoint(cfg.out, "sft", s, n) for s in cfg.seeds}
    rows = {
        name: {r["seed"]: evaluate_checkpoint(cfg.out, name, r["seed"], n) for r in rs} for name, rs in results.items()
    }
    return (f"Paired on {n} held-out states (seeds 1000..{999 + n}, ODE, the same noise per state for every policy; "
            f"final policies):\n\n" + paired_table(rows, sft))  # fmt: skip


def plot_curves(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, rs in results.items():
        for i, r in enumerate(rs):
            xs = [e["step"] for e in r["eval"]]
            ys = [e["success"] for e in r["eval"]]
            ax.plot(xs, ys, marker="o", color=f"C{list(results).index(variant)}", alpha=0.8,
                    label=variant if i == 0 else None)  # fmt: skip
    ax.set_xlabel("RL updates")
    ax.set_ylabel("held-out real success")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def with_world_model(cfg: DemoConfig, model_dir: str, stats_dir: str, trained: bool) -> DemoConfig:
    """``cfg`` with the Prophet its ``wm_*`` variants use; when the demo trained it (``trained``), the refresh mixes in
    the target data it was adapted on."""
    cfg = replace(cfg, wm_model_dir=model_dir, wm_stats_dir=stats_dir)
    if trained and not cfg.wm_target_data:
        data = Path(cfg.out) / "world_model" / "data"
        cfg = replace(cfg, wm_target_data=str(data / ("adapt" if cfg.wm_base == "shipped" else "target_train")))
    return cfg


def needs_reward_stage(cfg: DemoConfig) -> bool:
    """Whether an RL reward reads the reward stage's classifier: a bridged-reward ``wm_*`` variant without a refresh,
    or a refresh whose classifier retrains on the reward stage's data (``wm_refresh_reward_data="twins"``); the
    default branch variants train their own branch-replay classifier in the refresh."""
    if cfg.wm_reward != "bridged":
        return False
    wm = [v for v in cfg.variants if VARIANTS[v][2] == "wm"]
    own = cfg.wm_refresh_reward and cfg.wm_refresh_reward_data == "branches"
    return any(v not in REFRESHED or not own for v in wm)


class StageClock:
    """Wall time (``time.perf_counter``) of the demo's stages, in the order they ran; a stage that ran more than once
    (one per seed) adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.t0 = time.perf_counter()

    @contextmanager
    def __call__(self, stage: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t

    def total(self) -> float:
        return time.perf_counter() - self.t0

    def summary(self) -> str:
        parts = [f"{k} {v:.0f} s" for k, v in self.seconds.items()]
        return f"Wall time by stage: {' | '.join(parts)} | total {self.total():.0f} s (cached stages take ~0 s)."


def _sft_worker(cfg_dict: dict[str, Any], data: dict[str, str], threads: int) -> None:
    """The SFT policies of every seed, their paired-state evaluation and, when the world model will be the adapted
    shipped Prophet (whose action statistics are the shipped ones), the refreshes' real rollouts: in a process of
    their own (``parallel``)."""
    torch.set_num_threads(threads)
    cfg = DemoConfig(**cfg_dict)
    owners = sorted({refresh_owner(v) for v in cfg.variants if v in REFRESHED})
    for seed in cfg.seeds:
        ckpt = stage_sft(cfg, data, seed)
        if cfg.paired_states:
            from lightning_prophrl.studies.evaluate import evaluate_checkpoint

            evaluate_checkpoint(cfg.out, "sft", seed, cfg.paired_states)
        if cfg.wm_base == "shipped" and not cfg.wm_model_dir:
            from lightning_prophrl.assets import shipped_prophet_path

            for owner in owners:
                refresh = Path(cfg.out) / "rl" / owner / f"seed{seed}" / refresh_name(cfg)
                refresh_rollouts(cfg, ckpt, seed, refresh, str(shipped_prophet_path()))


def start_sft_worker(cfg: DemoConfig, data: dict[str, str]) -> Any:
    """Start ``_sft_worker`` in a 'spawn' child process with half of ``cfg.threads`` (at least one)."""
    import multiprocessing as mp

    child = mp.get_context("spawn").Process(target=_sft_worker, args=(asdict(cfg), data, max(1, cfg.threads // 2)),
                                            name="prophrl-demo-sft")  # fmt: skip
    child.start()
    return child


def run(cfg: DemoConfig) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    clock = StageClock()
    with clock("data"):
        data = stage_data(cfg)
    wm_report = reward = None
    uses_wm = any(VARIANTS[v][2] == "wm" for v in cfg.variants)
    child = None
    if uses_wm and cfg.parallel and not all(is_done(out / "sft" / f"seed{s}") for s in cfg.seeds):
        child = start_sft_worker(cfg, data)  # SFT on one half of the threads while the world model takes the other
        torch.set_num_threads(max(1, cfg.threads // 2))
    try:
        if uses_wm:
            trains = not cfg.wm_model_dir
            with clock("world model (adapt + report)" + (", SFT in parallel" if child else "")):
                model_dir, stats_dir, wm_report = stage_world_model(cfg)
            cfg = with_world_model(cfg, model_dir, stats_dir, trains)
            if cfg.reward_report or needs_reward_stage(cfg):
                with clock("reward report"):
                    reward = stage_reward(cfg, model_dir, stats_dir)
    finally:
        if child is not None:
            with clock("wait for SFT"):
                child.join()
            torch.set_num_threads(cfg.threads)
    if child is not None and child.exitcode != 0:
        raise RuntimeError(f"the SFT process failed (exit code {child.exitcode}; its traceback is above); rerun the "
                           f"demo with the same --out to resume, or pass --no-parallel")  # fmt: skip
    results: dict[str, list[dict[str, Any]]] = {run_name(cfg, v): [] for v in cfg.variants}
    for seed in cfg.seeds:
        with clock("sft"):
            ckpt = stage_sft(cfg, data, seed)
        for variant in cfg.variants:
            stage = stage_rl_sim if VARIANTS[variant][2] == "sim" else stage_rl_wm
            with clock(f"rl {run_name(cfg, variant)}"):
                results[run_name(cfg, variant)].append(stage(cfg, ckpt, seed, variant))
    table = results_table(cfg, results)
    if cfg.paired_states:
        with clock("paired evaluation"):
            table += "\n\n" + paired_summary(cfg, results)
    gates = gate_summary(results)
    if gates:
        table += "\n\n" + gates
    if wm_report is not None:
        table += "\n\n" + world_model_summary(wm_report)
    if reward is not None:
        table += "\n\n" + reward_summary(reward)
    plot_curves(results, out / "success_vs_updates.png")
    timing = clock.summary()  # in results.md, not in the returned table (a cached rerun returns the same table)
    (out / "results.md").write_text(f"{table}\n\n{timing}\n")
    reward_reports = (
        None if reward is None else {"classifiers": reward["reports"], "success_head": reward["success_head"]}
    )
    (out / "results.json").write_text(json.dumps({**results, "world_model_report": wm_report,
                                                  "reward_report": reward_reports,
                                                  "seconds": {**clock.seconds, "total": clock.total()}},
                                                 indent=2))  # fmt: skip
    print(f"{table}\n\n{timing}")
    print(f"\nwrote {out / 'results.md'}, {out / 'success_vs_updates.png'}, TensorBoard logs in {out / 'tb'} "
          f"({clock.total():.0f} s)")  # fmt: skip
    return {"table": table, "results": results}


@user_command("prophrl demo")
def main(argv: list[str] | None = None) -> None:
    ap = ArgumentParser(prog="prophrl demo", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny settings that prove the plumbing (minutes)")
    ap.add_argument("--table10", action="store_true",
                    help="the whole comparison: 3 seeds, FA-GRPO +/- FlowScale in the simulator and inside Prophet")  # fmt: skip
    ap.add_argument("--debug", action="store_true", help=DEBUG_HELP)  # taken out of argv by run_user_command
    ap.add_argument("--out", default=None)
    ap.add_argument("--target-task", default=None, help="held-out Meta-World target task (default window-open-v3)")
    ap.add_argument("--pretrain-tasks", nargs="+", default=None, help="Prophet's pretraining tasks")
    ap.add_argument("--sft-demos", type=int, default=None, help="expert demos the weak SFT policy is cloned from")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    ap.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=None)
    ap.add_argument("--rl-updates", type=int, default=None)
    ap.add_argument("--sft-steps", type=int, default=None)
    ap.add_argument("--eval-seeds", type=int, default=None)
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--paired-states", type=int, default=None,
                    help="final policies paired with SFT on this many held-out states (default 200; 0: off)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default 2: both cores of a laptop)")
    ap.add_argument("--parallel", action=argparse.BooleanOptionalAction, default=None,
                    help="train the SFT policies in a second process while the world model is adapted (default on)")  # fmt: skip
    ap.add_argument("--reward-report", action=argparse.BooleanOptionalAction, default=None,
                    help="also run the reward-model report when no RL reward needs its classifier")  # fmt: skip
    ap.add_argument(
        "--wm-reward",
        choices=["bridged", "success_head"],
        default=None,
        help="imagined success inside Prophet: the bridged classifier (default) or the success head",
    )
    ap.add_argument("--wm-base", choices=["shipped", "pretrain"], default=None,
                    help="world model without --wm-model-dir: adapt the shipped Prophet (default) or pretrain one")  # fmt: skip
    ap.add_argument("--wm-adapt-steps", type=int, default=None, help="LoRA steps adapting Prophet to the target")
    ap.add_argument("--wm-model-dir", default=None, help="saved Prophet for the wm_* variants")
    ap.add_argument(
        "--wm-stats-dir", default=None, help="dataset directory whose stats.json normalized Prophet's actions"
    )
    ap.add_argument(
        "--wm-target-data",
        default=None,
        help="the target shards Prophet was adapted on (mixed into the *_refresh variants' refresh)",
    )
    ap.add_argument("--wm-refresh-episodes", type=int, default=None, help="real SFT-policy rollouts per refresh")
    ap.add_argument("--wm-refresh-steps", type=int, default=None, help="LoRA steps of the refresh")
    ap.add_argument("--wm-refresh-noise-level", type=float, default=None, help="SDE noise of the refresh rollouts")
    ap.add_argument("--wm-refresh-reward-steps", type=int, default=None, help="classifier steps of the refresh")
    ap.add_argument("--wm-refresh-branch-starts", type=int, default=None,
                    help="rollout states branched for real in the refresh (within-start contrast; 0: off)")  # fmt: skip
    ap.add_argument("--wm-refresh-branch-group", type=int, default=None, help="real branches per refresh start")
    ap.add_argument(
        "--wm-reward-signal",
        choices=["success", "graded"],
        default=None,
        help="RL reward inside Prophet: 0/1 imagined success (default) or the graded scorer probability",
    )
    ap.add_argument(
        "--wm-refresh-reward-data",
        choices=["twins", "branches"],
        default=None,
        help="imagined training data of the refreshed classifier: whole-episode twins or branch replays",
    )
    ap.add_argument("--wm-branch-segments", type=int, default=None, help="policy chunks per imagined branch")
    ap.add_argument("--wm-noise-level", type=float, default=None, help="SDE noise of the RL rollouts inside Prophet")
    ap.add_argument("--wm-group-size", type=int, default=None, help="rollouts per start inside Prophet (G)")
    ap.add_argument("--wm-draws", type=int, default=None,
                    help="world-model noise draws per imagined rollout (dual-noise verification; 1: off)")  # fmt: skip
    ap.add_argument("--wm-draws-reduce", choices=["mean", "min"], default=None,
                    help="the reward from the draws: their mean, or their minimum (every draw must succeed)")  # fmt: skip
    ap.add_argument("--wm-onpolicy-starts-every", type=int, default=None,
                    help="branch variants: every N updates the current policy's real rollouts become the branch starts "
                    "(0: off)")  # fmt: skip
    ap.add_argument("--wm-onpolicy-starts-episodes", type=int, default=None,
                    help="real rollouts per on-policy start refresh (counted as real interactions)")  # fmt: skip
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("quick", "table10", "debug") and v is not None}
    if args.quick and args.table10:
        ap.error("--quick and --table10 are exclusive")
    try:
        preset = DemoConfig.quick if args.quick else DemoConfig.table10 if args.table10 else DemoConfig
        cfg = preset(**overrides)
    except ValueError as e:
        ap.error(str(e))
    run(cfg)


if __name__ == "__main__":
    main()
