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
from lightning_prophrl.callbacks.open_loop import (  # noqa: F401 (re-exported)
    _GEOMETRY_KEYS,
    VideoMetricSet,
    evaluate_world_model,
    load_eval_episodes,
    rollout_episodes,
    rollout_grid,
    shuffle_actions,
    teacher_forced_episodes,
)


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
