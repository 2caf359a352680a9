"""Success-classifier recipes: the Prophet training setup a reward must match, strided datasets, training the
classifier on real (and imagined) episodes, loading it, and its precision / recall, the success head's and the
real-vs-imagined domain gap.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.constants import CONFIG_DIR
from lightning_prophrl.datamodules.shards import Episode, ShardWriter, iter_episodes
from lightning_prophrl.models.reward import load_classifier  # noqa: F401 (re-exported)
from lightning_prophrl.stage_cache import run_stage

CLASSIFIER_YAML = CONFIG_DIR / "reward" / "classifier_tiny.yaml"


SETUP_KEYS = ("stride", "image_size", "camera", "max_steps", "chunk_len")


NORM_MODE = "quantile"  # RobotClipDataModule's default, the normalization of the Prophet study's training clips


# ---------------------------------------------------------------------------------------------------------------------
# 1. The Prophet training setup
# ---------------------------------------------------------------------------------------------------------------------
def training_setup(model_dir: str | Path, levels: int = 3) -> dict[str, Any] | None:
    """The data settings a Prophet was trained with, from the Prophet study's ``config.json`` above its model.

    Looks in ``model_dir`` and its ``levels`` parents for a ``config.json`` holding ``stride`` and ``image_size`` (the
    model's own diffusers ``config.json`` has neither).

    Returns:
        ``{stride, image_size, camera, max_steps, chunk_len, "source": path}`` (None where a key is missing), or None.
    """
    model_dir = Path(model_dir).resolve()
    for d in [model_dir, *model_dir.parents[:levels]]:
        path = d / "config.json"
        try:
            cfg = json.loads(path.read_text()) if path.is_file() else None
        except json.JSONDecodeError:
            continue
        if isinstance(cfg, dict) and {"stride", "image_size"} <= set(cfg):
            return {**{k: cfg.get(k) for k in SETUP_KEYS}, "source": str(path)}
    return None


def check_setup(setup: dict[str, Any] | None, **values: Any) -> None:
    """Raise a ``ValueError`` naming every ``values`` entry that differs from the Prophet's training ``setup``."""
    if setup is None:
        return
    bad = [f"{k}={v!r} (trained with {setup[k]!r})" for k, v in values.items() if setup.get(k) not in (None, v)]
    if bad:
        raise ValueError(f"settings differ from the Prophet's training setup in {setup['source']}: {', '.join(bad)}")


# ---------------------------------------------------------------------------------------------------------------------
# 2. Strided and imagined datasets
# ---------------------------------------------------------------------------------------------------------------------
def strided_segments(ep: Episode, stride: int, chunk_len: int) -> Episode:
    """``stride_episode`` cut to ``1 + S * chunk_len`` frames (the first frame and ``S`` whole rollout segments).

    Frames, actions, ``success_steps``, state, end-effector poses and per-step ``.npy`` extras are cut alike; the
    dropped tail (fewer than ``chunk_len`` frames) is recorded in ``meta["dropped_tail_frames"]``.

    Raises:
        ValueError: the strided episode is shorter than one segment.
    """
    from lightning_prophrl.datamodules.clips import stride_episode

    if stride < 1 or chunk_len < 1:
        raise ValueError(f"stride and chunk_len must be >= 1, got {stride}, {chunk_len}")
    strided = stride_episode(ep, stride)
    n = 1 + (len(strided) - 1) // chunk_len * chunk_len
    if n < 1 + chunk_len:
        raise ValueError(f"episode {ep.key!r}: {len(ep)} frames at stride {stride} is shorter than one segment of "
                         f"{chunk_len} frames")  # fmt: skip
    meta = dict(strided.meta, dropped_tail_frames=len(strided) - n)
    if "success_steps" in meta:
        meta["success_steps"] = list(meta["success_steps"][:n])
    extras = {name: _cut_extra(name, value, len(ep), stride, n) for name, value in ep.extras.items()}
    return Episode(ep.key, strided.frames[:n], strided.actions[:n], ep.action_mask, meta,
                   None if strided.state is None else strided.state[:n],
                   None if strided.ee_poses is None else strided.ee_poses[:n], extras)  # fmt: skip


def _cut_extra(name: str, value: Any, length: int, stride: int, n: int) -> Any:
    """A per-step ``.npy`` extra (first dimension ``length``) strided and cut to ``n``; anything else unchanged."""
    arr = (
        np.load(io.BytesIO(value), allow_pickle=False) if isinstance(value, bytes) and name.endswith(".npy") else value
    )
    if isinstance(arr, np.ndarray) and arr.ndim >= 1 and arr.shape[0] == length:
        return arr[::stride][:n]
    return value


def stride_dataset(source_dir: str | Path, out_dir: str | Path, stride: int, chunk_len: int = 1) -> dict[str, Any]:
    """Write every episode of ``source_dir`` as :func:`strided_segments` to ``out_dir`` (cached); returns ``done.json``."""

    def build(tmp: Path) -> dict[str, Any]:
        n = 0
        with ShardWriter(tmp, f"{Path(source_dir).name}_stride{stride}") as writer:
            for ep in iter_episodes(source_dir):
                writer.write(strided_segments(ep, stride, chunk_len))
                n += 1
        return {"episodes": n}

    args = {"source_dir": source_dir, "stride": stride, "chunk_len": chunk_len}
    return run_stage(Path(out_dir), args, build)


# ---------------------------------------------------------------------------------------------------------------------
# 3. Classifier: training and episode-level evaluation
# ---------------------------------------------------------------------------------------------------------------------
def classifier_settings(path: str | Path = CLASSIFIER_YAML) -> dict[str, Any]:
    """``{"classifier": VideoSuccessClassifier kwargs, "pos_weight", "shift_pad", "lr"}`` from the classifier YAML."""
    import yaml

    model = yaml.safe_load(Path(path).read_text())["model"]["init_args"]
    return {"classifier": dict(model["classifier"]["init_args"]), "pos_weight": float(model["pos_weight"]),
            "shift_pad": int(model["shift_pad"]), "lr": float(model["optimizer"]["init_args"]["lr"])}  # fmt: skip


def train_classifier(
    datasets: list[str],
    out_dir: str | Path,
    weights: list[float] | None = None,
    steps: int = 500,
    seed: int = 0,
    batch_size: int = 64,
    image_size: int = 64,
    log_dir: str | Path | None = None,
    label: str = "success",
) -> dict[str, Any]:
    """Train the per-frame success classifier on a mixture of labelled episode directories (cached).

    With ``label="outcome"`` the same network learns the episodes' eventual success from each frame instead
    (``datamodules.reward.frame_labels``): a value head, trained with unweighted BCE (its positives are not rare).

    Args:
        datasets: shard directories (``RewardDataModule``; every episode trains, none is held out).
        out_dir: stage directory; the weights go to ``<out_dir>/classifier.pt``.
        weights: mixture weights (default uniform).
        steps: optimizer steps (the shared budget).
        seed: seeds the weights and the sample stream.
        batch_size: frames per step.
        image_size: frame size.
        log_dir: TensorBoard directory (default ``<out_dir>/tb``).
        label: ``"success"`` (per-frame success flags) or ``"outcome"`` (the value head).

    Returns:
        ``done.json``: ``classifier`` kwargs, ``steps``, ``seconds``, ``final_train_loss``, the arguments.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    args = {"datasets": [str(Path(d).resolve()) for d in datasets], "weights": weights, "steps": steps, "seed": seed,
            "batch_size": batch_size, "image_size": image_size}  # fmt: skip
    if label != "success":  # success classifiers keep the cache key they always had
        args["label"] = label
    name = Path(out_dir).name
    # the default TensorBoard directory lives in the stage's partial directory and is published with it
    return run_stage(Path(out_dir), args, lambda tmp: _fit_classifier(tmp, name, log_dir or tmp / "tb", **args))


def _fit_classifier(tmp: Path, name: str, log_dir, datasets, weights, steps, seed, batch_size, image_size,
                    label="success"):  # fmt: skip
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_prophrl.datamodules.reward import RewardDataModule
    from lightning_prophrl.models.reward import VideoSuccessClassifier
    from lightning_prophrl.modules.reward_model import RewardModelModule

    s = classifier_settings()
    L.seed_everything(seed, workers=True, verbose=False)
    module = RewardModelModule(VideoSuccessClassifier(**s["classifier"]), lambda p: torch.optim.Adam(p, lr=s["lr"]),
                               pos_weight=s["pos_weight"] if label == "success" else 1.0,
                               shift_pad=s["shift_pad"])  # fmt: skip
    dm = RewardDataModule(datasets, weights, image_size=image_size, batch_size=batch_size, val_fraction=0.0,
                          samples_per_epoch=steps * batch_size, seed=seed, label=label)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, limit_val_batches=0,
                        num_sanity_val_steps=0, logger=TensorBoardLogger(str(log_dir), name=name),
                        log_every_n_steps=min(25, steps), enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False)  # fmt: skip
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    torch.save(module.classifier.state_dict(), tmp / "classifier.pt")
    loss = trainer.callback_metrics.get("train/loss")
    return {"classifier": s["classifier"], "steps": int(trainer.global_step), "seconds": time.perf_counter() - t0,
            "final_train_loss": None if loss is None else float(loss)}  # fmt: skip


def evaluate_classifier(classifier: Any, data_dir: str | Path, threshold: float = 0.9, k: int = 3,
                        image_size: int = 64) -> dict[str, Any]:  # fmt: skip
    """Episode-level verdicts of ``ClassifierReward`` on every episode of ``data_dir`` against its ``success``.

    Returns:
        ``binary_report`` (precision, recall, f1, accuracy, kappa, tp, fp, fn, tn) + ``episodes``, ``success_rate``
        (simulator), ``predicted_rate`` and ``frame_auc`` (per-frame probabilities vs ``success_steps``; None when
        the frames hold one class only).
    """
    from torchmetrics.functional.classification import binary_auroc

    from lightning_prophrl.datamodules.reward import frame_labels, load_episode_videos
    from lightning_prophrl.models.reward import ClassifierReward, PersistenceRule, evaluate_reward_model

    eps = load_episode_videos(str(data_dir), split=None, image_size=image_size)
    reward = ClassifierReward(classifier, PersistenceRule(threshold, k))
    report = evaluate_reward_model(reward, eps[K.VIDEO], eps["lengths"], eps[K.SUCCESS])
    # frame level: the same episodes in the same order (load_episode_videos reads every frame with frame_stride=1)
    flags = [frame_labels(ep) for ep in iter_episodes(data_dir, decode_frames=False)]
    probs = reward.frame_probs(eps[K.VIDEO])
    scores = torch.cat([probs[i, : len(f)] for i, f in enumerate(flags)])
    labels = torch.from_numpy(np.concatenate(flags)).long()
    auc = float(binary_auroc(scores, labels)) if 0 < int(labels.sum()) < len(labels) else None
    n = len(eps[K.SUCCESS])
    return {**report, "episodes": n, "success_rate": (report["tp"] + report["fn"]) / n,
            "predicted_rate": (report["tp"] + report["fp"]) / n, "frame_auc": auc}  # fmt: skip


def success_head_report(imagined_dir: str | Path, threshold: float = 0.5, k: int = 2) -> dict[str, Any] | None:
    """Prophet's own success head on its imagined episodes (per-segment probabilities, ``k`` above ``threshold``)."""
    from lightning_prophrl.models.reward import PersistenceRule, binary_report

    probs, labels = [], []
    for ep in iter_episodes(imagined_dir, decode_frames=False):
        if ep.meta["imagined"]["success_prob"] is None:
            return None
        probs.append(torch.tensor(ep.meta["imagined"]["success_prob"]))
        labels.append(ep.success)
    if len({len(p) for p in probs}) != 1:
        return None
    verdict = PersistenceRule(threshold, min(k, len(probs[0])))(torch.stack(probs))
    report = binary_report(verdict, torch.tensor(labels))
    return {**report, "episodes": len(labels), "success_rate": float(np.mean(labels)),
            "predicted_rate": float(verdict.float().mean()), "frame_auc": None}  # fmt: skip


def domain_gap(real_dir: str | Path, imagined_dir: str | Path, sheet: str | Path | None = None,
               episodes: int = 4) -> dict[str, Any]:  # fmt: skip
    """How far imagined episodes are from their real twins (same keys, same lengths, e.g. the held-out sets).

    Args:
        real_dir: real strided episodes (:func:`stride_dataset`).
        imagined_dir: their imagined twins (:func:`imagine_dataset`).
        sheet: optional PNG path of a contact sheet (per episode: the real row above the imagined row).
        episodes: episodes on the sheet.

    Returns:
        ``{"psnr": imagined vs real, "psnr_copy_first": the first frame held still vs real}`` in dB over frames
        ``1..`` (frame 0 is given), and ``"contact_sheet"`` when written.
    """
    from lightning_prophrl.datamodules.reward import load_episode_videos
    from lightning_prophrl.metrics import frame_psnr

    real = load_episode_videos(str(real_dir), split=None, image_size=None)
    img = load_episode_videos(str(imagined_dir), split=None, image_size=None)
    if real[K.EPISODE_KEY] != img[K.EPISODE_KEY] or not torch.equal(real["lengths"], img["lengths"]):
        raise ValueError(f"{imagined_dir} does not hold the episodes of {real_dir} (keys or lengths differ)")
    r, i = real[K.VIDEO], img[K.VIDEO]
    valid = torch.arange(1, r.shape[1])[None] < real["lengths"][:, None]  # (N, T - 1), padding excluded
    out: dict[str, Any] = {
        "psnr": float(frame_psnr(i[:, 1:], r[:, 1:])[valid].mean()),
        "psnr_copy_first": float(frame_psnr(r[:, :1].expand_as(r)[:, 1:], r[:, 1:])[valid].mean()),
    }
    if sheet is not None:
        from lightning_prophrl.recipes.prophet_report import contact_sheet

        out["contact_sheet"] = contact_sheet([r, i], sheet, episodes)
    return out
