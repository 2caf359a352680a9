"""Scoring of imagined rollouts: success / value scorers over a ``WorldModelEnv``'s video, and the FA-GRPO rewards
made from a rollout's graded outcome or from its noise draws (dual-noise verification)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from lightning_prophrl import constants as K
from lightning_prophrl.envs.rollout import RolloutBatch


class ClassifierScorer:
    """A ``WorldModelEnv`` success scorer from a ``VideoSuccessClassifier``: the probability of the newest frame, given
    the frames its temporal kernel sees, computed on the classifier's device and in its dtype.

    Args:
        classifier: the frame classifier (``frame_probs``); it moves with the environment (``WorldModelEnv.to``).
    """

    def __init__(self, classifier: Any):
        self.classifier = classifier
        self.frames = int(getattr(classifier, "temporal_kernel", 1))

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        """``(N, T, 3, H, W)`` -> ``(N,)`` float32 probabilities of frame ``T - 1``."""
        clip = video[:, -self.frames :]
        param = next(iter(self.classifier.parameters()), None) if isinstance(self.classifier, nn.Module) else None
        if param is not None:
            clip = clip.to(dtype=param.dtype)
        return self.classifier.frame_probs(clip)[:, -1].float()


def classifier_scorer(classifier: Any) -> ClassifierScorer:
    """A ``WorldModelEnv`` success scorer from a ``VideoSuccessClassifier`` (see :class:`ClassifierScorer`)."""
    return ClassifierScorer(classifier)


def draws_reward(batch: RolloutBatch, signal: Literal["success", "graded"] = "success",
                 reduce: Literal["mean", "min"] = "mean", floor: float = 0.0) -> torch.Tensor:  # fmt: skip
    """FA-GRPO reward from the D noise draws of a ``WorldModelEnv(draws=D)`` rollout (dual-noise verification).

    Each draw's outcome is its 0/1 success (``signal="success"``) or its graded score (``"graded"``, scores below
    ``floor`` count as 0, as in :func:`graded_reward`); ``reduce="mean"`` averages them (a rollout whose outcome
    flips with the world model's noise gets partial credit), ``"min"`` keeps the worst (success only when every draw
    succeeds: unverified successes count as failures)."""
    key = K.INFO_DRAW_SUCCESS if signal == "success" else K.INFO_DRAW_SCORE
    if key not in batch.info:
        raise KeyError(f"draws_reward needs the world model's {key!r} in the rollout info (WorldModelEnv(draws=D))")
    if reduce not in ("mean", "min"):
        raise ValueError(f"reduce must be 'mean' or 'min', got {reduce!r}")
    x = torch.as_tensor(batch.info[key], dtype=torch.float32)
    if signal == "graded":
        x = torch.where(x >= floor, x, torch.zeros_like(x))
    return x.mean(0) if reduce == "mean" else x.min(0).values


def graded_reward(batch: RolloutBatch, floor: float = 0.0) -> torch.Tensor:
    """FA-GRPO reward from a ``WorldModelEnv`` rollout: its graded outcome ``K.INFO_SCORE`` instead of the 0/1 success.

    Group normalization only needs the rewards to *rank* a group's rollouts; where imagined frames are blurrier than
    real ones the scorer's probabilities are compressed below its success threshold and a 0/1 reward is almost always
    0 (docs/history.md, round v8), while the probability still ranks successes above failures. Scores below ``floor``
    count as 0: among clear failures the differences are the scorer's noise, which the group's std normalization
    would blow up to unit advantages."""
    score = batch.info.get(K.INFO_SCORE)
    if score is None:
        raise KeyError(f"graded_reward needs the world model's {K.INFO_SCORE!r} in the rollout info (a WorldModelEnv)")
    score = torch.as_tensor(score, dtype=torch.float32)
    return torch.where(score >= floor, score, torch.zeros_like(score))
