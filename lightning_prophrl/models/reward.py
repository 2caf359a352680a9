"""Trajectory reward models: a common interface, the simulator oracle and a trainable video success classifier.

Every video reward model implements :class:`RewardModel`: ``(videos, instructions, lengths) -> (N,)`` binary rewards.
:class:`RolloutReward` adapts one to ``collect_rollouts(reward_fn=...)`` / ``FAGRPOModule(reward_model=...)``, which
pass a ``RolloutBatch`` (``RolloutBatch -> (N,)``, the one signature every RL reward has). Three reward sources:

* :class:`SimulatorOracle`: the environment's ground-truth success (already a ``RolloutBatch`` callable, not a
  :class:`RewardModel`).
* :class:`ClassifierReward`: a small :class:`VideoSuccessClassifier` scoring every frame, turned into an episode verdict
  by a :class:`PersistenceRule` (k consecutive frames above a threshold: "any frame above 0.5" is useless on
  imagined videos).
* ``VLMJudgeReward`` (``lightning_prophrl.models.vlm_judge``): the paper's Qwen2.5-VL judge with majority voting.

:func:`evaluate_reward_model` reports precision / recall / kappa against ground-truth outcomes; the paper's reward-model
diagnostic (Fig. 14): recall matters most for FA-GRPO.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import Tensor, nn

from lightning_prophrl import constants as K
from lightning_prophrl.constants import INFO_VIDEO_LENGTHS  # noqa: F401 (re-exported: the key was defined here)
from lightning_prophrl.models.encoders import ConvImageEncoder

if TYPE_CHECKING:
    from lightning_prophrl.envs.rollout import RolloutBatch


@runtime_checkable
class RewardModel(Protocol):
    """Scores whole episode videos with a binary success reward."""

    def __call__(self, videos: Tensor, instructions: list[str], lengths: Tensor | None = None) -> Tensor:
        """Score ``N`` videos.

        Args:
            videos: ``(N, T, 3, H, W)`` float in ``[-1, 1]``; frames past ``lengths[n]`` are padding.
            instructions: ``N`` task instructions.
            lengths: ``(N,)`` number of real frames per video (``None``: all ``T`` frames are real).

        Returns:
            ``(N,)`` float rewards in ``{0, 1}``.
        """
        ...


class VideoRewardModel(abc.ABC):
    """Base class of the library's video reward models (``ClassifierReward``, ``VLMJudgeReward``).

    Any callable with the :class:`RewardModel` signature works from Python; subclassing this base also lets
    LightningCLI / jsonargparse build the model from a ``class_path`` in YAML (an argument typed with a ``Protocol``
    that has ``__call__`` is read as a callable type and cannot be built that way).
    """

    @abc.abstractmethod
    def __call__(self, videos: Tensor, instructions: list[str], lengths: Tensor | None = None) -> Tensor:
        """``(N, T, 3, H, W)`` videos, ``N`` instructions, ``(N,)`` lengths -> ``(N,)`` rewards in ``{0, 1}``."""


def check_videos(videos: Any, instructions: Sequence[str] | None, lengths: Any) -> Tensor:
    """Validate a reward model's inputs and return the lengths as an ``(N,)`` long tensor on the CPU.

    Raises:
        ValueError: naming the argument whose shape or values are wrong.
    """
    if not isinstance(videos, Tensor) or videos.ndim != 5 or videos.shape[2] != 3:
        shape = tuple(videos.shape) if isinstance(videos, Tensor) else type(videos).__name__
        raise ValueError(f"videos must be an (N, T, 3, H, W) float tensor in [-1, 1], got {shape}")
    n, t = videos.shape[:2]
    if t < 1:
        raise ValueError("videos must have at least one frame (T >= 1)")
    if instructions is not None and (isinstance(instructions, str) or len(instructions) != n):
        raise ValueError(f"instructions must be a list of N={n} strings, got {instructions!r:.80}")
    if lengths is None:
        return torch.full((n,), t, dtype=torch.long)
    lengths = torch.as_tensor(lengths).detach().cpu().long().reshape(-1)
    if lengths.numel() != n or (lengths < 1).any() or (lengths > t).any():
        raise ValueError(f"lengths must be (N={n},) integers in [1, T={t}], got {lengths.tolist()}")
    return lengths


def rollout_video_lengths(batch: RolloutBatch) -> Tensor:
    """Real frames per rollout video of a ``RolloutBatch``.

    Taken from ``batch.info[K.INFO_VIDEO_LENGTHS]`` when the environment reported it; otherwise derived from the
    ``BatchedEnv`` video contract (the reset frame plus one frame per chunk the rollout executed, i.e.
    ``1 + alive[:, n].sum()``) when that is consistent with the video length; otherwise every frame counts.
    """
    t = int(batch.videos.shape[1])
    info = batch.info or {}
    if info.get(K.INFO_VIDEO_LENGTHS) is not None:
        return torch.as_tensor(info[K.INFO_VIDEO_LENGTHS]).long().reshape(-1)
    alive = torch.as_tensor(batch.alive)
    if alive.ndim == 2 and alive.shape[0] + 1 == t:
        return 1 + alive.long().sum(0)
    return torch.full((batch.videos.shape[0],), t, dtype=torch.long)


class RolloutReward:
    """Adapter: a :class:`RewardModel` as the ``reward_fn`` of ``collect_rollouts`` (``RolloutBatch -> (N,)``).

    Instructions come from the first observation (``batch.obs[0][INSTRUCTION]``), lengths from
    :func:`rollout_video_lengths`.

    Args:
        reward_model: any video reward model (``ClassifierReward``, ``VLMJudgeReward``, or a callable with the
            :class:`RewardModel` signature).
    """

    def __init__(self, reward_model: VideoRewardModel):
        if not callable(reward_model):
            raise TypeError(f"reward_model must be callable, got {type(reward_model).__name__}")
        self.reward_model = reward_model

    def __call__(self, batch: RolloutBatch) -> Tensor:
        """``RolloutBatch`` -> ``(N,)`` float32 rewards of the wrapped model on the batch's videos."""
        if batch.videos is None:
            raise ValueError(
                "RolloutBatch.videos is None: the environment has no video(), a video reward model needs one"
            )
        n = batch.videos.shape[0]
        instructions = list(batch.obs[0][K.INSTRUCTION]) if batch.obs else [""] * n
        rewards = self.reward_model(batch.videos, instructions, rollout_video_lengths(batch))
        return torch.as_tensor(rewards, dtype=torch.float32).reshape(n)


class SimulatorOracle:
    """Reward = the environment's own success flag (``RolloutBatch.success``), as 0/1 floats.

    The ground truth in a simulator; with a world-model environment ``success`` is the imagined outcome instead, so
    this is only an oracle for real simulators. Use it as ``collect_rollouts(reward_fn=SimulatorOracle())``.
    """

    def __call__(self, batch: RolloutBatch) -> Tensor:
        """``RolloutBatch`` -> ``(N,)`` float32 rewards in ``{0, 1}``."""
        return (torch.as_tensor(batch.success).reshape(-1) > 0).float()


class PersistenceRule:
    """Episode success = ``k`` consecutive real frames with probability above ``threshold``.

    Works on any per-step probability sequence: per-frame classifier outputs, or a world model's per-segment success
    probabilities (a first world-model probe used 0.5 for 2 chunks on those).

    Args:
        threshold: a frame counts when its probability is strictly above this (0.9: a first probe's bridged classifier
            gave P 0.89 / R 0.80 on imagined episodes with 3 x 0.9).
        k: consecutive frames required (>= 1).
    """

    def __init__(self, threshold: float = 0.9, k: int = 3):
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.threshold, self.k = float(threshold), int(k)

    def completion_index(self, probs: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Frame at which the first run of ``k`` frames above the threshold completes, or -1.

        Args:
            probs: ``(N, T)`` per-frame probabilities.
            lengths: ``(N,)`` real frames; frames at or past ``lengths[n]`` never count.

        Returns:
            ``(N,)`` long, the index ``t`` of the k-th frame of the first qualifying run (-1 when there is none).
        """
        if probs.ndim != 2:
            raise ValueError(f"probs must be (N, T), got {tuple(probs.shape)}")
        n, t = probs.shape
        lengths = torch.full((n,), t, dtype=torch.long) if lengths is None else torch.as_tensor(lengths).long()
        steps = torch.arange(t, device=probs.device)
        above = (probs > self.threshold) & (steps[None, :] < lengths.to(probs.device)[:, None])
        if t < self.k:
            return torch.full((n,), -1, dtype=torch.long, device=probs.device)
        runs = above.unfold(1, self.k, 1).all(-1)  # (N, T - k + 1): window starting at s is all above
        first = torch.where(runs, steps[None, : runs.shape[1]], t).min(1).values
        return torch.where(first < t, first + self.k - 1, torch.full_like(first, -1))

    def __call__(self, probs: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``(N, T)`` probabilities (+ ``(N,)`` lengths) -> ``(N,)`` bool episode success."""
        return self.completion_index(probs, lengths) >= 0


class VideoSuccessClassifier(ModelMixin, ConfigMixin):
    """Per-frame success classifier: a small GroupNorm CNN per frame, an optional causal temporal conv, a logit head.

    With ``temporal_kernel = k > 1`` the logit of frame ``t`` sees frames ``t - k + 1 .. t`` (the first frame is
    repeated before the start), so training on stacks of ``k`` frames labelled by their last frame reproduces exactly
    what the classifier computes on a whole video. A diffusers model: ``save_pretrained`` writes its config and
    weights, ``from_pretrained`` rebuilds it (``RewardModelModule(export_dir=...)`` exports one after training).

    Args:
        feature_dim: width of the per-frame features.
        channels: channels of the stride-2 CNN stages (16-32-64-64 by default, sized for 64 px).
        groups: GroupNorm groups (must divide every entry of ``channels``).
        temporal_kernel: frames seen by each logit (1: a pure per-frame classifier).
    """

    @register_to_config
    def __init__(
        self,
        feature_dim: int = 128,
        channels: Sequence[int] = (16, 32, 64, 64),
        groups: int = 8,
        temporal_kernel: int = 1,
    ):
        super().__init__()
        if temporal_kernel < 1:
            raise ValueError(f"temporal_kernel must be >= 1, got {temporal_kernel}")
        self.temporal_kernel = int(temporal_kernel)
        # 1. per-frame encoder
        self.encoder = ConvImageEncoder(out_dim=feature_dim, channels=tuple(channels), groups=groups)
        # 2. causal temporal mixing (residual)
        self.temporal = nn.Conv1d(feature_dim, feature_dim, temporal_kernel) if temporal_kernel > 1 else None
        # 3. logit head
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(feature_dim, 1))

    def forward(self, videos: Tensor) -> Tensor:
        """``(N, T, 3, H, W)`` in ``[-1, 1]`` -> ``(N, T)`` per-frame success logits."""
        check_videos(videos, None, None)
        n, t = videos.shape[:2]
        feats = self.encoder(videos.flatten(0, 1)).view(n, t, -1)
        if self.temporal is not None:
            x = F.pad(feats.transpose(1, 2), (self.temporal_kernel - 1, 0), mode="replicate")
            feats = feats + F.silu(self.temporal(x)).transpose(1, 2)
        return self.head(feats).squeeze(-1)

    @torch.no_grad()
    def frame_probs(self, videos: Tensor, batch_size: int = 16) -> Tensor:
        """Per-frame success probabilities ``(N, T)`` float32 on the CPU of ``(N, T, 3, H, W)`` videos, ``batch_size``
        videos per pass on the classifier's device and in its dtype.

        Runs in eval mode (restoring the previous mode) without gradients.
        """
        check_videos(videos, None, None)
        was_training = self.training
        self.eval()
        try:
            param = next(self.parameters())
            out = [torch.sigmoid(self(v.to(param.device, param.dtype))).float().cpu()
                   for v in videos.split(max(1, batch_size))]  # fmt: skip
        finally:
            self.train(was_training)
        return torch.cat(out)


class ClassifierReward(VideoRewardModel):
    """A :class:`RewardModel` from a per-frame classifier and a persistence rule.

    The classifier is task-specific (trained on one task's data), so the instructions are not used.

    Args:
        classifier: the trained per-frame classifier.
        rule: turns per-frame probabilities into an episode verdict (default 3 frames above 0.9).
        checkpoint: optional ``RewardModelModule`` Lightning checkpoint whose ``classifier.*`` weights are loaded.
        batch_size: videos per classifier pass.
    """

    def __init__(
        self,
        classifier: VideoSuccessClassifier,
        rule: PersistenceRule | None = None,
        checkpoint: str | None = None,
        batch_size: int = 16,
    ):
        self.classifier, self.rule, self.batch_size = classifier, rule or PersistenceRule(), batch_size
        if checkpoint is not None:
            load_classifier_weights(classifier, checkpoint)

    def frame_probs(self, videos: Tensor) -> Tensor:
        """``(N, T, 3, H, W)`` -> ``(N, T)`` per-frame success probabilities."""
        return self.classifier.frame_probs(videos, self.batch_size)

    def __call__(self, videos: Tensor, instructions: list[str], lengths: Tensor | None = None) -> Tensor:
        lengths = check_videos(videos, instructions, lengths)
        return self.rule(self.frame_probs(videos), lengths).float()


def load_classifier_weights(classifier: nn.Module, checkpoint: str) -> dict[str, Any]:
    """Load ``classifier.*`` weights from a ``RewardModelModule`` checkpoint; returns its hyper-parameters."""
    from lightning_prophrl.checkpoints import load_submodule_weights

    return load_submodule_weights(classifier, checkpoint, "classifier")


def binary_report(predictions: Tensor, labels: Tensor) -> dict[str, float]:
    """Confusion counts and scores of binary predictions against labels (0/1 or bool, any shape, same numel).

    Returns:
        ``precision``, ``recall``, ``f1``, ``accuracy``, Cohen's ``kappa`` (the measure of the closed-loop
        agreement gate) and the counts ``tp``, ``fp``, ``fn``, ``tn``. A score whose denominator is zero is 0.
    """
    pred = torch.as_tensor(predictions).reshape(-1).bool()
    true = torch.as_tensor(labels).reshape(-1).bool()
    if pred.numel() != true.numel():
        raise ValueError(f"predictions ({pred.numel()}) and labels ({true.numel()}) must have the same size")
    tp, fp = int((pred & true).sum()), int((pred & ~true).sum())
    fn, tn = int((~pred & true).sum()), int((~pred & ~true).sum())
    n = tp + fp + fn + tn

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else 0.0

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    observed = ratio(tp + tn, n)
    expected = ratio((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn), n * n)
    return {
        "precision": precision,
        "recall": recall,
        "f1": ratio(2 * precision * recall, precision + recall),
        "accuracy": observed,
        "kappa": ratio(observed - expected, 1.0 - expected),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def evaluate_reward_model(
    reward_model: RewardModel,
    videos: Tensor,
    lengths: Tensor | None,
    labels: Tensor,
    instructions: list[str] | None = None,
) -> dict[str, float]:
    """Score held-out episode videos and compare with their ground-truth outcomes (e.g. the simulator's success).

    Args:
        reward_model: the model under test.
        videos: ``(N, T, 3, H, W)`` float in ``[-1, 1]``.
        lengths: ``(N,)`` real frames per video, or None.
        labels: ``(N,)`` ground-truth success (0/1 or bool).
        instructions: ``N`` instructions (default empty strings, enough for task-specific classifiers).

    Returns:
        :func:`binary_report` of the model's rewards against ``labels``.
    """
    n = videos.shape[0] if isinstance(videos, Tensor) else 0
    instructions = [""] * n if instructions is None else list(instructions)
    lengths = check_videos(videos, instructions, lengths)
    if torch.as_tensor(labels).numel() != n:
        raise ValueError(f"labels must have N={n} entries, got {torch.as_tensor(labels).numel()}")
    rewards = torch.as_tensor(reward_model(videos, instructions, lengths)).reshape(-1)
    return binary_report(rewards > 0.5, torch.as_tensor(labels).reshape(-1) > 0.5)


def load_classifier(out_dir: str | Path) -> VideoSuccessClassifier:
    """A saved :class:`VideoSuccessClassifier`, in eval mode: a ``save_pretrained`` directory (``config.json``, as
    ``RewardModelModule(export_dir=...)`` writes), or what :func:`lightning_prophrl.recipes.reward.train_classifier`
    wrote (``done.json`` with its arguments, ``classifier.pt``)."""
    from lightning_prophrl.stage_cache import load_done

    if (Path(out_dir) / "config.json").is_file():
        return VideoSuccessClassifier.from_pretrained(str(out_dir)).eval()
    classifier = VideoSuccessClassifier(**load_done(out_dir)["classifier"])
    classifier.load_state_dict(torch.load(Path(out_dir) / "classifier.pt", weights_only=True))
    return classifier.eval()
