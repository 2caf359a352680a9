"""The demo's settings: :class:`DemoConfig` (with its ``quick`` and ``table10`` presets) and the RL variants it can run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

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
DEFAULT_BRANCH_SEGMENTS = 10  # imagined branch length in policy chunks (run and cache names say another one)
DEFAULT_WM_BETA_KL = 0.04  # the KL anchor inside Prophet (run names say another one)
# settings that do not change what an RL stage computes (where and how fast it runs, and what runs beside it)
NOT_RL_SETTINGS = ("out", "seeds", "variants", "threads", "parallel", "seed_workers", "paired_states", "reward_report")
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
    # them are the evaluation's), paired state by state (``demo.evaluate``; more states resolve smaller gains, docs/results.md)
    paired_states: int = 200
    # torch threads of the demo's process; with ``parallel`` the SFT policies (and their paired evaluation) are trained
    # in a second process while the world model is adapted, each process with half the threads
    threads: int = 2
    parallel: bool = True
    # independent seeds (each one's SFT policy and RL variants) in this many processes at once, seeds dealt round-robin,
    # each process with ``threads // seed_workers`` torch threads (at least 1); 1: one seed after another in this process
    seed_workers: int = 1
    # the reward-model stage's report (real-only vs bridged classifiers vs the success head on held-out real episodes
    # and their imagined twins; minutes) also when no variant's reward needs its classifier
    reward_report: bool = False
    # world-model RL (wm_* variants): a saved Prophet and the stats.json directory of its training data
    wm_model_dir: str | None = None
    wm_stats_dir: str | None = None
    wm_num_steps: int = 1
    # weight of the KL to the SFT policy in RL inside Prophet (the simulator's RL has none): it holds the policy near
    # the states Prophet was adapted and refreshed on
    wm_beta_kl: float = DEFAULT_WM_BETA_KL
    # the closed-loop gate's and the imagination guard's episodes (the branch agreement takes twice as many starts) and
    # the guard's period in RL updates (it also checks before the first)
    wm_check_seeds: int = 20
    wm_check_every: int = 20
    # the policy after RL inside Prophet is the one of the guard's best real check (ties: the earlier), not the last:
    # the checks' real interactions are counted either way (False: the last update's policy)
    wm_guard_keep_best: bool = True
    # world-model refresh (``*_refresh`` variants): real SDE rollouts of the SFT policy (seeds 6000 + 10000 * seed ..)
    # mixed with weight ``wm_refresh_weight`` into the target data Prophet was adapted on (``wm_target_data``; the
    # demo's own when it trains the world model) for ``wm_refresh_steps`` LoRA steps, before the gate and RL
    wm_refresh_episodes: int = 60
    wm_refresh_steps: int = 200
    wm_refresh_weight: float = 0.5
    # SDE noise level of the refresh rollouts (None: the policy's 0.7); more noise shows Prophet more varied actions
    # (and outcomes) from the policy's states, which is what action-level fidelity is learned from
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
    # labelled with the recorded frames, with the rollouts' real frames; docs/results.md compares them)
    wm_refresh_reward_data: str = "branches"
    # the branch-replay classifier's imagined branches start every this many chunks of the refresh rollouts
    wm_refresh_reward_branch_every: int = 4
    # branches (``wm_fagrpo_branch``): imagined rollouts of ``wm_branch_segments`` policy chunks started at every
    # ``wm_branch_every``-th chunk boundary of the refresh rollouts before their first success, with the recorded
    # memory; the reward is imagined success within the branch (the world model's drift grows with the horizon)
    wm_branch_segments: int = DEFAULT_BRANCH_SEGMENTS
    wm_branch_every: int = 1
    # value head at the branch end (branch variants, graded reward): a classifier of the refresh rollouts' eventual
    # success, trained ``wm_value_steps`` on their real frames and imagined branch replays
    # (``demo.scorers.value_head``); a branch cut without a success is graded by its last frame's value, so that short
    # branches still rank their endings (False: success within the branch only)
    wm_value: bool = True
    wm_value_steps: int = 2000
    # the value head's within-start contrast: ``wm_value_branches`` random branch starts of the refresh rollouts, each
    # branched ``wm_refresh_branch_group`` times in the simulator (RL noise ``wm_noise_level``, the recorded prefix
    # replayed) and run to the episode's end, every frame labelled with its own branch's outcome, join the value
    # head's data (real interactions, counted); 0: off
    wm_value_branches: int = 0
    # exploration inside Prophet: the SDE noise level of the RL rollouts (None: the policy's 0.7) and the group size
    # (None: ``group_size``); more noise or larger groups give more branches of one start different outcomes, which
    # is all a group-normalized advantage learns from (``studies.branches`` measures it before RL)
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
    # Prophet's success head (2 segments > 0.5); docs/results.md compares them on imagined twins
    wm_reward: str = "bridged"
    # the RL reward inside Prophet: "success" (0/1 imagined success) or "graded" (the scorer's best probability held
    # for k segments, ``envs.world_model.graded_reward``: imagined frames compress the probabilities)
    wm_reward_signal: str = "graded"
    # graded scores below this count as 0 (noise among failures)
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
        if self.wm_beta_kl < 0:
            raise ValueError(f"--wm-beta-kl (`wm_beta_kl`) must be >= 0, got {self.wm_beta_kl}")
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
        if self.wm_value_branches < 0 or (self.wm_value_branches and not self.wm_value):
            raise ValueError(f"--wm-value-branches (`wm_value_branches`) must be >= 0 and needs --wm-value, got "
                             f"{self.wm_value_branches} with wm_value={self.wm_value}")  # fmt: skip
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
        if self.seed_workers < 1:
            raise ValueError(f"--seed-workers (`seed_workers`) must be >= 1, got {self.seed_workers}")
        if self.paired_states and self.paired_states < self.eval_seeds:
            raise ValueError(f"`paired_states` ({self.paired_states}) must be 0 or >= --eval-seeds ({self.eval_seeds})")
        if self.wm_refresh_reward_branch_every < 1:
            raise ValueError(
                f"`wm_refresh_reward_branch_every` must be >= 1, got {self.wm_refresh_reward_branch_every}"
            )
        branched = any(v in BRANCHED for v in self.variants)
        if branched and self.wm_value and (self.wm_reward_signal != "graded" or self.wm_value_steps < 1):
            raise ValueError(f"--wm-value (on by default) needs --wm-reward-signal graded (got "
                             f"{self.wm_reward_signal!r}) and --wm-value-steps >= 1 (got {self.wm_value_steps}); "
                             f"pass --no-wm-value to grade branches by their success alone")  # fmt: skip
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
        the simulator and inside Prophet, the seeds in 3 processes at once (``--table10``; ``kw`` override)."""
        base = dict(out="runs/table10", seeds=[0, 1, 2], seed_workers=3,
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
                    wm_reward_signal="success", wm_refresh_reward_data="twins", wm_noise_level=None,
                    wm_value=False, wm_guard_keep_best=False)  # fmt: skip
        base.update(kw)
        return cls(**base)


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


def refresh_name(cfg: DemoConfig) -> str:
    """The refresh's cache directory name: ``refresh``, suffixed with a non-default rollout noise level (like every
    other stage, the refresh's episode and step counts are not in its name: change ``--out`` to change them)."""
    name = "refresh" + ("" if cfg.wm_refresh_noise_level is None else f"-noise{cfg.wm_refresh_noise_level:g}")
    if cfg.wm_refresh_branch_starts:  # the real branches' noise is the RL noise
        noise = "" if cfg.wm_noise_level is None else f"-noise{cfg.wm_noise_level:g}"
        name += f"-br{cfg.wm_refresh_branch_starts}x{cfg.wm_refresh_branch_group}{noise}"
    return name


def rl_settings(cfg: DemoConfig) -> dict[str, Any]:
    """The settings an RL stage records in its ``done.json`` and compares on a rerun (all but ``NOT_RL_SETTINGS``;
    paths resolved, as ``stage_cache`` stores arguments)."""
    from lightning_prophrl.stage_cache import jsonable

    settings = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in NOT_RL_SETTINGS}
    if cfg.wm_target_data:
        settings["wm_target_data"] = Path(cfg.wm_target_data)
    return jsonable(settings)


def cached_rl_run(cfg: DemoConfig, out: Path) -> dict[str, Any] | None:
    """The finished RL stage under ``out`` (None: not finished); one made with other settings is refused
    (``stage_cache.cached_done``: a ValueError naming its ``done.json`` and the settings that differ). A setting its
    record lacks (added after the run was made) counts as the same when it is at its default, the behaviour the run
    was made with."""
    from lightning_prophrl.stage_cache import cached_done, is_done, load_done

    now = rl_settings(cfg)
    made = load_done(out).get("settings") if is_done(out) else None
    if made is not None:
        defaults = rl_settings(DemoConfig())
        now = {k: v for k, v in now.items() if k in made or v != defaults.get(k)}
    return cached_done(out, now, key="settings")


def run_name(cfg: DemoConfig, variant: str) -> str:
    """A run's directory and table row: world-model runs with a non-default reward say so (they live beside the
    default ones). Settings a name does not say (the RL budget, the learning rate, ...) are recorded in the run's
    ``done.json``, and a rerun with others is refused (:func:`cached_rl_run`)."""
    if VARIANTS[variant][2] != "wm":
        return variant
    name = variant if cfg.wm_reward == "bridged" else f"{variant}-{cfg.wm_reward}"
    name += "-graded" if cfg.wm_reward_signal == "graded" else ""
    name += "-brclf" if cfg.wm_refresh_reward_data == "branches" and variant in REFRESHED else ""
    name += f"-{refresh_name(cfg)}" if variant in REFRESHED and refresh_name(cfg) != "refresh" else ""
    if variant in BRANCHED:  # the branch horizon and the value head (defaults unnamed)
        name += (
            ("" if cfg.wm_branch_segments == DEFAULT_BRANCH_SEGMENTS else f"-seg{cfg.wm_branch_segments}")
            + ("-value" * cfg.wm_value)
            + (f"br{cfg.wm_value_branches}x{cfg.wm_refresh_branch_group}" if cfg.wm_value_branches else "")
        )
    name += "" if cfg.wm_noise_level is None else f"-noise{cfg.wm_noise_level:g}"
    name += "" if cfg.wm_group_size is None else f"-g{cfg.wm_group_size}"
    name += "" if cfg.wm_beta_kl == DEFAULT_WM_BETA_KL else f"-kl{cfg.wm_beta_kl:g}"
    name += "" if cfg.wm_draws == 1 else f"-draws{cfg.wm_draws}{cfg.wm_draws_reduce}"
    name += "-keepbest" if cfg.wm_guard_keep_best else ""
    onpolicy = cfg.wm_onpolicy_starts_every and variant in BRANCHED
    return name + (f"-onpolicy{cfg.wm_onpolicy_starts_every}x{cfg.wm_onpolicy_starts_episodes}" if onpolicy else "")
