"""Agreement of imagined *branches* from real states (docs/architecture.md, "Within-start gate"): replaying the
recorded actions from branch starts, scoring them with the world model's persistence rule, and branching the same
policy G times from one start in the simulator and in the world model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.envs.agreement import rank_auc, reward_agreement, score_video
from lightning_prophrl.envs.rollout import RolloutBatch, collect_rollouts


def _padded_batches(indices: list[int], n: int):
    """``indices`` in batches of ``n``, the last one padded by repeating its last index; yields ``(batch, kept)``."""
    for b in range(0, len(indices), n):
        idx = indices[b : b + n]
        yield idx + [idx[-1]] * (n - len(idx)), len(idx)


@torch.no_grad()
def replay_branches(world_env: Any, prompts: Any, indices: Any, actions_per_segment: int):
    """Drive ``world_env`` (``group_size=1``) from branch prompts ``prompts.train_prompts[indices]`` with each
    episode's recorded actions for ``world_env.max_segments`` segments, ``num_prompts`` starts at a time.

    Yields:
        ``(refs, prompts, keep)`` after each batch: the ``(episode, frame)`` references, the materialized prompts and
        how many of them are real (the last batch is padded by repeating its last start); the imagined videos are
        ``world_env.video()[:keep]``.
    """
    from lightning_prophrl.datamodules.prompts import BRANCH

    starts, dataset = prompts.train_prompts, prompts.train_dataloader().dataset
    n, h, indices = world_env.num_prompts, actions_per_segment, list(indices)
    for idx, keep in _padded_batches(indices, n):
        refs = [starts[i][BRANCH] for i in idx]
        batch = [dataset[i] for i in idx]
        world_env.reset(batch)
        for k in range(world_env.max_segments):
            chunk = np.zeros((n, h, K.ACTION_DIM), np.float32)
            for j, (e, t) in enumerate(refs):
                acts = prompts.branches.episodes[e].actions[t + k * h : t + (k + 1) * h]
                chunk[j, : len(acts)] = acts
            world_env.step(chunk)
        yield refs, batch, keep


@torch.no_grad()
def branch_agreement(
    world_env: Any,
    prompts: Any,
    actions_per_segment: int,
    max_starts: int = 60,
    policy: Any = None,
    decoder: Any = None,
    noise_seed: int = 0,
) -> dict[str, Any]:
    """How far imagined *branches* from real states can be trusted (the agreement gate of short-branch RL).

    ``prompts`` is a ``PromptDataModule`` with ``branch_every > 0`` (set up); up to ``max_starts`` of its training
    starts, evenly spaced, are imagined for ``world_env.max_segments`` segments (``world_env`` has ``group_size=1``):

    * **replay**: with the episode's own recorded actions, ``actions_per_segment`` per segment, so the real outcome is
      known exactly: success within the branch's window in the recorded episode (``success_steps`` of frames
      ``t + 1 .. t + segments * actions_per_segment``). This measures the world model and its success scorer over
      the branch horizon, with the recorded memory, without any real interaction;
    * **policy** (with ``policy`` and ``decoder``): the policy's own SDE branches from the same starts; their imagined
      success rate is compared with the recorded window success rate (the same policy's real outcome, one sample).

    The replay also reports how well the graded outcome (``WorldModelEnv``'s ``success_score``) *ranks* the real
    outcomes (``score_auc``; what a group-normalized graded reward needs) beside the 0/1 rule's agreement, the PSNR
    of the imagined frames against the recorded ones per segment (where the imagination leaves reality) and, with a
    ``success_scorer``, the same ranking by the scorer's best probability on the *recorded* frames
    (``scorer_on_real_auc``: the scorer itself, apart from the world model).

    Returns:
        ``{"starts", "segments", "replay": reward_agreement(real, imagined) + rates + score_auc / score means, "policy":
        rates or None}``.
    """
    from lightning_prophrl.datamodules.clips import to_float_video
    from lightning_prophrl.datamodules.prompts import BRANCH

    if world_env.group_size != 1:
        raise ValueError(f"branch_agreement needs a world env with group_size=1, got {world_env.group_size}")
    starts = prompts.train_prompts
    if not starts or BRANCH not in starts[0]:
        raise ValueError("branch_agreement needs branch prompts (PromptDataModule(branch_every > 0))")
    pick = np.unique(np.linspace(0, len(starts) - 1, min(max_starts, len(starts))).round().astype(int))
    n, seg, h = world_env.num_prompts, world_env.max_segments, actions_per_segment
    real, replay, scores, policy_success, psnr, real_scores = [], [], [], [], [], []
    for b, (refs, batch, keep) in enumerate(replay_branches(world_env, prompts, pick, h)):
        replay += world_env.success[:keep].tolist()
        scores += world_env.score[:keep].tolist()
        # the recorded frames of the same window: where the imagination leaves them, and the scorer on them
        real_video = torch.stack([to_float_video(prompts.branches.episodes[e].frames[t : t + seg * h + 1 : h],
                                                 prompts.branches.image_size) for e, t in refs[:keep]])  # fmt: skip
        err = (world_env.video()[:keep] - real_video).pow(2).mean((2, 3, 4)).clamp_min(1e-10)
        psnr.append(10 * torch.log10(4.0 / err))  # images in [-1, 1]: peak-to-peak 2
        if world_env.success_scorer is not None:
            real_scores.append(score_video(world_env.success_scorer, real_video).max(1).values)
        for e, t in refs[:keep]:
            steps = prompts.branches.episodes[e].meta.get("success_steps") or []
            real.append(any(steps[t + 1 : t + seg * h + 1]))
        if policy is not None:
            res = collect_rollouts(policy, world_env, batch, decoder, seg, mode="sde",
                                   generator=torch.Generator().manual_seed(noise_seed + b * n))  # fmt: skip
            policy_success += res.success.bool()[:keep].tolist()
    r, i, sc = np.asarray(real, dtype=bool), np.asarray(replay), np.asarray(scores)
    out = {"starts": len(r), "segments": seg,
           "replay": {**reward_agreement(r, i), "real_rate": float(r.mean()), "imagined_rate": float(i.mean()),
                      "score_auc": rank_auc(sc, r),
                      "score_mean_real_success": float(sc[r].mean()) if r.any() else None,
                      "score_mean_real_failure": float(sc[~r].mean()) if (~r).any() else None,
                      "psnr_by_segment": [round(float(v), 2) for v in torch.cat(psnr)[:, 1:].mean(0)],
                      "scorer_on_real_auc": rank_auc(torch.cat(real_scores).numpy(), r) if real_scores else None},
           "policy": None}  # fmt: skip
    if policy is not None:
        out["policy"] = {"real_rate": float(r.mean()), "imagined_rate": float(np.mean(policy_success))}
    return out


def held_score(probs: torch.Tensor, lengths: torch.Tensor, k: int) -> torch.Tensor:
    """``WorldModelEnv``'s graded outcome on any video: the best success probability held for ``k`` consecutive frames,
    ``max_t min(probs[t - k + 1 .. t])`` over each episode's ``lengths`` valid entries of ``probs`` ``(N, T)`` (0 when
    an episode has fewer than ``k``)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, t = probs.shape
    if t < k:
        return torch.zeros(n)
    windows = probs.float().unfold(1, k, 1).min(2).values  # (N, T - k + 1): window ending at frame j + k - 1
    valid = torch.arange(t - k + 1)[None] + k <= lengths.long()[:, None]
    return torch.where(valid, windows, torch.zeros_like(windows)).max(1).values


def _pair_auc(real: np.ndarray, imagined: np.ndarray) -> tuple[float, int]:
    """Over the pairs of one group whose real outcomes differ: how often the imagined rewards order them the same
    way (ties count half); returns ``(sum of pair scores, pairs)``."""
    d_real = real[:, None] - real[None]
    d_imag = imagined[:, None] - imagined[None]
    pairs = d_real > 0
    return float((d_imag[pairs] > 0).sum() + 0.5 * (d_imag[pairs] == 0).sum()), int(pairs.sum())


@torch.no_grad()
def within_start_outcomes(
    policy: Any,
    real_env: Any,
    world_env: Any,
    prompts: Any,
    real_decoder: Any,
    world_decoder: Any,
    max_starts: int = 40,
    max_start_step: int | None = None,
    noise_seed: int = 0,
    noise_level: float | None = None,
    world_reward_fn: Callable[[RolloutBatch], torch.Tensor] | None = None,
    real_segments: int | None = None,
) -> dict[str, Any]:
    """Does the world model see what group-relative RL needs: which of G branches *from one start* succeed?

    ``prompts`` is a set-up ``PromptDataModule`` with branch prompts; up to ``max_starts`` of its training starts
    (evenly spaced, only those at frame ``<= max_start_step`` when given) are branched ``G`` times with the policy's
    SDE sampler, for ``world_env.max_segments`` chunks, **both** in ``real_env`` (a ``MetaWorldEnv``, which replays the
    start's ``PREFIX_ACTIONS`` to reach the recorded state) and in ``world_env``, ``num_prompts`` starts at a time with
    one sampler seed per batch of starts (``noise_seed + index of its first start``), the same in both, so that branch
    ``j`` of a start draws the same noise in both worlds. Both envs have ``group_size = G`` and the same
    ``num_prompts``; a branch's outcome is success at any step within the chunk budget. With ``real_segments`` longer
    than the imagined branches, the real ones go on (same noise for the shared chunks) and their outcome is the one a
    value head at the imagined branch's end should predict: success within ``real_segments`` chunks.

    Reports the measured starts (``start_indices`` into ``prompts.train_prompts``, ``start_frames``); per start, the
    real and imagined success rates; how many starts have a mixed outcome (the only groups with a non-zero GRPO
    advantage) in each; ``pair_auc``: over the branch pairs of one start whose real outcomes
    differ, how often the imagined reward orders them the same way (0.5 is chance; what a group-normalized reward from
    the world model needs); ``scorer_on_real_pair_auc``: the same ordering by ``world_env``'s success scorer (with
    its persistence rule, ``held_score``) applied to the *real* branch videos (their first ``world_env.max_segments``
    chunks), which tells a reward model that cannot rank the branches apart from a world model that cannot imagine
    them (None without a scorer); ``value_on_real_pair_auc``: the same ordering by ``world_env``'s ``value_scorer``
    on the real frame after ``world_env.max_segments`` chunks (None without one); ``advantage_corr``: the
    correlation of the group-normalized real and imagined rewards over all branches; the real environment steps of
    the measured starts (``real_env_steps``, with the replayed prefixes, and ``real_branch_steps``, the branches
    alone; the padding starts of a last, partial batch are not counted); and
    two checks that both worlds start from the same state: ``max_state_drift``, the largest difference between the
    real proprioception after the replay and the recorded one, and ``first_action_max_diff``, the largest difference
    between the first sampled chunks of paired real and imagined branches (0 when the observations match).
    """
    from lightning_prophrl.datamodules.prompts import BRANCH
    from lightning_prophrl.rl.advantages import group_advantages

    g, n = world_env.group_size, world_env.num_prompts
    if real_env.group_size != g or real_env.num_prompts != n:
        raise ValueError(f"real_env ({real_env.num_prompts} x {real_env.group_size}) and world_env ({n} x {g}) must "
                         "have the same num_prompts x group_size")  # fmt: skip
    starts = prompts.train_prompts
    if not starts or BRANCH not in starts[0]:
        raise ValueError("within_start_outcomes needs the branch prompts of a set-up PromptDataModule(branch_every > 0) "
                         "(call prompts.setup() first)")  # fmt: skip
    eligible = [i for i, p in enumerate(starts) if max_start_step is None or p[BRANCH][1] <= max_start_step]
    if not eligible:
        raise ValueError(f"no branch start at frame <= max_start_step={max_start_step}")
    pick = [eligible[j] for j in np.unique(np.linspace(0, len(eligible) - 1, min(max_starts, len(eligible))).round()
                                           .astype(int))]  # fmt: skip
    dataset, seg = prompts.train_dataloader().dataset, world_env.max_segments
    if real_segments is not None and real_segments < seg:
        raise ValueError(f"real_segments ({real_segments}) must be >= the imagined branches' {seg} chunks")
    real_r, imag_r, refs, real_steps, branch_steps, drift, first_diff = [], [], [], 0, 0, 0.0, 0.0
    scorer, real_held = getattr(world_env, "success_scorer", None), []
    value_scorer, real_value = getattr(world_env, "value_scorer", None), []
    for b, (idx, keep) in zip(range(0, len(pick), n), _padded_batches(pick, n), strict=True):
        batch = [dataset[i] for i in idx]
        runs = []
        for env, dec, fn, chunks in ((real_env, real_decoder, None, real_segments or seg),
                                     (world_env, world_decoder, world_reward_fn, seg)):  # fmt: skip
            res = collect_rollouts(policy, env, batch, dec, chunks, mode="sde", noise_level=noise_level,
                                   generator=torch.Generator().manual_seed(noise_seed + b), reward_fn=fn)  # fmt: skip
            runs.append(res)
        start_steps = torch.tensor([int(len(p[K.PREFIX_ACTIONS])) for p in batch]).repeat_interleave(g)
        recorded = torch.stack([torch.as_tensor(p[K.OBS_STATE]) for p in batch]).repeat_interleave(g, 0)
        drift = max(drift, float((runs[0].obs[0][K.OBS_STATE] - recorded)[: keep * g].abs().max()))
        first_diff = max(first_diff, float((runs[0].x_steps[0] - runs[1].x_steps[0])[: keep * g].abs().max()))
        real_steps += int(runs[0].steps[: keep * g].sum())  # the replayed prefix is real interaction too
        branch_steps += int((runs[0].steps - start_steps)[: keep * g].sum())
        if scorer is not None and runs[0].videos is not None:  # the reward model on the *real* branch videos
            lengths = runs[0].info.get(K.INFO_VIDEO_LENGTHS, torch.full((n * g,), runs[0].videos.shape[1])) - 1
            held = held_score(score_video(scorer, runs[0].videos[:, : seg + 1]), lengths.clamp(max=seg),
                              world_env.success_k)  # fmt: skip
            real_held.append(held.view(n, g)[:keep])
        if value_scorer is not None and runs[0].videos is not None:  # the value head on the real branch ends
            real_value.append(value_scorer(runs[0].videos[:, : seg + 1]).float().cpu().view(n, g)[:keep])
        real_r.append(runs[0].rewards.view(n, g)[:keep])
        imag_r.append(runs[1].rewards.view(n, g)[:keep])
        refs += [starts[i][BRANCH] for i in idx[:keep]]
    r, m = torch.cat(real_r).numpy(), torch.cat(imag_r).numpy()
    pair_sum, pair_n = 0.0, 0
    for row_r, row_m in zip(r, m, strict=True):
        s, k = _pair_auc(row_r, row_m)
        pair_sum, pair_n = pair_sum + s, pair_n + k
    scored_sum, scored_n = 0.0, 0
    if real_held:
        for row_r, row_h in zip(r, torch.cat(real_held).numpy(), strict=True):
            s, k = _pair_auc(row_r, row_h)
            scored_sum, scored_n = scored_sum + s, scored_n + k
    value_sum, value_n = 0.0, 0
    if real_value:
        for row_r, row_v in zip(r, torch.cat(real_value).numpy(), strict=True):
            s, k = _pair_auc(row_r, row_v)
            value_sum, value_n = value_sum + s, value_n + k
    adv_r = group_advantages(torch.from_numpy(r).flatten(), g).numpy()
    adv_m = group_advantages(torch.from_numpy(m).flatten(), g).numpy()
    rate_r, rate_m = r.mean(1), m.mean(1)

    def corr(a: np.ndarray, b: np.ndarray) -> float | None:
        return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else None

    return {"starts": len(r), "group_size": g, "segments": seg, "real_segments": real_segments or seg,
            "max_start_step": max_start_step,
            "start_indices": [int(i) for i in pick], "start_frames": [int(t) for _, t in refs],
            "real_rate": float(r.mean()), "imagined_rate": float(m.mean()),
            "real_rate_per_start": rate_r.round(3).tolist(), "imagined_rate_per_start": rate_m.round(3).tolist(),
            "real_mixed_starts": int(((r.min(1) < r.max(1))).sum()),
            "imagined_mixed_starts": int(((m.min(1) < m.max(1))).sum()),
            "rate_corr": corr(rate_r, rate_m), "pair_auc": pair_sum / pair_n if pair_n else None, "pairs": pair_n,
            "advantage_corr": corr(adv_r, adv_m),
            "scorer_on_real_pair_auc": scored_sum / scored_n if scored_n else None,
            "value_on_real_pair_auc": value_sum / value_n if value_n else None,
            "real_env_steps": real_steps, "real_branch_steps": branch_steps,
            "max_state_drift": drift, "first_action_max_diff": first_diff}  # fmt: skip
