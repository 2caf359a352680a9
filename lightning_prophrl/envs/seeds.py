"""Disjoint initial-state seed ranges of the Meta-World tasks: demonstrations, held-out evaluation and RL training
never share an initial state.
"""

from __future__ import annotations

SEED_RANGES: dict[str, tuple[int, int]] = {"demo": (0, 1000), "eval": (1000, 2000), "train": (2000, 2**31)}


def _seeds(kind: str, n: int, start: int) -> list[int]:
    lo, hi = SEED_RANGES[kind]
    if n < 0 or not lo <= start or start + n > hi:
        raise ValueError(f"{kind} seeds [start={start}, start+n={start + n}) must lie inside [{lo}, {hi})")
    return list(range(start, start + n))


def demo_seeds(n: int, start: int = 0) -> list[int]:
    """``n`` consecutive demonstration seeds from ``start``, inside ``[0, 1000)``."""
    return _seeds("demo", n, start)


def eval_seeds(n: int, start: int = 1000) -> list[int]:
    """``n`` consecutive evaluation seeds from ``start``, inside ``[1000, 2000)``."""
    return _seeds("eval", n, start)


def train_seeds(n: int, start: int = 2000) -> list[int]:
    """``n`` consecutive RL / on-line data seeds from ``start``, inside ``[2000, 2**31)``."""
    return _seeds("train", n, start)
