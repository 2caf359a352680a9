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


def load_policy(path: str | Path) -> tuple[FlowMatchingPolicy, dict[str, Any]]:
    """A trained policy from a ``save_pretrained`` directory or a ``PolicySFTModule`` checkpoint, with its action
    metadata (``action_stats`` as a dict, ``action_dims``), in eval mode.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when a checkpoint records no ``policy_config`` (name the policy directory instead).
    """
    from lightning_prophrl.modules.policy_sft import policy_from_config

    path = Path(path)
    if path.is_dir():
        policy, meta = policy_from_dir(str(path))
        return policy.eval(), meta
    if not path.is_file():
        raise FileNotFoundError(f"policy {path} not found: give a save_pretrained directory or a PolicySFTModule "
                                "checkpoint (.ckpt)")  # fmt: skip
    hp = torch.load(path, map_location="cpu", weights_only=False).get("hyper_parameters", {})
    if not hp.get("policy_config"):
        raise ValueError(f"{path}: the checkpoint records no policy_config; load it from the run's exported policy "
                         "directory (export_dir) instead")  # fmt: skip
    policy = policy_from_config(hp["policy_config"])
    hp = load_policy_weights(policy, str(path))
    stats = hp["action_stats"]
    return policy.eval(), {"action_stats": stats if isinstance(stats, dict) else stats.to_dict(),
                           "action_dims": list(hp["action_dims"])}  # fmt: skip
