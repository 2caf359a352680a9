"""Environments built from directories, for YAML configs (``class_path: lightning_prophrl.envs.factory.<name>``).

:func:`world_model_env` builds a ``WorldModelEnv`` from a saved Prophet (``save_pretrained`` directory with its
``stats.json``; the shipped one by default), an optional LoRA adapter, an optional success classifier as the scorer
and an optional Meta-World environment that renders the initial frame of prompts given as simulator seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from lightning_prophrl.envs.world_model import WorldModelEnv

# Success rule per scorer when none is given: Prophet's success head (probability > 0.5 for 2 segments) or a frame
# classifier (> 0.9 for 3 segments, as the demo's bridged classifier).
_HEAD_RULE, _CLASSIFIER_RULE = (0.5, 2), (0.9, 3)


def world_model_env(
    model_dir: str | None = None,
    num_prompts: int = 1,
    group_size: int = 1,
    max_segments: int = 38,
    num_steps: int = 2,
    stats_dir: str | None = None,
    adapter_dir: str | None = None,
    reward_dir: str | None = None,
    success_threshold: float | None = None,
    success_k: int | None = None,
    stop_at_success: bool = True,
    state_mode: Literal["integrate", "zeros"] = "integrate",
    action_scale_to_state: float = 1.0,
    task: str | None = None,
    image_size: int = 64,
    camera: str = "workspace",
    poses: bool | None = None,
    initial_max_steps: int = 150,
    draws: int = 1,
    seed: int = 0,
) -> WorldModelEnv:
    """A ``WorldModelEnv`` over a saved Prophet, buildable from YAML.

    Args:
        model_dir: ``Prophet.save_pretrained`` directory; None: the shipped Prophet
            (``lightning_prophrl.assets.shipped_prophet_path()``).
        num_prompts: P prompts per reset (the prompt datamodule's ``num_prompts``).
        group_size: G rollouts per prompt (``FAGRPOModule``'s ``group_size``).
        max_segments: horizon in ``step`` calls (one per policy query).
        num_steps: Prophet sampling steps per segment.
        stats_dir: directory of the ``stats.json`` that normalized Prophet's training actions (default ``model_dir``).
        adapter_dir: a LoRA adapter written by ``ProphetAdaptModule(adapter_dir=...)`` for this Prophet, loaded on
            top of it (``prophet_adapt.load_adapter``).
        reward_dir: a saved success classifier (``RewardModelModule(export_dir=...)``, i.e.
            ``configs/reward/classifier_tiny.yaml``, or ``recipes.reward.train_classifier``; ``load_classifier``),
            used as the success scorer (``world_model.classifier_scorer``); None uses Prophet's success head.
        success_threshold: probability counted as success (default 0.5 with the success head, 0.9 with a classifier).
        success_k: consecutive segments above the threshold for a success (default 2 with the success head, 3 with
            a classifier).
        stop_at_success: end imagined episodes at their first success.
        state_mode: ``integrate`` (dead-reckoned hand xyz + gripper) or ``zeros``.
        action_scale_to_state: metres of hand motion per unit of unified dpos.
        task: Meta-World task of the prompts: with it, prompts given only as simulator seeds get their initial frame
            and proprioception from one reset of a real ``MetaWorldEnv`` (no step), and the commanded end-effector
            targets of the task's controller feed Prophet's action frames.
        image_size: frame size of the initial environment and the action frames (must fit the Prophet).
        camera: Meta-World camera of the initial environment and the action frames.
        poses: integrate commanded targets for the action-frame stream (``envs.poses.CommandedPoses``); None: when
            the Prophet uses action frames and ``task`` is given.
        initial_max_steps: step budget of the initial environment (it is only reset).
        draws: imagined copies of every rollout under independent noise (1: off).
        seed: seeds Prophet's sampling noise.

    Raises:
        FileNotFoundError: naming a missing model, statistics, adapter or classifier directory.
        ValueError: when ``image_size`` does not fit the Prophet, or ``poses=True`` without a ``task``.
    """
    import torch

    from lightning_prophrl.datamodules.shards import load_stats
    from lightning_prophrl.models.prophet import Prophet

    if model_dir is None:
        from lightning_prophrl.assets import shipped_prophet_path

        model_dir = shipped_prophet_path()
    if not (Path(model_dir) / "config.json").is_file():
        raise FileNotFoundError(f"world_model_env: model_dir {model_dir} is not a saved Prophet (no config.json)")
    # 1. the frozen world model and the statistics of its training actions
    prophet = Prophet.from_pretrained(model_dir, torch_dtype=torch.float32)
    if adapter_dir is not None:
        from lightning_prophrl.modules.prophet_adapt import load_adapter

        if not Path(adapter_dir).is_dir():
            raise FileNotFoundError(f"world_model_env: adapter_dir {adapter_dir} not found")
        load_adapter(prophet, adapter_dir)
    prophet.check_frame_size(image_size, image_size)
    stats = load_stats(stats_dir or model_dir)
    # 2. the success scorer
    scorer = None
    rule = _HEAD_RULE
    if reward_dir is not None:
        from lightning_prophrl.envs.world_model import classifier_scorer
        from lightning_prophrl.models.reward import load_classifier

        if not Path(reward_dir).is_dir():
            raise FileNotFoundError(f"world_model_env: reward_dir {reward_dir} not found (train a classifier first)")
        scorer, rule = classifier_scorer(load_classifier(reward_dir)), _CLASSIFIER_RULE
    # 3. initial frames of seed prompts and commanded targets of the action frames
    initial_env, commanded = None, None
    if poses is None:
        poses = bool(prophet.config.use_action_frames) and task is not None
    if poses and task is None:
        raise ValueError("world_model_env: poses=True needs the Meta-World `task` whose controller the targets follow")
    if task is not None:
        from lightning_prophrl.envs.metaworld import MetaWorldEnv

        initial_env = MetaWorldEnv(task, num_prompts=num_prompts, group_size=1, image_size=image_size,
                                   max_steps=initial_max_steps, camera=camera)  # fmt: skip
    if poses:
        from lightning_prophrl.envs.poses import CommandedPoses

        commanded = CommandedPoses.metaworld(task, image_size, camera)
    return WorldModelEnv(
        prophet, stats, num_prompts=num_prompts, group_size=group_size, max_segments=max_segments,
        num_steps=num_steps, success_threshold=rule[0] if success_threshold is None else success_threshold,
        success_k=rule[1] if success_k is None else success_k, stop_at_success=stop_at_success,
        state_mode=state_mode, action_scale_to_state=action_scale_to_state, seed=seed, initial_env=initial_env,
        poses=commanded, success_scorer=scorer, draws=draws,
    )  # fmt: skip
