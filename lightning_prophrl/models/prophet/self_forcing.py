"""Self-forcing: train Prophet on clips that continue from its own generated frames.

A rollout feeds every generated frame back as the next conditioning frame, so a one-step (conditional-mean) sampler
compounds its own blur: objects the model never saw in pretraining fade over a few segments although each single
step keeps them (the one-step-ahead rows of ``studies.heldout --compare ... --teacher-forced``). Training only on real
conditioning frames never shows the model such inputs. Here a clip of two segments (``2 L`` future frames) is split
into its first segment and its second, and for a share of the clips the second segment starts from the model's own
generation of the first (no gradient through it, the sampler and step count of a rollout), with the real frames as
its target: the model learns to continue from, and correct, what it generated.

:func:`split_segments` cuts the clip, :func:`self_forced` swaps the conditioning frames; ``ProphetTrainingBase``
(``self_forcing``) uses both.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_prophrl import constants as K

TIME_KEYS = (K.FUTURE, K.ACTIONS, K.EE_POSES, K.GRIPPER)  # per future frame
_LATENT_KEYS = (K.LATENT_COND, K.LATENT_FUTURE, K.LATENT_HISTORY)


def split_segments(batch: dict[str, Any], chunk: int, history_length: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A clip of ``2 * chunk`` future frames -> ``(first, second)``, two clips of ``chunk`` frames each.

    ``first`` is the clip's first segment without the clip's success label (the outcome belongs to the clip's end);
    ``second`` starts from real frame ``chunk`` (the first segment's last future frame) with the real frames before it
    as history (the newest ``history_length``; masked where the clip has none).

    Raises:
        ValueError: on pre-encoded latent batches, or when the clip does not hold exactly two segments.
    """
    if any(key in batch for key in _LATENT_KEYS):
        raise ValueError("self-forcing generates frames: give frame batches (no pre-encoded latents from "
                         "`prophrl-data encode`) or set `self_forcing: 0`")  # fmt: skip
    future = batch[K.FUTURE]
    if future.shape[1] != 2 * chunk:
        raise ValueError(f"self-forcing needs clips of two segments: {K.FUTURE!r} has {future.shape[1]} frames, "
                         f"expected 2 x action_chunk_length = {2 * chunk} (the datamodule's `chunk_len`)")  # fmt: skip
    first, second = dict(batch), dict(batch)
    for key in TIME_KEYS:
        if key in batch:
            first[key], second[key] = batch[key][:, :chunk], batch[key][:, chunk:]
    first.pop(K.CLIP_SUCCESS, None)
    second[K.COND_FRAME] = future[:, chunk - 1]
    if history_length > 0:
        n = future.shape[0]
        frames = [batch[K.COND_FRAME][:, None], future[:, : chunk - 1]]
        masks = [torch.ones(n, chunk, dtype=torch.bool, device=future.device)]
        if batch.get(K.HISTORY) is not None:
            frames.insert(0, batch[K.HISTORY])
            hist_mask = batch.get(K.HISTORY_MASK)
            if hist_mask is None:
                hist_mask = torch.ones(batch[K.HISTORY].shape[:2], dtype=torch.bool, device=future.device)
            masks.insert(0, hist_mask.bool())
        past, mask = torch.cat(frames, 1)[:, -history_length:], torch.cat(masks, 1)[:, -history_length:]
        if past.shape[1] < history_length:  # a clip without history: pad at the oldest end, masked
            pad = history_length - past.shape[1]
            past = torch.cat([past[:, :1].expand(-1, pad, *past.shape[2:]), past], 1)
            mask = torch.cat([torch.zeros(n, pad, dtype=torch.bool, device=mask.device), mask], 1)
        second[K.HISTORY], second[K.HISTORY_MASK] = past, mask
    return first, second


@torch.no_grad()
def self_forced(
    model: Any,
    first: dict[str, Any],
    second: dict[str, Any],
    share: float,
    num_steps: int = 1,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, Any], torch.Tensor]:
    """``second`` (from :func:`split_segments`) continuing, for a random ``share`` of its clips, from the model's own
    generation of ``first`` instead of the real frames.

    The model generates the chosen clips of ``first`` in eval mode with ``num_steps`` sampling steps, as a rollout
    does; that generation replaces ``second``'s conditioning frame and the history frames it covers. The
    target frames stay the real ones.

    Returns:
        ``(second, chosen)`` with ``chosen`` the ``(B,)`` bool mask of the clips that continue from generated frames.
    """
    cond = first[K.COND_FRAME]
    chosen = torch.rand(cond.shape[0], generator=generator).to(cond.device) < share
    if not chosen.any():
        return second, chosen

    def rows(key: str) -> torch.Tensor | None:  # only the chosen clips are generated
        value = first.get(key)
        return None if value is None else value[chosen]

    was_training = model.training
    model.eval()
    try:
        gen = model.generate(rows(K.COND_FRAME), rows(K.ACTIONS), rows(K.ACTION_MASK), history=rows(K.HISTORY),
                             history_mask=rows(K.HISTORY_MASK), ee_poses=rows(K.EE_POSES), gripper=rows(K.GRIPPER),
                             camera_k=rows(K.CAMERA_K), camera_extr=rows(K.CAMERA_EXTR),
                             has_camera=rows(K.HAS_CAMERA), num_steps=num_steps, generator=generator,
                             score_success=False).frames  # fmt: skip
    finally:
        model.train(was_training)
    gen = gen.to(cond.dtype)
    out = dict(second)
    out[K.COND_FRAME] = second[K.COND_FRAME].clone()
    out[K.COND_FRAME][chosen] = gen[:, -1]
    covered = min(gen.shape[1] - 1, second[K.HISTORY].shape[1]) if second.get(K.HISTORY) is not None else 0
    if covered > 0:  # the newest history entries are the first segment's earlier future frames
        hist = second[K.HISTORY].clone()
        hist[chosen, -covered:] = gen[:, -1 - covered : -1]
        out[K.HISTORY] = hist
    return out, chosen
