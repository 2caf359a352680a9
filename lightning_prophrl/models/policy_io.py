"""A policy that describes itself: its constructor config, the action statistics that map its normalized actions to
the dataset's units, and ``save_pretrained`` / ``from_pretrained`` of a directory (``config.json`` with the
normalization metadata, ``model.safetensors``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from lightning_prophrl.actions import ActionStats, NormMode
from lightning_prophrl.constants import ACTION_DIM, STATS_FILE

if TYPE_CHECKING:
    from lightning_prophrl.models.policy import FlowMatchingPolicy


class PretrainedPolicyMixin:
    """The configuration, action statistics and ``save_pretrained`` / ``from_pretrained`` of :class:`FlowMatchingPolicy`."""

    # ---- configuration, action statistics, save / load -----------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments as a JSON-friendly dict (``FlowMatchingPolicy(**config)`` rebuilds the policy).

        A custom ``backbone`` is recorded as its class path (a string): such a policy is rebuilt with
        ``from_config(config, backbone=...)``."""
        return json.loads(json.dumps(self._config))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], backbone: nn.Module | None = None) -> FlowMatchingPolicy:
        """A freshly initialised policy from ``config`` (as ``config`` returns it; extra keys such as
        ``policy_meta`` are ignored).

        Raises:
            ValueError: when ``config`` names a custom backbone and none is given.
            TypeError: on an unknown constructor argument.
        """
        kwargs = {k: v for k, v in config.items() if k != POLICY_META and not k.startswith("_")}
        recorded = kwargs.pop("backbone", None)
        if recorded is not None and backbone is None:
            raise ValueError(
                f"this policy was built with a custom backbone ({recorded}); pass an instance: backbone=..."
            )
        if kwargs.get("sde_window") is not None:
            kwargs["sde_window"] = tuple(kwargs["sde_window"])
        if kwargs.get("cnn_channels") is not None:
            kwargs["cnn_channels"] = tuple(kwargs["cnn_channels"])
        return cls(**kwargs, backbone=backbone)

    def set_action_stats(
        self,
        action_stats: ActionStats | Mapping[str, Any],
        action_dims: Sequence[int],
        norm_mode: NormMode = "quantile",
    ) -> FlowMatchingPolicy:
        """Attach the statistics that normalized the training actions and the unified dims the policy models
        (``action_dims[i]`` is the unified dim of output ``i``); used by ``unnormalize_actions`` and written by
        ``save_pretrained``. Returns the policy.

        Raises:
            ValueError: when ``action_dims`` does not hold ``action_dim`` distinct unified dims, or ``norm_mode`` is
                unknown.
        """
        dims = [int(d) for d in action_dims]
        if len(dims) != self.action_dim or len(set(dims)) != len(dims) or not all(0 <= d < ACTION_DIM for d in dims):
            raise ValueError(f"action_dims must be {self.action_dim} distinct unified dims in [0, {ACTION_DIM}), "
                             f"got {list(action_dims)}")  # fmt: skip
        if norm_mode not in ("quantile", "meanstd"):
            raise ValueError(f"norm_mode must be 'quantile' or 'meanstd', got {norm_mode!r}")
        stats = action_stats if isinstance(action_stats, ActionStats) else ActionStats.from_dict(dict(action_stats))
        self.action_stats, self.action_dims, self.norm_mode = stats, dims, norm_mode
        return self

    def unnormalize_actions(self, actions: Tensor) -> Tensor:
        """``(..., action_dim)`` normalized policy actions -> ``(..., 14)`` raw unified actions (float32, same device):
        the modelled dims are scattered into the unified layout and unnormalized with the attached statistics; dims
        the policy does not model come back as 0.

        Raises:
            RuntimeError: when no action statistics are attached.
        """
        if self.action_stats is None or self.action_dims is None:
            raise RuntimeError(
                "no action statistics attached: call set_action_stats(stats, action_dims) or load the policy with "
                "from_pretrained from a directory that has stats.json"
            )
        if actions.shape[-1] != self.action_dim:
            raise ValueError(f"actions must end with the policy's action_dim={self.action_dim}, "
                             f"got {tuple(actions.shape)}")  # fmt: skip
        a = actions.detach().float().cpu().numpy()
        full = np.zeros(a.shape[:-1] + (ACTION_DIM,), dtype=np.float32)
        full[..., self.action_dims] = a
        raw = self.action_stats.unnormalize(full, self.norm_mode)
        return torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32)).to(actions.device)

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write the policy to ``save_directory`` (created if needed): ``config.json`` (``config`` plus
        ``policy_meta`` with ``action_dims``, ``norm_mode`` and ``stats_file``), ``model.safetensors`` (every weight of
        the state dict) and, with statistics attached, ``stats.json``. Returns the directory.

        Frozen pretrained encoders (``image_encoder="efficientnet"``, ``text_encoder="minilm"``) are not part of the
        state dict: ``from_pretrained`` loads them from their own sources again.
        """
        from safetensors.torch import save_model

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        has_stats = self.action_stats is not None
        meta = {"action_dims": self.action_dims, "norm_mode": self.norm_mode,
                "stats_file": STATS_FILE if has_stats else None}  # fmt: skip
        config = {"_class_name": type(self).__name__, **self._config, POLICY_META: meta}
        (out / POLICY_CONFIG_FILE).write_text(json.dumps(config, indent=2))
        save_model(self, str(out / POLICY_WEIGHTS_FILE))
        if has_stats:
            self.action_stats.save(out / STATS_FILE)
        else:
            (out / STATS_FILE).unlink(missing_ok=True)
        return out

    @classmethod
    def load_config(cls, pretrained_dir: str | Path) -> dict[str, Any]:
        """The ``config.json`` of a ``save_pretrained`` directory (constructor arguments and ``policy_meta``).

        Raises:
            FileNotFoundError: when the directory has no ``config.json``.
        """
        path = Path(pretrained_dir) / POLICY_CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: {pretrained_dir} is not a saved policy (write one with "
                "FlowMatchingPolicy.save_pretrained or PolicySFTModule(export_dir=...))"
            )
        return json.loads(path.read_text())

    @classmethod
    def from_pretrained(
        cls, pretrained_dir: str | Path, backbone: nn.Module | None = None, **overrides: Any
    ) -> FlowMatchingPolicy:
        """Rebuild a policy written by ``save_pretrained``: same constructor arguments, same weights, and the action
        statistics and dims of ``policy_meta`` attached when the directory has them.

        Args:
            pretrained_dir: the ``save_pretrained`` directory.
            backbone: the backbone instance of a policy saved with a custom backbone (its weights are loaded).
            **overrides: constructor arguments to change (sampler settings such as ``noise_level``, ``num_steps``,
                ``exec_horizon``; an argument that changes a weight's shape fails to load).

        Raises:
            FileNotFoundError: when ``config.json`` or ``model.safetensors`` is missing.
            TypeError: on an override that is not a constructor argument.
        """
        from safetensors.torch import load_model

        root = Path(pretrained_dir)
        config = cls.load_config(root)
        unknown = sorted(set(overrides) - set(config) - {"backbone"})
        if unknown:
            raise TypeError(f"unknown FlowMatchingPolicy arguments {unknown}")
        policy = cls.from_config({**config, **overrides}, backbone=backbone)
        weights = root / POLICY_WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} not found: the saved policy {root} has no weights")
        load_model(policy, str(weights), strict=True, device="cpu")
        meta = load_policy_meta(root)
        if "action_stats" in meta and "action_dims" in meta:
            policy.set_action_stats(meta["action_stats"], meta["action_dims"], meta["norm_mode"])
        elif "action_dims" in meta:
            policy.action_dims = meta["action_dims"]
        return policy


POLICY_CONFIG_FILE = "config.json"


POLICY_WEIGHTS_FILE = "model.safetensors"


POLICY_META = "policy_meta"  # config.json key: action dims, normalization mode and stats file of the policy


def load_policy_meta(pretrained_dir: str | Path) -> dict[str, Any]:
    """What a ``save_pretrained`` directory says about the policy's actions: ``norm_mode``, and ``action_dims`` and
    ``action_stats`` (an ``ActionStats``) when it has them.

    Raises:
        FileNotFoundError: when ``config.json`` or the ``stats.json`` it names is missing.
    """
    root = Path(pretrained_dir)
    meta = PretrainedPolicyMixin.load_config(root).get(POLICY_META) or {}
    out: dict[str, Any] = {"norm_mode": meta.get("norm_mode", "quantile")}
    if meta.get("action_dims") is not None:
        out["action_dims"] = [int(d) for d in meta["action_dims"]]
    if meta.get("stats_file") is not None:
        out["action_stats"] = ActionStats.load(root / meta["stats_file"])
    return out
