"""The domain-bridged reward classifier study (paper: reward; issue 5): does training the video success classifier on
Prophet-imagined episodes as well as real ones make it a better judge of imagined rollouts?

Stages (``stage_cache.run_stage``: each writes ``done.json`` with the arguments that made it; a rerun with the same
arguments is skipped, one with other arguments is refused; outputs appear atomically, built under ``<dir>.partial``
and renamed when complete):

1. :func:`generate_reward_data`: real noisy-expert Meta-World episodes (``generate_metaworld``; per-episode action
   noise in ``[noise, noise_max]``, ``stop_at_success=False``) for training (seeds ``600..``) and held out (``700..``),
   disjoint from the Prophet study's target seeds (``500..519`` train, ``800..819`` eval).
2. :func:`stride_dataset`: each real set time-subsampled as Prophet's training data was (``stride_episode``) and cut
   to whole rollout segments (:func:`strided_segments`).
3. :func:`imagine_dataset`: every real episode imagined by Prophet from its first frame under its own actions; frames
   imagined, everything else (actions, per-frame ``success_steps``, ``success``) the real episode's.
4. :func:`train_classifier`: ``RewardModelModule`` (``configs/reward/classifier_tiny.yaml``'s classifier and loss)
   twice with the same steps, batch and seed: on the real strided episodes ("real-only"), and on the equal-weight
   mixture of the real strided and the imagined episodes ("bridged").
5. :func:`evaluate_classifier`: each classifier as ``ClassifierReward`` (persistence rule: ``k`` consecutive frames
   above ``threshold``) on the held-out real strided episodes and on their imagined twins, against the simulator's
   success: precision, recall, kappa and confusion counts (``binary_report``), plus the frame-level AUC against the
   per-frame flags. For reference the table also scores Prophet's own success head on the imagined episodes
   (:func:`success_head_report`), and the footer gives the imagined-vs-real PSNR (:func:`domain_gap`, with a contact
   sheet ``imagined_vs_real.png``).
6. :func:`reward_study`: all of it; ``results.md`` / ``results.json`` / ``config.json`` under ``out``.

Decisions:

* Like with like: every classifier trains and is evaluated on strided videos (one frame per ``stride`` simulator
  steps, cut to whole segments). Imagined videos only exist at Prophet's frame rate, so the real data is strided the
  same way rather than scored at 80 fps; the persistence rule's ``k`` frames then span the same time (``k * stride``
  simulator steps) on real and imagined videos, and a real episode and its imagined twin have identical lengths,
  actions and labels. The classifier is per-frame (``temporal_kernel=1``, ``frame_stack=1``), so no stacking stride
  is involved.
* The imagined episodes keep the real per-frame labels: they answer "did the simulator succeed at this frame under
  these actions". Where Prophet's video departs from the real one, that label is what the reward model must predict
  for FA-GRPO (the rollouts are judged against real-world success).
* Equal budget: both classifiers take the same optimizer steps on batches of the same size, so the bridged one sees
  half as many real frames; what it gains is measured net of that.
* Training setup checks: a Prophet trained by ``lightning_prophrl.studies.prophet`` has the study's ``config.json``
  a few directories above its model directory (:func:`training_setup`); stride, frame size, camera and episode length
  are read from it and any explicit mismatch is an error. Without it only the frame size is checked against the
  model's codec.
* One Euler step per imagined segment (``num_steps=1``), as the world-model RL loop of ``prophrl demo`` imagines
  (``wm_num_steps``): the reward model is studied on the videos it will judge there.

Cost (one torch thread on a loaded 2-core CPU, the defaults): the real episodes ~3 min (100 x 151 frames), the
imagination ~1 min (100 episodes x 37 one-frame segments), each classifier ~1 min (500 steps x 64 frames), the
evaluation seconds. ``--quick`` (3 + 2 episodes, 10 classifier steps) takes seconds beyond the data generation.

Run: ``python -m lightning_prophrl.studies.reward --model-dir DIR [--out runs/reward_study] [--quick]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.datamodules.shards import Episode, ShardWriter, iter_episodes
from lightning_prophrl.stage_cache import load_done, run_stage

CLASSIFIER_YAML = Path(__file__).resolve().parents[2] / "configs" / "reward" / "classifier_tiny.yaml"
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


def _batches(episodes: Iterator[Episode], size: int) -> Iterator[list[Episode]]:
    """Consecutive episodes in groups of at most ``size`` with equal lengths (a rollout batch shares its length)."""
    group: list[Episode] = []
    for ep in episodes:
        if group and (len(group) == size or len(ep) != len(group[0])):
            yield group
            group = []
        group.append(ep)
    if group:
        yield group


def imagine_dataset(
    model_dir: str | Path,
    source_dir: str | Path,
    out_dir: str | Path,
    stride: int,
    num_steps: int = 1,
    seed: int = 0,
    batch_size: int = 8,
    stats_from: str | Path | None = None,
    max_episodes: int | None = None,
) -> dict[str, Any]:
    """Imagine every episode of a real dataset with Prophet under its own actions; same schema, imagined frames.

    Each episode is strided and cut to whole segments (:func:`strided_segments`, ``model.config.action_chunk_length``
    frames per segment), its actions normalized as Prophet's training clips were, and rolled out from its first frame
    (``Prophet.rollout`` via ``rollout_episodes``, no memory before the first frame). The written episode keeps the key,
    actions, action mask, labels (``success_steps``, ``success``: the simulator's), state and poses of the strided real
    one; its frames are the imagined video (frame 0 is the real first frame). ``meta["imagined"]`` records the model,
    the settings and Prophet's own per-segment success probabilities.

    Args:
        model_dir: ``save_pretrained`` directory of the Prophet.
        source_dir: real episode shards.
        out_dir: output shard directory (cached: ``done.json``; built under ``<out_dir>.partial``).
        stride: simulator frames per model frame, as in the Prophet's training (checked when :func:`training_setup`
            finds its study configuration).
        num_steps: Euler steps per segment.
        seed: the noise of rollout batch ``j`` comes from ``seed + j`` (the output depends on ``batch_size`` too).
        batch_size: episodes per rollout call.
        stats_from: directory of the ``stats.json`` that normalized Prophet's training actions (default ``model_dir``).
        max_episodes: imagine only the first episodes.

    Returns:
        ``done.json``: ``episodes``, ``frames``, ``seconds``, the training setup found, and the arguments.
    """
    if stride < 1 or num_steps < 1 or batch_size < 1 or (max_episodes is not None and max_episodes < 1):
        raise ValueError(f"stride, num_steps, batch_size (and max_episodes) must be >= 1, got {stride}, {num_steps}, "
                         f"{batch_size}, {max_episodes}")  # fmt: skip
    stats_dir = Path(stats_from or model_dir)
    if not (stats_dir / K.STATS_FILE).exists():
        raise FileNotFoundError(f"{stats_dir / K.STATS_FILE} not found: pass stats_from=<the dataset whose stats.json "
                                "normalized the Prophet's training actions>")  # fmt: skip
    setup = training_setup(model_dir)
    check_setup(setup, stride=stride)
    args = {"model_dir": model_dir, "source_dir": source_dir, "stride": stride, "num_steps": num_steps, "seed": seed,
            "batch_size": batch_size, "stats_dir": stats_dir, "max_episodes": max_episodes}  # fmt: skip
    return run_stage(Path(out_dir), args, lambda tmp: _imagine(tmp, setup, **args))


def _imagine(tmp: Path, setup: dict[str, Any] | None, model_dir, source_dir, stride, num_steps, seed, batch_size,
             stats_dir, max_episodes) -> dict[str, Any]:  # fmt: skip
    """The body of :func:`imagine_dataset`: roll out and write into ``tmp``."""
    from itertools import islice

    from lightning_prophrl.callbacks.world_model import rollout_episodes
    from lightning_prophrl.datamodules.clips import ClipIterable, DatasetSpec
    from lightning_prophrl.datamodules.robot import collate_clips
    from lightning_prophrl.datamodules.shards import load_stats
    from lightning_prophrl.metrics import video_to_uint8
    from lightning_prophrl.models.prophet import Prophet

    t0 = time.perf_counter()
    model = Prophet.from_pretrained(model_dir).eval()
    chunk = int(model.config.action_chunk_length)
    check_setup(setup, chunk_len=chunk)
    stats = load_stats(stats_dir)
    cutters: dict[int, ClipIterable] = {}  # one clip cutter per episode length: exactly the training clips' inputs
    episodes = (strided_segments(ep, stride, chunk) for ep in islice(iter_episodes(source_dir), max_episodes))
    n_eps = n_frames = 0
    with ShardWriter(tmp, f"{Path(source_dir).name}_imagined", max_count=10) as writer:
        for j, group in enumerate(_batches(episodes, batch_size)):
            t, (h, w) = len(group[0]), group[0].frames.shape[1:3]
            if j == 0:
                check_setup(setup, image_size=h if h == w else (h, w))
                model.check_frame_size(h, w)
            if t not in cutters:
                cutters[t] = ClipIterable([DatasetSpec(str(source_dir))], 0, t - 1, None, True, 1, 1, 1, NORM_MODE,
                                          stats=[stats], eval_mode=True)  # fmt: skip
            batch = collate_clips([cutters[t].make_clip(ep, 0, 0) for ep in group])
            video, prob = rollout_episodes(model, batch, num_steps, seed + j, len(group),
                                           use_action_frames=bool(model.config.use_action_frames))  # fmt: skip
            frames = video_to_uint8(video).numpy()
            for b, ep in enumerate(group):
                imagined = {"model_dir": str(Path(model_dir).resolve()), "source": str(Path(source_dir).resolve()),
                            "stride": stride, "chunk_len": chunk, "num_steps": num_steps, "seed": seed + j,
                            "success_prob": None if prob is None else prob[b].tolist()}  # fmt: skip
                meta = {**ep.meta, "dataset": f"{ep.meta.get('dataset', 'real')}_imagined", "imagined": imagined}
                writer.write(Episode(ep.key, frames[b], ep.actions, ep.action_mask, meta, ep.state, ep.ee_poses,
                                     ep.extras))  # fmt: skip
                n_eps, n_frames = n_eps + 1, n_frames + t
    if n_eps == 0:
        raise ValueError(f"{source_dir}: no episode to imagine")
    return {"episodes": n_eps, "frames": n_frames, "seconds": time.perf_counter() - t0, "training_setup": setup}


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
) -> dict[str, Any]:
    """Train the per-frame success classifier on a mixture of labelled episode directories (cached).

    Args:
        datasets: shard directories (``RewardDataModule``; every episode trains, none is held out).
        out_dir: stage directory; the weights go to ``<out_dir>/classifier.pt``.
        weights: mixture weights (default uniform).
        steps: optimizer steps (the shared budget).
        seed: seeds the weights and the sample stream.
        batch_size: frames per step.
        image_size: frame size.
        log_dir: TensorBoard directory (default ``<out_dir>/tb``).

    Returns:
        ``done.json``: ``classifier`` kwargs, ``steps``, ``seconds``, ``final_train_loss``, the arguments.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    args = {"datasets": [str(Path(d).resolve()) for d in datasets], "weights": weights, "steps": steps, "seed": seed,
            "batch_size": batch_size, "image_size": image_size}  # fmt: skip
    name = Path(out_dir).name
    # the default TensorBoard directory lives in the stage's partial directory and is published with it
    return run_stage(Path(out_dir), args, lambda tmp: _fit_classifier(tmp, name, log_dir or tmp / "tb", **args))


def _fit_classifier(tmp: Path, name: str, log_dir, datasets, weights, steps, seed, batch_size, image_size):
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_prophrl.datamodules.reward import RewardDataModule
    from lightning_prophrl.models.reward import VideoSuccessClassifier
    from lightning_prophrl.modules.reward_model import RewardModelModule

    s = classifier_settings()
    L.seed_everything(seed, workers=True, verbose=False)
    module = RewardModelModule(VideoSuccessClassifier(**s["classifier"]), lambda p: torch.optim.Adam(p, lr=s["lr"]),
                               pos_weight=s["pos_weight"], shift_pad=s["shift_pad"])  # fmt: skip
    dm = RewardDataModule(datasets, weights, image_size=image_size, batch_size=batch_size, val_fraction=0.0,
                          samples_per_epoch=steps * batch_size, seed=seed)  # fmt: skip
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


def load_classifier(out_dir: str | Path) -> Any:
    """The ``VideoSuccessClassifier`` a :func:`train_classifier` stage wrote, in eval mode."""
    from lightning_prophrl.models.reward import VideoSuccessClassifier

    classifier = VideoSuccessClassifier(**load_done(out_dir)["classifier"])
    classifier.load_state_dict(torch.load(Path(out_dir) / "classifier.pt", weights_only=True))
    return classifier.eval()


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
        from lightning_prophrl.studies.prophet import contact_sheet

        out["contact_sheet"] = contact_sheet([r, i], sheet, episodes)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# 4. Study
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class RewardStudyConfig:
    """Settings of the study (defaults: the full run, see :func:`reward_study`); :meth:`quick` proves the plumbing.

    ``image_size``, ``camera``, ``max_steps`` and ``stride`` default (None) to the Prophet's training setup when
    :func:`training_setup` finds it, else to 64 px, ``workspace``, 150 steps and stride 4; explicit values are checked
    against it.
    """

    model_dir: str = "runs/prophet_study/adapt_lora/seed0/model"
    out: str = "runs/reward_study"
    task: str = "pick-place-v3"
    train_episodes: int = 60
    heldout_episodes: int = 40
    train_seed: int = 600
    heldout_seed: int = 700
    noise: float = 0.1
    noise_max: float = 1.0
    image_size: int | None = None
    camera: str | None = None
    max_steps: int | None = None
    stride: int | None = None
    stats_from: str | None = None
    num_steps: int = 1
    imagine_batch_size: int = 8
    classifier_steps: int = 500
    classifier_batch_size: int = 64
    threshold: float = 0.9
    persistence: int = 3
    seed: int = 0
    threads: int = 1

    @classmethod
    def quick(cls, **kw: Any) -> RewardStudyConfig:
        base = dict(out="runs/reward_study_quick", train_episodes=3, heldout_episodes=2, classifier_steps=10,
                    classifier_batch_size=16)  # fmt: skip
        base.update(kw)
        return cls(**base)

    def resolve(self, setup: dict[str, Any] | None) -> dict[str, Any]:
        """``{image_size, camera, max_steps, stride}``: explicit values, else the training setup's, else defaults.

        Raises:
            ValueError: an explicit value differs from the training setup.
        """
        explicit = {k: getattr(self, k) for k in ("image_size", "camera", "max_steps", "stride")}
        check_setup(setup, **{k: v for k, v in explicit.items() if v is not None})
        defaults = {"image_size": 64, "camera": "workspace", "max_steps": 150, "stride": 4}
        return {k: v if v is not None else (setup or {}).get(k) or defaults[k] for k, v in explicit.items()}


def generate_reward_data(out: Path, cfg: RewardStudyConfig, size: int, camera: str, max_steps: int) -> dict[str, str]:
    """Real training and held-out episodes (cached); returns ``{"train": dir, "heldout": dir}``."""
    from lightning_prophrl.datamodules.metaworld_gen import generate_metaworld

    sets = {"train": (cfg.train_episodes, cfg.train_seed), "heldout": (cfg.heldout_episodes, cfg.heldout_seed)}
    lo, hi = sorted(sets.values(), key=lambda s: s[1])
    if lo[1] + lo[0] > hi[1]:
        raise ValueError(f"training seeds {cfg.train_seed}.. and held-out seeds {cfg.heldout_seed}.. overlap")
    dirs = {}
    for name, (n, first_seed) in sets.items():
        args = {"task": cfg.task, "episodes": n, "seed": first_seed, "noise": cfg.noise, "noise_max": cfg.noise_max,
                "size": size, "camera": camera, "max_steps": max_steps}  # fmt: skip

        def build(tmp: Path, a: dict[str, Any] = args) -> dict[str, Any]:
            return generate_metaworld([a["task"]], a["episodes"], str(tmp), noise=a["noise"], noise_max=a["noise_max"],
                                      size=a["size"], camera=a["camera"], max_steps=a["max_steps"],
                                      stop_at_success=False, seed=a["seed"], progress=False)  # fmt: skip

        run_stage(out / "data" / f"real_{name}", args, build)
        dirs[name] = str(out / "data" / f"real_{name}")
    return dirs


def reward_study(cfg: RewardStudyConfig) -> dict[str, Any]:
    """All stages; writes ``config.json``, ``results.md`` and ``results.json`` under ``cfg.out``, prints the table.

    Returns:
        ``{"table": markdown, "reports": {classifier: {"real": report, "imagined": report}}, "success_head": report,
        "setup": resolved settings}``.
    """
    import lightning as L

    from lightning_prophrl.models.prophet import Prophet

    torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, verbose=False)
    t0 = time.perf_counter()
    setup = training_setup(cfg.model_dir)
    resolved = cfg.resolve(setup)
    if setup is None:
        print(f"note: no Prophet study config.json above {cfg.model_dir}; stride / size / camera / episode length "
              f"are not verified (using {resolved})")  # fmt: skip
    chunk = int(Prophet.load_config(cfg.model_dir)["action_chunk_length"])
    check_setup(setup, chunk_len=chunk)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**asdict(cfg), "resolved": resolved, "training_setup": setup},
                                                indent=2))  # fmt: skip
    # 1. Data: real, real strided (whole segments), imagined
    real = generate_reward_data(out, cfg, resolved["image_size"], resolved["camera"], resolved["max_steps"])
    data = {}
    for name, src in real.items():
        data[f"real_{name}"] = str(out / "data" / f"real_{name}_strided")
        stride_dataset(src, data[f"real_{name}"], resolved["stride"], chunk)
        data[f"imagined_{name}"] = str(out / "data" / f"imagined_{name}")
        imagine_dataset(cfg.model_dir, src, data[f"imagined_{name}"], resolved["stride"], cfg.num_steps, cfg.seed,
                        cfg.imagine_batch_size, cfg.stats_from)  # fmt: skip
    # 2. Classifiers: same steps, batch and seed
    mixtures = {"real-only": ([data["real_train"]], None),
                "bridged": ([data["real_train"], data["imagined_train"]], [1.0, 1.0])}  # fmt: skip
    reports, classifiers = {}, {}
    for name, (datasets, weights) in mixtures.items():
        stage = out / "classifier" / name
        classifiers[name] = train_classifier(datasets, stage, weights, cfg.classifier_steps, cfg.seed,
                                             cfg.classifier_batch_size, resolved["image_size"], out / "tb")  # fmt: skip
        model = load_classifier(stage)
        # 3. Episode-level evaluation on held-out real episodes and their imagined twins
        reports[name] = {split: evaluate_classifier(model, data[f"{split}_heldout"], cfg.threshold, cfg.persistence,
                                                    resolved["image_size"]) for split in ("real", "imagined")}  # fmt: skip
    head = success_head_report(data["imagined_heldout"])
    gap = domain_gap(data["real_heldout"], data["imagined_heldout"], out / "imagined_vs_real.png")
    table = study_table(cfg, resolved, chunk, reports, head, gap)
    (out / "results.md").write_text(table + "\n")
    results = {"config": asdict(cfg), "resolved": resolved, "training_setup": setup, "data": data,
               "classifiers": classifiers, "reports": reports, "success_head": head, "domain_gap": gap,
               "seconds": time.perf_counter() - t0}  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(table)
    print(f"\nwrote {out / 'results.md'} ({time.perf_counter() - t0:.0f} s)")
    return {"table": table, "reports": reports, "success_head": head, "setup": resolved}


def _row(label: str, evaluated_on: str, r: dict[str, Any]) -> str:
    cells = [label, evaluated_on, str(r["episodes"]), f"{r['success_rate']:.2f}", f"{r['predicted_rate']:.2f}",
             f"{r['precision']:.2f}", f"{r['recall']:.2f}", f"{r['kappa']:.2f}",
             "–" if r["frame_auc"] is None else f"{r['frame_auc']:.2f}",
             *(str(r[c]) for c in ("tp", "fp", "fn", "tn"))]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def study_table(cfg: RewardStudyConfig, resolved: dict[str, Any], chunk: int, reports: dict[str, dict[str, Any]],
                head: dict[str, Any] | None, gap: dict[str, Any]) -> str:  # fmt: skip
    """Markdown table: one row per (classifier, held-out set), episode-level scores against the simulator."""
    cols = ["classifier", "evaluated on", "episodes", "success rate (sim)", "predicted rate", "precision", "recall",
            "kappa", "frame AUC", "TP", "FP", "FN", "TN"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, by_split in reports.items():
        lines += [_row(name, f"held-out {split}", r) for split, r in by_split.items()]
    if head is not None:
        lines.append(_row("Prophet success head (2 segments > 0.5)", "held-out imagined", head))
    lines.append(
        f"\n{cfg.task}, {resolved['image_size']} px {resolved['camera']} camera, {resolved['max_steps']} steps, "
        f"stride {resolved['stride']}, {chunk} frame(s) per segment, {cfg.num_steps} Euler step(s); "
        f"{cfg.train_episodes} training episodes (seeds {cfg.train_seed}..), {cfg.heldout_episodes} held-out "
        f"(seeds {cfg.heldout_seed}..); classifier {cfg.classifier_steps} steps x {cfg.classifier_batch_size} frames, "
        f"seed {cfg.seed}; episode success = {cfg.persistence} consecutive frames above {cfg.threshold}; "
        f"Prophet {cfg.model_dir}; imagined vs real held-out frames: PSNR {gap['psnr']:.1f} dB (first frame held "
        f"still: {gap['psnr_copy_first']:.1f} dB)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m lightning_prophrl.studies.reward", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--model-dir", default=None, help="Prophet save_pretrained directory")
    ap.add_argument("--out", default=None, help="output directory")
    ap.add_argument("--quick", action="store_true", help="a few episodes and steps that prove the plumbing")
    ap.add_argument("--train-episodes", type=int, default=None)
    ap.add_argument("--heldout-episodes", type=int, default=None)
    ap.add_argument("--classifier-steps", type=int, default=None)
    ap.add_argument("--classifier-batch-size", type=int, default=None)
    ap.add_argument("--num-steps", type=int, default=None, help="Euler steps per imagined segment (default 1)")
    ap.add_argument("--stats-from", default=None, help="dir of the stats.json of Prophet's training actions")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "quick" and v is not None}
    cfg = RewardStudyConfig.quick(**overrides) if args.quick else RewardStudyConfig(**overrides)
    return reward_study(cfg)


if __name__ == "__main__":
    main()


def imagine_branch_dataset(
    model_dir: str | Path,
    source_dir: str | Path,
    out_dir: str | Path,
    task: str,
    segments: int,
    actions_per_segment: int,
    every: int,
    image_size: int = 64,
    camera: str = "workspace",
    num_steps: int = 1,
    seed: int = 0,
    batch_size: int = 30,
) -> dict[str, Any]:
    """Imagined *branch replays* of real episodes, labelled with the recorded frames' success (cached).

    From every ``every``-th frame of each episode of ``source_dir`` before its first success (``BranchStarts``, with
    the recorded memory and commanded target), Prophet replays the recorded actions for ``segments`` segments of
    ``actions_per_segment`` actions (``envs.agreement.replay_branches``). Each branch becomes one episode of
    ``segments + 1`` imagined frames whose ``success_steps`` are the simulator's flags of the recorded frames they
    stand for. These are the frames RL on branches shows its reward model, from real states; the bridged classifier's
    imagined twins are whole-episode open-loop replays from the first frame (docs/history.md, round v8).

    Returns:
        ``done.json``: ``episodes``, ``positives`` (branches whose window succeeds), ``seconds`` and the arguments.
    """
    if min(segments, actions_per_segment, every, num_steps, batch_size) < 1:
        raise ValueError(f"segments, actions_per_segment, every, num_steps and batch_size must be >= 1, got "
                         f"{segments}, {actions_per_segment}, {every}, {num_steps}, {batch_size}")  # fmt: skip
    args = {"model_dir": str(model_dir), "source_dir": str(source_dir), "task": task, "segments": segments,
            "actions_per_segment": actions_per_segment, "every": every, "image_size": image_size, "camera": camera,
            "num_steps": num_steps, "seed": seed, "batch_size": batch_size}  # fmt: skip
    return run_stage(Path(out_dir), args, lambda tmp: _imagine_branches(tmp, **args))


def _imagine_branches(tmp: Path, model_dir, source_dir, task, segments, actions_per_segment, every, image_size, camera,
                      num_steps, seed, batch_size) -> dict[str, Any]:  # fmt: skip
    from lightning_prophrl.datamodules.prompts import PromptDataModule
    from lightning_prophrl.datamodules.shards import load_stats
    from lightning_prophrl.envs.agreement import replay_branches
    from lightning_prophrl.envs.poses import CommandedPoses
    from lightning_prophrl.envs.world_model import WorldModelEnv
    from lightning_prophrl.metrics import video_to_uint8
    from lightning_prophrl.models.prophet import Prophet

    t0 = time.perf_counter()
    model = Prophet.from_pretrained(model_dir).eval()
    stride = actions_per_segment // int(model.config.action_chunk_length)
    prompts = PromptDataModule(datasets=[str(source_dir)], eval_fraction=0.0, num_prompts=batch_size,
                               image_size=image_size, branch_every=every, branch_margin=segments * actions_per_segment,
                               history_len=int(model.config.history_length), history_stride=stride)  # fmt: skip
    prompts.setup()
    poses = CommandedPoses.metaworld(task, image_size, camera) if model.config.use_action_frames else None
    env = WorldModelEnv(model, load_stats(model_dir), num_prompts=batch_size, group_size=1, max_segments=segments,
                        num_steps=num_steps, seed=seed, poses=poses, stop_at_success=False,
                        success_scorer=lambda v: torch.zeros(v.shape[0]))  # fmt: skip
    n = positives = 0
    h = actions_per_segment
    with ShardWriter(tmp, f"{Path(source_dir).name}_branches", max_count=50) as writer:
        for refs, _, keep in replay_branches(env, prompts, range(len(prompts.train_prompts)), h):
            frames = video_to_uint8(env.video()[:keep]).numpy()
            for j, (e, t) in enumerate(refs[:keep]):
                ep = prompts.branches.episodes[e]
                labels = [bool(ep.meta["success_steps"][t + k * h]) for k in range(segments + 1)]
                meta = {k: ep.meta[k] for k in ("dataset", "embodiment", "instruction", "fps")}
                meta.update(success=any(labels), success_steps=labels, branch_of=ep.key, branch_frame=t)
                actions = np.zeros((segments + 1, K.ACTION_DIM), np.float32)  # the classifier reads frames only
                writer.write(Episode(f"{ep.key}_b{t:04d}", frames[j], actions, ep.action_mask, meta))
                n, positives = n + 1, positives + int(any(labels))
    return {"episodes": n, "positives": positives, "seconds": time.perf_counter() - t0}
