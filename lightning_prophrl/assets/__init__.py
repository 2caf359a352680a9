"""Models shipped inside the package, loadable with no network.

``prophet_metaworld/``: the embedded Prophet (U-Net backbone, 64 px, one frame per 4-step action chunk) pretrained on
the Meta-World pretraining corpus (``lightning_prophrl.envs.task_split.PRETRAIN_TASKS``; every task of
``HELDOUT_TASKS`` was kept out of it). The directory is a ``save_pretrained`` directory with the pooled action
statistics (``stats.json``) that normalized its training actions and a model card (``README.md``: data recipe,
training, cost, measured metrics, the commands that reproduce it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SHIPPED_PROPHET = Path(__file__).resolve().parent / "prophet_metaworld"


def shipped_prophet_path() -> str:
    """Directory of the shipped pretrained Prophet (give it to ``Prophet.from_pretrained``, to
    ``ProphetAdaptModule(pretrained_path=...)`` or to ``stats_from``)."""
    if not (SHIPPED_PROPHET / "config.json").is_file():
        raise FileNotFoundError(
            f"{SHIPPED_PROPHET} has no config.json: this installation lacks the shipped Prophet; reinstall the package "
            "or pretrain one with `prophrl fit --config configs/prophet/pretrain_metaworld.yaml`"
        )
    return str(SHIPPED_PROPHET)


def load_shipped_prophet() -> tuple[Any, Any]:
    """``(Prophet, ActionStats)``: the shipped model in eval mode (float32, CPU) and its action statistics."""
    import torch

    from lightning_prophrl.actions import ActionStats
    from lightning_prophrl.constants import STATS_FILE
    from lightning_prophrl.models.prophet import Prophet

    path = shipped_prophet_path()
    model = Prophet.from_pretrained(path, torch_dtype=torch.float32).eval()
    return model, ActionStats.load(Path(path) / STATS_FILE)
