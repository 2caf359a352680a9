"""World-model evaluation (as in the paper): held-out episodes rolled out under their ground-truth actions.

* :func:`load_eval_episodes` cuts one long clip per held-out episode (first frame, ``S * L`` actions, ``S * L`` real
  frames) with the same normalization and resizing as ``RobotClipDataModule``.
* :func:`evaluate_world_model` rolls them out with ``Prophet.rollout`` (segment-wise autoregressive) and
  scores the imagined videos with :mod:`lightning_prophrl.metrics`, next to two baselines that keep the numbers honest:
  ``copy_last`` (the first frame held still: what a model that ignores actions and dynamics scores) and ``shuffled``
  (the same model under another episode's actions: a model that follows its actions must score worse there).
* :class:`WorldModelEvalCallback` logs the result as ``wm/<metric>`` every ``every_n_epochs`` epochs;
  :class:`VideoLoggerCallback` logs real vs imagined rollouts side by side.

Metrics on ``(N, 1 + S * L, 3, H, W)`` videos whose frame 0 is the given first frame: ``psnr`` and ``ssim`` over the
``S * L`` imagined frames; ``tssim``, ``dyn_psnr``, ``flow_epe`` and ``flow_cos`` over the whole video (their first
difference / flow is the move away from the given frame).
"""

from __future__ import annotations

import importlib.util
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from lightning_prophrl import constants as K
from lightning_prophrl.actions import NormMode
from lightning_prophrl.callbacks.ema import EMACallback
from lightning_prophrl.metrics import (
    DynamicPSNR,
    FrechetVideoDistance,
    OpticalFlowMetrics,
    TemporalSSIM,
    VideoPSNR,
    VideoSSIM,
    video_to_uint8,
)

_GEOMETRY_KEYS = (K.EE_POSES, K.GRIPPER)  # per-step tensors that travel with the actions


# ---------------------------------------------------------------------------------------------------------------------
# 1. Episodes
# ---------------------------------------------------------------------------------------------------------------------
def load_eval_episodes(
    datasets: list[Any],
    num_episodes: int,
    num_segments: int,
    chunk_len: int,
    image_size: int | None = 64,
    history_len: int = 0,
    norm_mode: NormMode = "quantile",
    stats_from: str | None = None,
    start_frame: int = 0,
) -> dict[str, Any]:
    """The first ``num_episodes`` episodes of each dataset as one clip of ``num_segments * chunk_len`` steps each.

    Every rank reads the same episodes (no rank split): evaluation runs in one process.

    Args:
        datasets: dataset directories, or dicts / ``DatasetSpec`` as in ``RobotClipDataModule``.
        num_episodes: episodes per dataset.
        num_segments: rollout segments ``S``.
        chunk_len: action chunk length ``L`` of the world model.
        image_size: square frame size (None keeps the stored size).
        history_len: past frames before the start frame (masked where they do not exist).
        norm_mode: action normalization.
        stats_from: dataset whose ``stats.json`` normalizes every dataset (default: each its own, as the datamodule).
        start_frame: conditioning frame index in each episode.

    Returns:
        A collated batch: ``COND_FRAME`` ``(N, 3, H, W)``, ``FUTURE`` ``(N, S * L, 3, H, W)``, ``ACTIONS``
        ``(N, S * L, 14)``, ``ACTION_MASK``, ``EE_POSES``, ``GRIPPER``, ``CAMERA_K``, ``CAMERA_EXTR``, ``HAS_CAMERA``,
        ``CLIP_SUCCESS``, ``EPISODE_KEY`` ... (+ ``HISTORY``, ``HISTORY_MASK`` when ``history_len > 0``).
    """
    from lightning_prophrl.datamodules.clips import ClipIterable, stride_episode
    from lightning_prophrl.datamodules.robot import collate_clips, dataset_specs
    from lightning_prophrl.datamodules.shards import iter_episodes, list_shards, load_stats

    if num_episodes < 1 or num_segments < 1 or chunk_len < 1:
        raise ValueError(f"num_episodes, num_segments and chunk_len must be >= 1, got {num_episodes}, "
                         f"{num_segments}, {chunk_len}")  # fmt: skip
    specs = dataset_specs(datasets)
    if not specs:
        raise ValueError("`datasets` is empty: give at least one held-out dataset")
    stats = [load_stats(stats_from)] * len(specs) if stats_from else None
    cutter = ClipIterable(specs, history_len, num_segments * chunk_len, image_size, True, 1, 1, 1, norm_mode,
                          stats=stats, eval_mode=True)  # fmt: skip
    clips = []
    for di, spec in enumerate(specs):
        for i, ep in enumerate(iter_episodes(list_shards(spec.path))):
            if i >= num_episodes:
                break
            ep = stride_episode(ep, spec.stride)
            clips.append(cutter.make_clip(ep, min(start_frame, len(ep) - 1), di))
    return collate_clips(clips)


def shuffle_actions(episodes: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Give every episode the action sequence of another one (the ``shuffled`` baseline).

    With ``N >= 2`` episodes, episode ``i`` gets the actions (and end-effector geometry) of episode ``(i + 1) % N``;
    with a single episode its steps are permuted in time (a seeded random permutation).
    """
    out = dict(episodes)
    n, t = episodes[K.ACTIONS].shape[:2]
    keys = [k for k in (K.ACTIONS, *_GEOMETRY_KEYS) if k in episodes]
    if n >= 2:
        for k in keys:
            out[k] = episodes[k].roll(-1, dims=0)
    else:
        perm = torch.randperm(t, generator=torch.Generator().manual_seed(seed))
        for k in keys:
            out[k] = episodes[k][:, perm]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# 2. Rollouts and metrics
# ---------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def rollout_episodes(
    model: Any,
    episodes: dict[str, Any],
    num_steps: int = 4,
    seed: int = 0,
    batch_size: int = 4,
    use_action_frames: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Imagine every episode under its actions with ``model.rollout`` (mini-batches, seeded per mini-batch).

    Args:
        model: a ``Prophet`` (anything with its ``rollout`` and ``config.action_chunk_length``).
        episodes: batch of :func:`load_eval_episodes` (``ACTIONS`` of length ``S * L``).
        num_steps: Euler steps per segment.
        seed: the noise of mini-batch ``j`` comes from ``Generator().manual_seed(seed + j)``.
        batch_size: episodes per rollout call.
        use_action_frames: feed the ground-truth end-effector geometry to the action-frame stream when present.

    Returns:
        ``(video (N, 1 + S * L, 3, H, W) on CPU, success probability (N, S) or None)``.
    """
    for key in (K.COND_FRAME, K.ACTIONS):
        if key not in episodes:
            raise KeyError(f"`episodes` is missing the required key {key!r}")
    n, t, a = episodes[K.ACTIONS].shape
    chunk = int(model.config.action_chunk_length)
    if t % chunk:
        raise ValueError(f"`{K.ACTIONS}` has {t} steps, not a multiple of the model's action_chunk_length={chunk}")
    s = t // chunk
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    videos, probs = [], []
    try:
        for j, i in enumerate(range(0, n, batch_size)):
            b = {k: v[i : i + batch_size].to(device) for k, v in episodes.items() if isinstance(v, torch.Tensor)}
            bs = b[K.ACTIONS].shape[0]
            geometry = use_action_frames and K.EE_POSES in b and K.GRIPPER in b
            out = model.rollout(
                b[K.COND_FRAME],
                b[K.ACTIONS].view(bs, s, chunk, a),
                action_mask=b.get(K.ACTION_MASK),
                history=b.get(K.HISTORY),
                history_mask=b.get(K.HISTORY_MASK),
                num_steps=num_steps,
                generator=torch.Generator().manual_seed(seed + j),
                ee_poses=b[K.EE_POSES].view(bs, s, chunk, *b[K.EE_POSES].shape[2:]) if geometry else None,
                gripper=b[K.GRIPPER].view(bs, s, chunk, *b[K.GRIPPER].shape[2:]) if geometry else None,
                camera_k=b.get(K.CAMERA_K) if geometry else None,
                camera_extr=b.get(K.CAMERA_EXTR) if geometry else None,
                has_camera=b.get(K.HAS_CAMERA) if geometry else None,
            )
            videos.append(out.video.float().cpu())
            if out.success_prob is not None:
                probs.append(out.success_prob.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(videos), (torch.cat(probs) if probs else None)


class VideoMetricSet:
    """The paper's world-model metrics on full rollouts ``(B, 1 + T, 3, H, W)`` (frame 0 = the given frame).

    Args:
        motion_threshold: flow magnitude (px / frame) of the moving region of the direction cosine.
        dynamic_threshold: pixel-change threshold of ``dyn_psnr`` (in ``[-1, 1]`` units).
        fvd_encoder: frozen video encoder of an FVD-style score (``EfficientNetVideoEncoder``); None disables FVD.
    """

    def __init__(
        self, motion_threshold: float = 0.5, dynamic_threshold: float = 0.1, fvd_encoder: torch.nn.Module | None = None
    ) -> None:
        kw = {"sync_on_compute": False}  # evaluation runs in one process (rank zero)
        self.psnr, self.ssim, self.tssim = VideoPSNR(**kw), VideoSSIM(**kw), TemporalSSIM(**kw)
        self.dyn_psnr = DynamicPSNR(threshold=dynamic_threshold, **kw)
        self.flow = OpticalFlowMetrics(motion_threshold=motion_threshold, **kw)
        self.fvd = None if fvd_encoder is None else FrechetVideoDistance(encoder=fvd_encoder, **kw)

    def update(self, pred: torch.Tensor, real: torch.Tensor) -> None:
        """Accumulate imagined ``pred`` vs real ``real`` videos, both ``(B, 1 + T, 3, H, W)`` in ``[-1, 1]``."""
        pred, real = pred.float(), real.float()
        self.psnr.update(pred[:, 1:], real[:, 1:])
        self.ssim.update(pred[:, 1:], real[:, 1:])
        self.tssim.update(pred, real)
        self.dyn_psnr.update(pred, real)
        self.flow.update(pred, real)
        if self.fvd is not None:
            self.fvd.update(real, real=True)
            self.fvd.update(pred, real=False)

    def compute(self) -> dict[str, float]:
        """``{"psnr", "ssim", "tssim", "dyn_psnr", "flow_epe", "flow_cos"}`` (+ ``"fvd"``) as floats."""
        flow = self.flow.compute()
        out = {
            "psnr": self.psnr.compute(),
            "ssim": self.ssim.compute(),
            "tssim": self.tssim.compute(),
            "dyn_psnr": self.dyn_psnr.compute(),
            "flow_epe": flow["epe"],
            "flow_cos": flow["cos"],
        }
        if self.fvd is not None:
            out["fvd"] = self.fvd.compute()
        return {k: float(v) for k, v in out.items()}


def evaluate_world_model(
    model: Any,
    episodes: dict[str, Any],
    num_steps: int = 4,
    seed: int = 0,
    batch_size: int = 4,
    baselines: bool = True,
    fvd: bool = False,
    motion_threshold: float = 0.5,
    dynamic_threshold: float = 0.1,
    use_action_frames: bool = True,
) -> dict[str, float]:
    """Roll the model out on held-out episodes under their real actions and score it (no Trainer needed).

    Args:
        model: a ``Prophet``.
        episodes: batch of :func:`load_eval_episodes`.
        num_steps: Euler steps per segment.
        seed: rollout noise seed (the shuffled baseline uses the same noise, so only the actions differ).
        batch_size: episodes per rollout call.
        baselines: also score ``copy_last`` and ``shuffled``.
        fvd: also compute the EfficientNet FVD-style score (extra ``encoders``; needs >= 2 episodes).
        motion_threshold: moving-region threshold of ``flow_cos`` in pixels per frame.
        dynamic_threshold: changed-pixel threshold of ``dyn_psnr``.
        use_action_frames: feed the real end-effector geometry to the action-frame stream.

    Returns:
        ``{"psnr", "ssim", "tssim", "dyn_psnr", "flow_epe", "flow_cos"[, "fvd"]}``, the same with suffixes
        ``_copy_last`` and ``_shuffled`` (with ``baselines``), ``"success_prob"`` (mean final success probability) and
        ``"success_acc"`` (final probability > 0.5 vs ``CLIP_SUCCESS``) when the model has a success head.
    """
    encoder = None
    if fvd:
        from lightning_prophrl.metrics import EfficientNetVideoEncoder

        encoder = EfficientNetVideoEncoder()
    real = torch.cat([episodes[K.COND_FRAME][:, None], episodes[K.FUTURE]], 1).float()
    pred, success = rollout_episodes(model, episodes, num_steps, seed, batch_size, use_action_frames)
    variants = {"": pred}
    if baselines:
        variants["_copy_last"] = real[:, :1].expand_as(real)
        shuffled = shuffle_actions(episodes, seed)
        variants["_shuffled"] = rollout_episodes(model, shuffled, num_steps, seed, batch_size, use_action_frames)[0]
    results: dict[str, float] = {}
    for suffix, video in variants.items():
        metrics = VideoMetricSet(motion_threshold, dynamic_threshold, encoder)
        for i in range(0, len(real), batch_size):
            metrics.update(video[i : i + batch_size], real[i : i + batch_size])
        results.update({f"{k}{suffix}": v for k, v in metrics.compute().items()})
    if success is not None:
        results["success_prob"] = float(success[:, -1].mean())
        if K.CLIP_SUCCESS in episodes:
            label = episodes[K.CLIP_SUCCESS].float().view(-1) > 0.5
            results["success_acc"] = float(((success[:, -1] > 0.5) == label).float().mean())
    return results


# ---------------------------------------------------------------------------------------------------------------------
# 3. Callbacks
# ---------------------------------------------------------------------------------------------------------------------
class _RolloutCallbackBase(L.Callback):
    """Held-out episodes (read once, lazily, on rank zero) and the model / EMA lookup shared by the callbacks."""

    def __init__(self, datasets, num_episodes, num_segments, num_steps, every_n_epochs, every_n_steps, batch_size,
                 image_size, history_len, norm_mode, stats_from, seed, use_ema) -> None:  # fmt: skip
        super().__init__()
        if every_n_epochs < 1 or (every_n_steps is not None and every_n_steps < 1):
            raise ValueError(
                f"`every_n_epochs` and `every_n_steps` must be >= 1, got {every_n_epochs}, {every_n_steps}"
            )
        self.datasets, self.num_episodes, self.num_segments = datasets, num_episodes, num_segments
        self.num_steps, self.every_n_epochs, self.every_n_steps = num_steps, every_n_epochs, every_n_steps
        self.batch_size, self.seed, self.image_size, self.history_len = batch_size, seed, image_size, history_len
        self.norm_mode, self.stats_from, self.use_ema = norm_mode, stats_from, use_ema
        self.episodes: dict[str, Any] | None = None
        self._last_step = -1

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Evaluate / log now (rank zero; called by the hooks when due)."""
        raise NotImplementedError

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps is None or step == self._last_step or step % self.every_n_steps:
            return
        self._last_step = step
        if trainer.is_global_zero:
            self.run(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        due = self.every_n_steps is None and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if due and trainer.is_global_zero:
            self.run(trainer, pl_module)

    @staticmethod
    def _model(pl_module: L.LightningModule) -> Any:
        model = getattr(pl_module, "model", None)
        if model is None or not hasattr(model, "rollout"):
            raise TypeError(f"{type(pl_module).__name__} has no `model` with a `rollout` method (a Prophet)")
        return model

    def _episodes(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        if self.episodes is None:
            hp = getattr(getattr(trainer, "datamodule", None), "hparams", {})
            datasets = self.datasets or hp.get("val_datasets")
            if not datasets:
                raise ValueError(f"{type(self).__name__}: give `datasets` or a datamodule with `val_datasets`")
            self.episodes = load_eval_episodes(
                datasets, self.num_episodes, self.num_segments, int(self._model(pl_module).config.action_chunk_length),
                self.image_size or hp.get("image_size", 64),
                self.history_len if self.history_len is not None else hp.get("history_len", 0),
                self.norm_mode or hp.get("norm_mode", "quantile"), self.stats_from,
            )  # fmt: skip
        return self.episodes

    def _ema(self, trainer: L.Trainer) -> EMACallback | None:
        if not self.use_ema:
            return None
        return next((cb for cb in trainer.callbacks if isinstance(cb, EMACallback)), None)


class WorldModelEvalCallback(_RolloutCallbackBase):
    """Logs ``wm/psnr``, ``wm/ssim``, ``wm/tssim``, ``wm/dyn_psnr``, ``wm/flow_epe``, ``wm/flow_cos`` (+ ``wm/fvd``),
    their ``_copy_last`` / ``_shuffled`` baselines and ``wm/success_*`` at the end of every ``every_n_epochs``-th
    training epoch or every ``every_n_steps`` optimizer steps (see :func:`evaluate_world_model`). Runs on rank zero
    only and logs with ``rank_zero_only=True`` (do not monitor ``wm/*`` in ``ModelCheckpoint`` under DDP). The latest
    results are kept in ``last_results``.

    Args:
        datasets: held-out datasets (default: the datamodule's ``val_datasets``).
        num_episodes: episodes per dataset.
        num_segments: autoregressive segments ``S`` per rollout (``S * action_chunk_length`` frames).
        num_steps: Euler steps per segment.
        every_n_epochs: evaluation period in epochs (at the end of the training epoch).
        every_n_steps: evaluation period in optimizer steps instead (for long epochs); None uses ``every_n_epochs``.
        batch_size: episodes per rollout call.
        image_size: frame size (default: the datamodule's ``image_size``, else 64).
        history_len: past frames given before the first frame (default: the datamodule's ``history_len``).
        norm_mode: action normalization (default: the datamodule's).
        stats_from: dataset whose ``stats.json`` normalizes the actions (default: each dataset's own).
        seed: rollout noise seed (identical noise at every evaluation: numbers are comparable across epochs).
        use_ema: evaluate the averaged weights of an ``EMACallback`` when the trainer has one.
        baselines: also compute the ``copy_last`` and ``shuffled`` baselines (the second doubles the cost).
        fvd: also compute the EfficientNet FVD-style score (extra ``encoders``).
        motion_threshold: moving-region threshold of ``flow_cos`` in pixels per frame (UNKNOWN in the paper).
    """

    def __init__(
        self,
        datasets: list[Any] | None = None,
        num_episodes: int = 8,
        num_segments: int = 2,
        num_steps: int = 4,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        batch_size: int = 4,
        image_size: int | None = None,
        history_len: int | None = None,
        norm_mode: NormMode | None = None,
        stats_from: str | None = None,
        seed: int = 0,
        use_ema: bool = True,
        baselines: bool = True,
        fvd: bool = False,
        motion_threshold: float = 0.5,
    ) -> None:
        super().__init__(datasets, num_episodes, num_segments, num_steps, every_n_epochs, every_n_steps, batch_size,
                         image_size, history_len, norm_mode, stats_from, seed, use_ema)  # fmt: skip
        self.baselines, self.fvd, self.motion_threshold = baselines, fvd, motion_threshold
        self.last_results: dict[str, float] | None = None

    @override
    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ema = self._ema(trainer)
        with ema.averaged_weights(pl_module) if ema is not None else nullcontext():
            self.last_results = evaluate_world_model(
                self._model(pl_module), self._episodes(trainer, pl_module), self.num_steps, self.seed,
                self.batch_size, self.baselines, self.fvd, self.motion_threshold,
            )  # fmt: skip
        for key, value in self.last_results.items():
            pl_module.log(f"wm/{key}", value, rank_zero_only=True, batch_size=1)


class VideoLoggerCallback(_RolloutCallbackBase):
    """Real (top) vs imagined (bottom) rollouts of held-out episodes as an image grid, every ``every_n_epochs`` epochs
    (or ``every_n_steps`` steps).

    One row pair per episode, one column per frame (``max_frames`` evenly spaced frames, the given first frame
    included). The grid goes to every TensorBoard logger (``add_image("wm/rollouts")``; also ``add_video`` when
    ``moviepy`` is installed, which TensorBoard's video summary needs) and, as a PNG, to ``save_dir`` (default
    ``<trainer.log_dir>/wm_videos``). The latest grid ``(H, W, 3)`` uint8 is kept in ``last_grid``.

    Args:
        datasets, num_episodes, num_segments, num_steps, every_n_epochs, every_n_steps, batch_size, image_size,
        history_len, norm_mode, stats_from, seed, use_ema: as in :class:`WorldModelEvalCallback` (default 2 episodes).
        max_frames: columns of the grid.
        fps: frame rate of the TensorBoard video.
        save_dir: directory of the PNG grids (None: ``<trainer.log_dir>/wm_videos``).
    """

    def __init__(
        self,
        datasets: list[Any] | None = None,
        num_episodes: int = 2,
        num_segments: int = 2,
        num_steps: int = 4,
        every_n_epochs: int = 1,
        every_n_steps: int | None = None,
        batch_size: int = 4,
        image_size: int | None = None,
        history_len: int | None = None,
        norm_mode: NormMode | None = None,
        stats_from: str | None = None,
        seed: int = 0,
        use_ema: bool = True,
        max_frames: int = 12,
        fps: int = 4,
        save_dir: str | None = None,
    ) -> None:
        super().__init__(datasets, num_episodes, num_segments, num_steps, every_n_epochs, every_n_steps, batch_size,
                         image_size, history_len, norm_mode, stats_from, seed, use_ema)  # fmt: skip
        if max_frames < 1:
            raise ValueError(f"`max_frames` must be >= 1, got {max_frames}")
        self.max_frames, self.fps, self.save_dir = max_frames, fps, save_dir
        self.last_grid: np.ndarray | None = None

    @override
    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        episodes = self._episodes(trainer, pl_module)
        ema = self._ema(trainer)
        with ema.averaged_weights(pl_module) if ema is not None else nullcontext():
            pred, _ = rollout_episodes(self._model(pl_module), episodes, self.num_steps, self.seed, self.batch_size)
        real = torch.cat([episodes[K.COND_FRAME][:, None], episodes[K.FUTURE]], 1).float()
        self._write(trainer, real, pred)

    @rank_zero_only
    def _write(self, trainer: L.Trainer, real: torch.Tensor, pred: torch.Tensor) -> None:
        self.last_grid = rollout_grid(real, pred, self.max_frames)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("wm/rollouts", self.last_grid, trainer.global_step, dataformats="HWC")
                if importlib.util.find_spec("moviepy") is not None:
                    side_by_side = torch.cat([real, pred], -1).add(1).div(2).clamp(0, 1)  # (N, T, 3, H, 2W)
                    logger.experiment.add_video("wm/rollout_video", side_by_side, trainer.global_step, fps=self.fps)
        import cv2

        out = Path(self.save_dir or Path(trainer.log_dir or trainer.default_root_dir) / "wm_videos")
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"epoch{trainer.current_epoch:04d}_step{trainer.global_step:07d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(self.last_grid, cv2.COLOR_RGB2BGR))


def rollout_grid(real: torch.Tensor, pred: torch.Tensor, max_frames: int = 12) -> np.ndarray:
    """Tile real and imagined videos ``(N, T, 3, H, W)`` in ``[-1, 1]`` into a uint8 ``(2 N H, F W, 3)`` grid.

    Row ``2 i`` is episode ``i``'s real video, row ``2 i + 1`` its imagined one; the ``F = min(T, max_frames)``
    columns are frames ``round(linspace(0, T - 1, F))``.
    """
    if real.shape != pred.shape or real.ndim != 5:
        raise ValueError(f"`real` {tuple(real.shape)} and `pred` {tuple(pred.shape)} must be equal (N, T, 3, H, W)")
    n, t = real.shape[:2]
    cols = torch.from_numpy(np.linspace(0, t - 1, min(t, max_frames)).round().astype(np.int64))
    rows = torch.stack([real[:, cols], pred[:, cols]], 1).flatten(0, 1)  # (2N, F, 3, H, W)
    frames = video_to_uint8(rows)  # (2N, F, H, W, 3)
    return frames.permute(0, 2, 1, 3, 4).flatten(2, 3).flatten(0, 1).numpy()  # (2N H, F W, 3)
