"""The demo's scorers of imagined rollouts trained on the refresh: the bridged success classifier retrained on the
policy's own rollouts (branch replays or whole-episode twins), and the value head at the end of short branches.
"""

from __future__ import annotations

from pathlib import Path

from lightning_prophrl.demo.config import DEFAULT_BRANCH_SEGMENTS, DemoConfig
from lightning_prophrl.stage_cache import is_done


def branch_replays(cfg: DemoConfig, model_dir: str, rollouts: Path, out: Path) -> list[str]:
    """The refresh ``rollouts``' real frames at Prophet's stride and their imagined branch replays by the refreshed
    Prophet ``model_dir`` (a start every ``wm_refresh_reward_branch_every`` chunks, ``wm_branch_segments`` chunks long;
    ``recipes.imagined.imagine_branch_dataset``), cached under ``out``; the replays' directory names a non-default
    branch length (``rollouts_branches_seg3``). Returns the two directories."""
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.recipes.imagined import imagine_branch_dataset
    from lightning_prophrl.recipes.reward import stride_dataset

    stride = cfg.chunk_len // cfg.wm_chunk_len
    stride_dataset(
        rollouts, out / "rollouts_strided", stride, int(Prophet.load_config(model_dir)["action_chunk_length"])
    )
    replays = out / f"rollouts_branches{_segments(cfg)}"
    imagine_branch_dataset(model_dir, rollouts, replays, cfg.target_task, cfg.wm_branch_segments, cfg.chunk_len,
                           cfg.wm_refresh_reward_branch_every * cfg.chunk_len, cfg.image_size, cfg.camera,
                           cfg.wm_num_steps)  # fmt: skip
    return [str(out / "rollouts_strided"), str(replays)]


def _segments(cfg: DemoConfig) -> str:
    return "" if cfg.wm_branch_segments == DEFAULT_BRANCH_SEGMENTS else f"_seg{cfg.wm_branch_segments}"


def branch_classifier(cfg: DemoConfig, model_dir: str, rollouts: Path, out: Path) -> str:
    """The bridged classifier retrained (``wm_refresh_reward_steps``) on the refresh ``rollouts``' real frames and on
    their imagined branch replays (:func:`branch_replays`, labelled with the recorded frames' success), equal weights,
    cached under ``out/classifier_branches`` (suffixed with a non-default branch length)."""
    from lightning_prophrl.recipes.reward import train_classifier

    clf = out / f"classifier_branches{_segments(cfg)}"
    train_classifier(branch_replays(cfg, model_dir, rollouts, out), clf, [1.0, 1.0], cfg.wm_refresh_reward_steps, 0,
                     min(64, 16 * cfg.reward_train_episodes), cfg.image_size, Path(cfg.out) / "tb")  # fmt: skip
    return str(clf)


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


def value_head(cfg: DemoConfig, model_dir: str, rollouts: Path, out: Path, real_branches: Path | None = None) -> str:
    """The value head of branch variants (``wm_value``): a frame classifier of the refresh rollouts' eventual
    success (``label="outcome"``), trained ``wm_value_steps`` on the same real frames and branch replays as
    :func:`branch_classifier` (each replay labelled with its source episode's outcome), equal weights, cached under
    ``out/value`` (suffixed with a non-default branch length). An imagined branch cut without a success is graded by
    its last frame's value (``WorldModelEnv(value_scorer=...)``).

    ``real_branches`` (``demo.imagined.value_branches``): real branches of one start run to the episode's end, each
    frame labelled with its own branch's outcome, join the mixture as a third equal part (the head's directory is
    suffixed with their directory's name), so that the head sees branches of one state that end differently."""
    from lightning_prophrl.recipes.reward import train_classifier

    head = out / f"value{_segments(cfg)}{'' if real_branches is None else '_' + real_branches.name}"
    data = branch_replays(cfg, model_dir, rollouts, out) + ([] if real_branches is None else [str(real_branches)])
    train_classifier(data, head, [1.0] * len(data), cfg.wm_value_steps, 0, min(64, 16 * cfg.reward_train_episodes),
                     cfg.image_size, Path(cfg.out) / "tb", label="outcome")  # fmt: skip
    return str(head)
