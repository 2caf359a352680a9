"""Training the per-frame video success classifier behind ``ClassifierReward`` (the paper's reward model)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryPrecision, BinaryRecall
from typing_extensions import override

from lightning_prophrl import constants as K
from lightning_prophrl.checkpoints import build_optimizers, default_optimizer
from lightning_prophrl.datamodules.reward import FRAME_SUCCESS
from lightning_prophrl.models.reward import ClassifierReward, PersistenceRule, VideoSuccessClassifier
from lightning_prophrl.modules.policy_sft import random_shift


class RewardModelModule(L.LightningModule):
    """Binary cross-entropy on frames labelled by the simulator's per-frame success flags (``RewardDataModule``).

    The logit of the last frame of each stack is trained against ``FRAME_SUCCESS``; validation reports frame-level
    ``val/precision``, ``val/recall`` (at ``threshold``) and ``val/auc``. Episode-level quality of the resulting reward
    (persistence rule on whole videos) is measured with ``evaluate_reward_model``.

    Args:
        classifier: the per-frame success classifier.
        optimizer: optimizer factory (default Adam 3e-4, the rate measured for the small CNNs, docs/results.md).
        lr_scheduler: optional scheduler factory (stepped every optimizer step).
        pos_weight: weight of positive frames in the BCE (success frames are rare; not given by the paper,
            3 as the success head's).
        shift_pad: random-shift augmentation in pixels, the same shift for every frame of a stack (0 disables).
        threshold: probability threshold of the frame-level validation precision / recall.
        export_dir: directory the trained classifier is written to (``save_pretrained``) at the end of ``fit``, for
            ``world_model_env(reward_dir=...)`` / ``load_classifier``; None: no export.
    """

    def __init__(
        self,
        classifier: VideoSuccessClassifier,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        pos_weight: float = 3.0,
        shift_pad: int = 4,
        threshold: float = 0.5,
        export_dir: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["classifier", "optimizer", "lr_scheduler"])
        if pos_weight <= 0:
            raise ValueError(f"pos_weight must be > 0, got {pos_weight}")
        if shift_pad < 0:
            raise ValueError(f"shift_pad must be >= 0, got {shift_pad}")
        self.classifier = classifier
        self.optimizer_factory = default_optimizer(optimizer, torch.optim.Adam, lr=3e-4)
        self.scheduler_factory = lr_scheduler
        self.val_precision = BinaryPrecision(threshold=threshold)
        self.val_recall = BinaryRecall(threshold=threshold)
        self.val_accuracy = BinaryAccuracy(threshold=threshold)
        self.val_auc = BinaryAUROC()

    @override
    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, S, 3, H, W)`` frame stacks -> ``(B,)`` success logits of their last frames."""
        return self.classifier(video)[:, -1]

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "val")

    def _shared_step(self, batch: dict[str, Any], stage: str) -> torch.Tensor:
        for key in (K.VIDEO, FRAME_SUCCESS):
            if key not in batch:
                raise KeyError(f"RewardModelModule needs batch key {key!r} (RewardDataModule), got {sorted(batch)}")
        video, labels = batch[K.VIDEO], batch[FRAME_SUCCESS].float()
        if stage == "train" and self.hparams.shift_pad > 0:  # one shift per stack: fold frames into channels
            video = random_shift(video.flatten(1, 2), self.hparams.shift_pad).view_as(video)
        logits = self(video)
        pos_weight = torch.tensor(self.hparams.pos_weight, device=logits.device)
        loss = F.binary_cross_entropy_with_logits(logits, labels, pos_weight=pos_weight)
        bs = labels.shape[0]
        if stage == "train":
            acc = ((logits > 0) == (labels > 0.5)).float().mean()
            self.log_dict({"train/loss": loss, "train/accuracy": acc}, prog_bar=True, batch_size=bs)
            return loss
        probs, targets = torch.sigmoid(logits), (labels > 0.5).long()
        for metric in (self.val_precision, self.val_recall, self.val_accuracy, self.val_auc):
            metric.update(probs, targets)
        self.log("val/loss", loss, prog_bar=True, batch_size=bs, sync_dist=True)
        self.log_dict({"val/precision": self.val_precision, "val/recall": self.val_recall,
                       "val/accuracy": self.val_accuracy, "val/auc": self.val_auc}, batch_size=bs)  # fmt: skip
        return loss

    @override
    def configure_optimizers(self) -> Any:
        return build_optimizers(self.classifier.parameters(), self.optimizer_factory, self.scheduler_factory)

    @override
    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        stack = getattr(getattr(dm, "hparams", None), "frame_stack", None)
        if stack is not None and stack < self.classifier.temporal_kernel:
            rank_zero_warn(
                f"RewardDataModule.frame_stack={stack} is shorter than the classifier's temporal_kernel="
                f"{self.classifier.temporal_kernel}: training logits see fewer frames than at scoring time"
            )

    @override
    def on_train_end(self) -> None:
        if self.hparams.export_dir is not None and self.trainer.is_global_zero:
            self.classifier.save_pretrained(self.hparams.export_dir)

    def as_reward(self, rule: PersistenceRule | None = None, batch_size: int = 16) -> ClassifierReward:
        """The trained classifier as a video :class:`RewardModel` (default rule: 3 frames above 0.9)."""
        return ClassifierReward(self.classifier, rule, batch_size=batch_size)
