"""The networks an RL module holds outside its own submodules, so that they follow its device and dtype.

An environment (``WorldModelEnv`` holds the frozen Prophet and maybe a success classifier) and a reward callable
(``RolloutReward(ClassifierReward(classifier))``) are plain objects, not ``nn.Module`` children of the
``LightningModule``: their networks stay out of its checkpoints, of DDP's broadcast and gradient buckets and of the
optimizer, but ``module.to(...)`` would leave them behind. :func:`held_modules` finds them, and
``FAGRPOModule._apply`` applies every device or dtype conversion of the module to them as well.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

_LEAVES = (str, bytes, int, float, bool, complex, type(None), torch.Tensor, np.ndarray, torch.Generator, type)


def held_modules(*owners: Any, depth: int = 3) -> list[nn.Module]:
    """The ``nn.Module``s reachable from ``owners`` through attributes, lists, tuples and dicts, at most ``depth``
    levels below each owner (an owner that is itself a module counts as one). Modules are not searched inside (they
    move as a whole); each is listed once, in the order found.

    Args:
        owners: environments, reward callables, ... (None is skipped).
        depth: how many attribute or container levels to follow.

    Returns:
        The modules found.
    """
    found: dict[int, nn.Module] = {}
    seen: set[int] = set()
    for owner in owners:
        for module in _walk(owner, depth, seen):
            found.setdefault(id(module), module)
    return list(found.values())


def _walk(obj: Any, depth: int, seen: set[int]) -> Iterator[nn.Module]:
    if isinstance(obj, nn.Module):
        yield obj
        return
    if depth <= 0 or isinstance(obj, _LEAVES) or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    else:
        children = list(getattr(obj, "__dict__", {}).values())
    for child in children:
        yield from _walk(child, depth - 1, seen)
