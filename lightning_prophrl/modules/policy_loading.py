"""Initial weights of an RL policy: from a Lightning checkpoint's ``policy.*`` weights or a ``save_pretrained``
policy directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lightning_prophrl.checkpoints import load_submodule_weights
from lightning_prophrl.models.policy import FlowMatchingPolicy


def load_policy_weights(policy: torch.nn.Module, checkpoint: str) -> dict[str, Any]:
    """Load ``policy.*`` weights from a ``PolicySFTModule`` (or ``FAGRPOModule``) checkpoint; returns its
    hyper-parameters."""
    return load_submodule_weights(policy, checkpoint, "policy")


def policy_from_dir(
    policy_dir: str, policy: FlowMatchingPolicy | None = None
) -> tuple[FlowMatchingPolicy, dict[str, Any]]:
    """The policy of a ``save_pretrained`` directory and what the directory says about its actions (``norm_mode``,
    and ``action_stats`` as a dict and ``action_dims`` when it has them). Without ``policy`` it is rebuilt with
    ``FlowMatchingPolicy.from_pretrained``; with one, the directory's weights are loaded into it (a different
    architecture fails to load, naming the mismatched weights)."""
    from safetensors.torch import load_model

    from lightning_prophrl.models.policy import POLICY_WEIGHTS_FILE, load_policy_meta

    meta = load_policy_meta(policy_dir)
    if "action_stats" in meta:
        meta["action_stats"] = meta["action_stats"].to_dict()
    if policy is None:
        return FlowMatchingPolicy.from_pretrained(policy_dir), meta
    weights = Path(policy_dir) / POLICY_WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: the saved policy {policy_dir} has no weights")
    load_model(policy, str(weights), strict=True, device="cpu")
    return policy, meta
