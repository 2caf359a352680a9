"""The demo's scorers of imagined rollouts trained on the refresh: the bridged success classifier retrained on the
policy's own rollouts (branch replays or whole-episode twins), and the value head at the end of short branches.
"""

from __future__ import annotations

from pathlib import Path

from lightning_prophrl.demo.config import DemoConfig
from lightning_prophrl.stage_cache import is_done


def branch_classifier(cfg: DemoConfig, model_dir: str, rollouts: Path, out: Path) -> str:
    """The bridged classifier retrained (``wm_refresh_reward_steps``) on the refresh ``rollouts``' real frames and on
    their imagined branch replays by the refreshed Prophet ``model_dir`` (a start every
    ``wm_refresh_reward_branch_every`` chunks, ``wm_branch_segments`` chunks long, labelled with the recorded frames'
    success; ``recipes.imagined.imagine_branch_dataset``), equal weights."""
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.recipes.imagined import imagine_branch_dataset
    from lightning_prophrl.recipes.reward import stride_dataset, train_classifier

    stride = cfg.chunk_len // cfg.wm_chunk_len
    stride_dataset(
        rollouts, out / "rollouts_strided", stride, int(Prophet.load_config(model_dir)["action_chunk_length"])
    )
    imagine_branch_dataset(model_dir, rollouts, out / "rollouts_branches", cfg.target_task, cfg.wm_branch_segments,
                           cfg.chunk_len, cfg.wm_refresh_reward_branch_every * cfg.chunk_len, cfg.image_size,
                           cfg.camera, cfg.wm_num_steps)  # fmt: skip
    datasets = [str(out / "rollouts_strided"), str(out / "rollouts_branches")]
    train_classifier(datasets, out / "classifier_branches", [1.0, 1.0], cfg.wm_refresh_reward_steps, 0,
                     min(64, 16 * cfg.reward_train_episodes), cfg.image_size, Path(cfg.out) / "tb")  # fmt: skip
    return str(out / "classifier_branches")


def refresh_classifier(cfg: DemoConfig, model_dir: str, rollouts: Path, out: Path) -> str:
    """The bridged classifier retrained (``wm_refresh_reward_steps``, the reward stage's batch) on the reward stage's
    real and imagined training episodes plus the refresh ``rollouts`` and their imagined twins by the refreshed
    Prophet ``model_dir``, equal weights."""
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.recipes.imagined import imagine_dataset
    from lightning_prophrl.recipes.reward import stride_dataset, train_classifier

    stride = cfg.chunk_len // cfg.wm_chunk_len
    chunk = int(Prophet.load_config(model_dir)["action_chunk_length"])
    reward_data = Path(cfg.out) / "reward" / "data"
    old = [reward_data / "real_train_strided", reward_data / "imagined_train"]
    if not all(is_done(d) for d in old):
        raise FileNotFoundError(f"the classifier refresh needs the reward stage's training data {old} (run the demo)")
    stride_dataset(rollouts, out / "rollouts_strided", stride, chunk)
    imagine_dataset(model_dir, rollouts, out / "rollouts_imagined", stride, cfg.wm_num_steps, stats_from=model_dir)
    datasets = [*map(str, old), str(out / "rollouts_strided"), str(out / "rollouts_imagined")]
    train_classifier(datasets, out / "classifier", [1.0] * 4, cfg.wm_refresh_reward_steps, 0,
                     min(64, 16 * cfg.reward_train_episodes), cfg.image_size, Path(cfg.out) / "tb")  # fmt: skip
    return str(out / "classifier")


def value_head(cfg: DemoConfig, model_dir: str, rollouts: Path, out: Path) -> str:
    """The value head of branch variants (``wm_value``): a frame classifier of the refresh ``rollouts``' eventual
    success (``label="outcome"``), trained ``wm_value_steps`` on their real frames and on imagined branch replays of
    ``wm_branch_segments`` chunks by the refreshed Prophet ``model_dir`` (a start every
    ``wm_refresh_reward_branch_every`` chunks), equal weights, cached under ``out/value_seg<S>``. An imagined branch
    cut without a success is graded by its last frame's value (``WorldModelEnv(value_scorer=...)``)."""
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.recipes.imagined import imagine_branch_dataset
    from lightning_prophrl.recipes.reward import stride_dataset, train_classifier

    seg = cfg.wm_branch_segments
    stride_dataset(
        rollouts, out / "rollouts_strided", cfg.chunk_len // cfg.wm_chunk_len,
        int(Prophet.load_config(model_dir)["action_chunk_length"]),
    )  # fmt: skip
    imagine_branch_dataset(model_dir, rollouts, out / f"value_branches_seg{seg}", cfg.target_task, seg, cfg.chunk_len,
                           cfg.wm_refresh_reward_branch_every * cfg.chunk_len, cfg.image_size, cfg.camera,
                           cfg.wm_num_steps)  # fmt: skip
    datasets = [str(out / "rollouts_strided"), str(out / f"value_branches_seg{seg}")]
    train_classifier(datasets, out / f"value_seg{seg}", [1.0, 1.0], cfg.wm_value_steps, 0,
                     min(64, 16 * cfg.reward_train_episodes), cfg.image_size, Path(cfg.out) / "tb",
                     label="outcome")  # fmt: skip
    return str(out / f"value_seg{seg}")
