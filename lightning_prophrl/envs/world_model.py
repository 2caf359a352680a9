"""``WorldModelEnv``: the ``BatchedEnv`` contract over a frozen Prophet (the paper's RL inside the world model).

Chunk mapping rule (not given in the paper; this is the library's explicit choice): one ``step`` call = one
Prophet segment. The policy's ``h`` executed actions (raw unified 14-D) are grouped into Prophet's ``L`` frames of
``s = h / L`` actions each, exactly as the clip datamodule aligns frame rates with ``stride = s`` (motion deltas summed,
last gripper command kept); ``h`` must therefore be a multiple of ``L`` and Prophet must have been trained with data
``stride = h / L``. The grouped chunk is normalized with Prophet's own action statistics, the segment is generated,
its last frame becomes the next observation and the segment's frames enter the bounded FIFO history.

Imagined success comes from Prophet's success head (or from ``success_scorer``, e.g. a domain-bridged frame
classifier: :func:`classifier_scorer`) with a persistence rule (``success_threshold`` for ``success_k``
consecutive segments), after which the imagined episode stops like stop-at-success in a
simulator. ``info[K.INFO_SCORE]`` grades the outcome (the best probability held for ``success_k`` consecutive
segments; :func:`graded_reward` makes it the RL reward). With a ``value_scorer`` (an estimate of the eventual
success from a frame, e.g. a classifier trained with ``label="outcome"``), an episode cut by ``max_segments`` before
its success is graded by the value of its last frame when that is higher, so that short branches from real states
still rank their endings (``info[K.INFO_VALUE]``, present with a value scorer, holds the values, NaN where none was
taken). Proprioception is not imagined by Prophet:
``state_mode="integrate"`` dead-reckons the hand position from the commanded deltas (an approximation, documented as
such), ``"zeros"`` gives zeros (for image-only policies).

With ``poses`` (a :class:`~lightning_prophrl.envs.poses.CommandedPoses`), the commanded end-effector target of every
generated frame is integrated from the actions (exactly the rule of the training data's ``target_poses.npy``) and fed
to Prophet's action-frame stream, and the integrated state uses the same rule (the action's frame and the bounds);
without it only the scalar action stream is used and the state integrates ``dpos`` as if it were a world delta.

With ``draws = D > 1`` every rollout is imagined D times under independent sampling noise, all D copies executing the
policy's actions chosen on the first copy (the one the policy sees). ``info[K.INFO_DRAW_SUCCESS]`` and
``info[K.INFO_DRAW_SCORE]`` ``(D, N)`` hold every copy's outcome and ``info[K.INFO_DRAWS_AGREE]`` ``(N,)`` whether
they agree on success: a rollout whose outcome depends on the world model's noise is one the model is unsure about
(dual-noise verification). :func:`draws_reward` turns the copies into one reward (their mean, or their minimum:
success only when every draw succeeds).

Devices and dtypes: Prophet runs where its parameters are and in their dtype (``to(device, dtype)`` moves it and the
success scorer's classifier; inside ``FAGRPOModule`` they follow the module). The current frames and the memory of an
episode stay on that device between steps; observations, videos, states and success are float32 CPU tensors, as the
``BatchedEnv`` contract says. ``reseed(*key)`` restarts the sampling noise on the stream ``key`` of ``seed``
(``FAGRPOModule`` uses ``(update, process)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lightning_prophrl import constants as K
from lightning_prophrl.actions import ActionStats
from lightning_prophrl.constants import (  # noqa: F401 (re-exported: these info keys were defined here)
    INFO_DRAW_SCORE,
    INFO_DRAW_SUCCESS,
    INFO_DRAWS_AGREE,
    INFO_SCORE,
)
from lightning_prophrl.envs.base import BatchedEnvBase, Prompt, check_prompts
from lightning_prophrl.envs.poses import CommandedPoses
from lightning_prophrl.envs.world_scoring import (  # noqa: F401 (re-exported: they were defined here)
    ClassifierScorer,
    classifier_scorer,
    draws_reward,
    graded_reward,
)
from lightning_prophrl.models.history import HistoryBuffer
from lightning_prophrl.rl.sharding import stream_seed


def group_actions(actions: np.ndarray, frames: int) -> np.ndarray:
    """``(N, h, 14)`` raw unified actions -> ``(N, frames, 14)``: sums of ``h / frames`` consecutive deltas with the
    last gripper command of each group (the datamodules' stride rule)."""
    n, h, d = actions.shape
    if h % frames:
        raise ValueError(f"the policy executes {h} actions per step, not a multiple of Prophet's chunk of {frames}")
    g = actions.reshape(n, frames, h // frames, d)
    out = g.sum(2)
    out[..., 6], out[..., 13] = g[..., -1, 6], g[..., -1, 13]
    return out


class WorldModelEnv(BatchedEnvBase):
    """``num_prompts x group_size`` imagined rollouts in a frozen Prophet (a ``BatchedEnv``).

    Args:
        prophet: the (adapted) world model; frozen and put in eval mode.
        action_stats: statistics that normalized Prophet's training actions (``stats.json`` content or object).
        num_prompts: P prompts per reset.
        group_size: G rollouts per prompt (all from the prompt's initial frame).
        max_segments: horizon in ``step`` calls.
        num_steps: Prophet sampling steps per segment (1-2 keeps imagination cheaper than the simulator).
        success_threshold: success-head probability counted as success.
        success_k: consecutive segments above the threshold for an imagined success.
        stop_at_success: end imagined episodes at their first success.
        state_mode: ``integrate`` (dead-reckoned hand xyz + gripper, 4-D) or ``zeros``.
        action_scale_to_state: metres of hand motion per unit of unified dpos (1.0: unified dpos is in metres).
        seed: seeds the sampling noise (``reseed`` restarts it on a stream of this seed).
        initial_env: optional real ``BatchedEnv`` (e.g. a ``MetaWorldEnv`` with ``group_size=1``) that renders the
            initial frame and proprioception of prompts given only as simulator seeds (real resets):
            one reset per prompt, no environment step.
        poses: commanded-target integrator and camera for the action-frame stream (see the module docstring).
        success_scorer: ``video (N, T, 3, H, W) -> (N,)`` success probability of the newest frame given the imagined
            episode so far; None uses Prophet's success head. With a scorer, Prophet's clean pass for its success
            head is skipped (one U-Net pass fewer per segment; the frames are the same).
        draws: imagined copies of every rollout under independent noise (see the module docstring; 1: off). Costs D
            times the generation.
        value_scorer: ``video (N, T, 3, H, W) -> (N,)`` probability of eventual success from the newest frame, taken
            once, on the last frame of episodes cut by ``max_segments`` without a success; None: off.
    """

    action_dim = K.ACTION_DIM

    def __init__(
        self,
        prophet: Any,
        action_stats: ActionStats | Mapping[str, Any],
        num_prompts: int = 1,
        group_size: int = 1,
        max_segments: int = 38,
        num_steps: int = 2,
        success_threshold: float = 0.5,
        success_k: int = 2,
        stop_at_success: bool = True,
        state_mode: Literal["integrate", "zeros"] = "integrate",
        action_scale_to_state: float = 1.0,
        seed: int = 0,
        initial_env: Any = None,
        poses: CommandedPoses | None = None,
        success_scorer: Callable[[torch.Tensor], torch.Tensor] | None = None,
        draws: int = 1,
        value_scorer: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        if min(num_prompts, group_size, max_segments, num_steps, success_k, draws) < 1:
            raise ValueError("num_prompts, group_size, max_segments, num_steps, success_k and draws must be >= 1")
        if state_mode not in ("integrate", "zeros"):
            raise ValueError(f"state_mode must be 'integrate' or 'zeros', got {state_mode!r}")
        self.prophet = prophet.eval().requires_grad_(False)
        self.stats = (
            action_stats if isinstance(action_stats, ActionStats) else ActionStats.from_dict(dict(action_stats))
        )
        self.num_prompts, self.group_size, self.num_envs = num_prompts, group_size, num_prompts * group_size
        self.max_segments, self.num_steps = max_segments, num_steps
        self.success_threshold, self.success_k, self.stop_at_success = success_threshold, success_k, stop_at_success
        self.state_mode, self.action_scale_to_state = state_mode, action_scale_to_state
        self.state_dim = 4
        self.chunk = int(prophet.config.action_chunk_length)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.mask = torch.as_tensor(np.asarray(self.stats.mask, dtype=bool))
        self.initial_env = initial_env
        self.poses = poses
        self.success_scorer = success_scorer
        self.draws = draws
        self.value_scorer = value_scorer

    # 0. placement and noise ----------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where Prophet runs (its parameters' device)."""
        return next(self.prophet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Prophet's floating dtype."""
        return next(self.prophet.parameters()).dtype

    def networks(self) -> list[nn.Module]:
        """The networks the environment runs: Prophet and the success scorer's (when it is or holds one)."""
        scorers = (self.success_scorer, self.value_scorer)
        held = [*scorers, *(getattr(scorer, "classifier", None) for scorer in scorers)]
        return [self.prophet, *(m for m in held if isinstance(m, nn.Module))]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> WorldModelEnv:
        """Move (and cast the floating parameters of) Prophet and the scorer's network; takes effect at ``reset``."""
        for net in self.networks():
            net.to(device=device, dtype=dtype)
        return self

    def reseed(self, *key: int) -> None:
        """Restart the sampling noise on the stream ``key`` (non-negative ints) of ``seed`` (``rl.stream_seed``)."""
        self.generator.manual_seed(stream_seed(self.seed, *key))

    # 1. reset ------------------------------------------------------------------------------------------------------
    def reset(self, prompts: Sequence[Prompt | Mapping[str, Any]]) -> dict[str, Any]:
        """Start from the prompts' initial frames (``Prompt.initial_frame`` / ``COND_FRAME`` of a prompt dict)."""
        ps = check_prompts(prompts, self.num_prompts, ())
        if self.initial_env is not None and any(p.initial_frame is None for p in ps):
            first = self.initial_env.reset(ps)
            stride = self.initial_env.group_size
            for i, p in enumerate(ps):
                if p.initial_frame is None:
                    p.initial_frame, p.initial_state = first[K.OBS_IMAGE][i * stride], first[K.OBS_STATE][i * stride]
        ps = list(ps) * self.draws  # draw d of rollout i is row d * N + i
        frames = []
        for i, p in enumerate(ps):
            if p.initial_frame is None:
                raise ValueError(
                    f"prompts[{i}] has no initial frame: a world model cannot render one (give COND_FRAME)"
                )
            frames.append(torch.as_tensor(p.initial_frame, dtype=torch.float32))
        g = self.group_size
        self.frame = torch.stack(frames).repeat_interleave(g, 0).to(self.device)  # (N, 3, H, W) float32, on device
        states = [p.initial_state if p.initial_state is not None else torch.zeros(4) for p in ps]
        self.state = torch.stack([torch.as_tensor(s, dtype=torch.float32)[:4] for s in states]).repeat_interleave(g, 0)
        self.target = None if self.poses is None else self.poses.start(self.state[:, :3].double()).float()
        if self.target is not None:  # branches continue the recorded commanded target
            for i, p in enumerate(ps):
                if p.initial_target is not None:
                    self.target[i * g : (i + 1) * g] = torch.as_tensor(p.initial_target, dtype=torch.float32)[:3]
        self.instructions = [p.instruction or p.task for p in ps for _ in range(g)]
        self.history = HistoryBuffer(int(self.prophet.config.history_length) if self.prophet.uses_history else 0)
        self._push_prompt_history(ps)
        self.video_frames = [self.frame.cpu()]
        rows = self.num_envs * self.draws
        self.lengths = torch.ones(rows, dtype=torch.long)
        self.done = torch.zeros(rows, dtype=torch.bool)
        self.success = torch.zeros(rows, dtype=torch.bool)
        self.streak = torch.zeros(rows, dtype=torch.long)
        self.steps = torch.zeros(rows, dtype=torch.long)
        self.segments = 0
        self.success_prob: list[torch.Tensor] = []
        self.score = torch.zeros(rows)
        self.value = torch.full((rows,), float("nan"))
        return self._obs()

    def _push_prompt_history(self, ps: Sequence[Prompt]) -> None:
        """Seed the memory with the prompts' recorded past frames (branches from the middle of real episodes): the
        newest ``capacity`` of them, left-padded and masked where a prompt has fewer (or none)."""
        cap = self.history.capacity
        if cap == 0 or all(p.history_frames is None or len(p.history_frames) == 0 for p in ps):
            return
        frames = torch.zeros(len(ps), cap, *self.frame.shape[1:])
        mask = torch.zeros(len(ps), cap, dtype=torch.bool)
        for i, p in enumerate(ps):
            if p.history_frames is None or len(p.history_frames) == 0:
                continue
            h = torch.as_tensor(p.history_frames, dtype=torch.float32)[-cap:]
            if h.shape[1:] != self.frame.shape[1:]:
                raise ValueError(f"prompts[{i}].history_frames are {tuple(h.shape[1:])}, not the initial frame's "
                                 f"{tuple(self.frame.shape[1:])}")  # fmt: skip
            m = torch.ones(len(h), dtype=torch.bool) if p.history_mask is None else torch.as_tensor(p.history_mask)
            frames[i, cap - len(h) :], mask[i, cap - len(h) :] = h, m[-cap:].bool()
        g = self.group_size
        with torch.no_grad():
            latents = self.prophet.latent_codec.encode_frames(frames.to(self.device, self.dtype)).transpose(1, 2)
        self.history.push(latents.repeat_interleave(g, 0), mask.to(self.device).repeat_interleave(g, 0))

    # 2. step -------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, actions: torch.Tensor | np.ndarray) -> tuple[dict[str, Any], torch.Tensor, dict[str, Any]]:
        """Imagine one segment from ``(N, h, 14)`` raw unified actions (see the module docstring)."""
        a = np.asarray(actions.cpu() if isinstance(actions, torch.Tensor) else actions, dtype=np.float32)
        if a.ndim != 3 or a.shape[0] != self.num_envs or a.shape[2] != K.ACTION_DIM:
            raise ValueError(f"actions must be (N={self.num_envs}, h, {K.ACTION_DIM}) raw unified, got {a.shape}")
        a = np.concatenate([a] * self.draws)  # every draw executes the policy's actions
        alive = ~self.done
        targets = None
        if self.poses is not None:
            targets = self.poses.integrate(self.target, torch.from_numpy(a), self.chunk)  # (N, L, 3)
        prob = self._imagine(a, alive, targets)
        if targets is not None:
            self.target = torch.where(alive[:, None], targets[:, -1], self.target)
        if self.state_mode == "integrate":
            if targets is not None:  # the commanded target minus its reset offset (the hand lags behind it)
                offset = self.poses.reset_offset
                hand = self.target - (0.0 if offset is None else torch.as_tensor(offset).float())
            else:
                hand = self.state[:, :3] + torch.from_numpy(a[:, :, :3].sum(1)) * self.action_scale_to_state
            self.state[:, :3] = torch.where(alive[:, None], hand, self.state[:, :3])
            self.state[:, 3] = torch.where(alive, torch.from_numpy(a[:, -1, 6]), self.state[:, 3])
        self.steps += alive.long() * a.shape[1]
        self.lengths += alive.long()
        self.segments += 1
        self.success_prob.append(prob)
        self.streak = torch.where(
            alive & (prob > self.success_threshold), self.streak + 1, torch.zeros_like(self.streak)
        )
        self.success |= self.streak >= self.success_k
        # graded outcome: the best probability held for success_k consecutive segments (the persistence rule's margin)
        if len(self.success_prob) >= self.success_k:
            window = torch.stack(self.success_prob[-self.success_k :]).min(0).values
            self.score = torch.where(alive, torch.maximum(self.score, window), self.score)
        stop = self.success if self.stop_at_success else torch.zeros_like(self.success)
        cut = alive & ~self.success & (self.segments >= self.max_segments)
        self.done |= stop | (self.segments >= self.max_segments)
        n = self.num_envs
        self.done[n:] |= self.done[:n].repeat(self.draws - 1)  # the policy stops acting: every draw ends
        self.video_frames.append(self.frame.to("cpu", copy=True))
        if self.value_scorer is not None and cut.any():
            value = self.value_scorer(torch.stack(self.video_frames, 1)).float().cpu()
            self.value = torch.where(cut, value, self.value)
            self.score = torch.where(cut, torch.maximum(self.score, value), self.score)
        info = {K.INFO_SUCCESS: self.success[:n].clone(), K.INFO_STEPS: self.steps[:n].clone(),
                K.INFO_SUCCESS_PROB: prob[:n], K.INFO_SCORE: self.score[:n].clone()}  # fmt: skip
        if self.value_scorer is not None:
            info[K.INFO_VALUE] = self.value[:n].clone()
        if self.draws > 1:
            draw_success = self.success.view(self.draws, n).clone()
            info.update({K.INFO_DRAW_SUCCESS: draw_success, K.INFO_DRAW_SCORE: self.score.view(self.draws, n).clone(),
                         K.INFO_DRAWS_AGREE: (draw_success == draw_success[:1]).all(0)})  # fmt: skip
        return self._obs(), self.done[:n].clone(), info

    def _imagine(self, a: np.ndarray, alive: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """Generate the segment of every row on Prophet's device and in its dtype, advance the alive rows' frames and
        the memory; returns the ``(rows,)`` float32 CPU success probabilities of the new frames.

        Args:
            a: ``(rows, h, 14)`` raw unified actions of every row (draws included).
            alive: ``(rows,)`` bool, rows still running.
            targets: ``(rows, L, 3)`` commanded targets of the segment's frames (with ``poses``), or None.
        """
        rows, device, dtype = len(a), self.device, self.dtype
        grouped = group_actions(a, self.chunk)
        norm = torch.from_numpy(self.stats.normalize(grouped)).to(device, dtype)
        geometry = {}
        if targets is not None:
            geometry = self.poses.geometry(targets, torch.from_numpy(grouped[:, :, 6]))
            geometry = {k: v.to(device) for k, v in geometry.items()}
        hist = self.history.items
        gen = self.prophet.generate(
            self.frame, norm, self.mask[None].expand(rows, -1).to(device),
            history_latents=None if hist is None else hist.transpose(1, 2), history_mask=self.history.mask,
            num_steps=self.num_steps, generator=self.generator, **geometry,
            score_success=self.success_scorer is None,  # a scorer replaces the head: skip its extra U-Net pass
        )  # fmt: skip
        frames = gen.frames.float()  # (rows, L, 3, H, W)
        if self.history.capacity > 0:
            past = torch.cat([self.frame[:, None], frames[:, :-1]], 1)[:, -self.history.capacity :]
            self.history.push(self.prophet.latent_codec.encode_frames(past.to(dtype)).transpose(1, 2))
        self.frame = torch.where(alive.to(device)[:, None, None, None], frames[:, -1], self.frame)
        if self.success_scorer is not None:
            return self.success_scorer(torch.stack([*self.video_frames, self.frame.cpu()], 1)).float().cpu()
        if gen.success_logit is not None:
            return torch.sigmoid(gen.success_logit.float()).cpu()
        return torch.zeros(rows)

    def _obs(self) -> dict[str, Any]:
        n = self.num_envs
        state = self.state[:n] if self.state_mode == "integrate" else torch.zeros_like(self.state[:n])
        return {K.OBS_IMAGE: self.frame[:n].to("cpu", copy=True), K.OBS_STATE: state.clone(),
                K.INSTRUCTION: self.instructions[:n]}  # fmt: skip

    def video(self, draw: int = 0) -> torch.Tensor:
        """``(N, T, 3, H, W)`` in ``[-1, 1]`` of one noise draw (0: the one the policy saw); frames after an episode
        ended repeat its last frame."""
        n = self.num_envs
        return torch.stack(self.video_frames, 1)[draw * n : (draw + 1) * n]

    def video_lengths(self, draw: int = 0) -> torch.Tensor:
        n = self.num_envs
        return self.lengths[draw * n : (draw + 1) * n].clone()

    def close(self) -> None:
        pass
