"""Reading and building training state shared by the modules: sub-module weights from Lightning checkpoints and
injected optimizer / scheduler factories."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import torch


def load_submodule_weights(module: torch.nn.Module, checkpoint: str, prefix: str) -> dict[str, Any]:
    """Load the ``<prefix>.*`` weights of a Lightning checkpoint into ``module`` (e.g. ``policy`` of a
    ``PolicySFTModule``, ``classifier`` of a ``RewardModelModule``); returns the checkpoint's hyper-parameters.

    Raises:
        KeyError: naming the checkpoint when it holds no ``<prefix>.*`` weights.
    """
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    head = f"{prefix}."
    state = {k[len(head) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(head)}
    if not state:
        raise KeyError(f"{checkpoint}: no '{prefix}.*' weights in the checkpoint's state_dict")
    module.load_state_dict(state)
    return ckpt.get("hyper_parameters", {})


def default_optimizer(
    optimizer: Callable[[Any], torch.optim.Optimizer] | None, cls: type[torch.optim.Optimizer], **kwargs: Any
) -> Callable[[Any], torch.optim.Optimizer]:
    """The injected optimizer factory, or ``cls(params, **kwargs)`` when none was given.

    Modules default ``optimizer`` to None rather than to a lambda, so the ``config.yaml`` LightningCLI saves with a
    run (``optimizer: null``) parses and reruns as it was.
    """
    return optimizer if optimizer is not None else partial(cls, **kwargs)


def build_optimizers(
    params: Iterable[torch.nn.Parameter],
    optimizer_factory: Callable[[Any], torch.optim.Optimizer],
    scheduler_factory: Callable[[torch.optim.Optimizer], Any] | None = None,
) -> Any:
    """``configure_optimizers`` result for injected factories: the optimizer alone, or with a per-step scheduler."""
    opt = optimizer_factory(params)
    if scheduler_factory is None:
        return opt
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler_factory(opt), "interval": "step"}}
