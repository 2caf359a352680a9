"""How one RL update's global batch is shared between processes, so that any number of processes trains the same way.

Under DDP every process rolls out its share of the update's prompts (whole groups: ``G`` rollouts of one prompt stay
on one process) and the processes together hold the update's ``M`` policy queries. The PPO minibatches are drawn over
those ``M`` queries, not over each process's own: every process runs the same number of minibatches (``ceil(M / B)``
per epoch, so none waits in a gradient all-reduce that another one skipped) and minibatch ``j`` is the same set of
queries whatever the number of processes. Each process computes the loss of its part of minibatch ``j`` and scales
it by :meth:`MinibatchPlan.scale`, so that DDP's gradient average equals the gradient of the whole minibatch's mean
loss (a process whose part is empty still joins the all-reduce, with a zero weight).

Queries are numbered in step-major order over the update's rollouts (rollout ``n`` of process ``r`` is global rollout
``r * N + n``, ``N`` rollouts per process), the order ``alive.nonzero()`` gives both over one process's ``(S, N)``
alive mask and over the gathered ``(S, W * N)`` one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def stream_seed(seed: int, *key: int) -> int:
    """A seed for the random stream ``key`` (non-negative ints, e.g. ``(update, purpose, rank)``) of a run seeded with
    ``seed``: streams with different keys are independent, and a stream depends on nothing but its key (not on how
    many numbers earlier streams drew), so a resumed run draws what the uninterrupted one drew."""
    if any(int(k) < 0 for k in key):
        raise ValueError(f"stream keys must be non-negative, got {key}")
    state = np.random.SeedSequence([int(seed) % 2**64, *(int(k) for k in key)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1  # 63 bits: a valid torch.Generator seed


@dataclass
class MinibatchPlan:
    """This process's part of every PPO minibatch of one update.

    Attributes:
        parts: ``parts[e][j]`` ``(m_j,)`` long, the indices (into this process's step-major queries) of its part of
            minibatch ``j`` of epoch ``e``; may be empty.
        sizes: ``sizes[e][j]``, the number of queries of minibatch ``j`` over all processes.
        world_size: number of processes.
        total: ``M``, the update's queries over all processes.
    """

    parts: list[list[Tensor]]
    sizes: list[list[int]]
    world_size: int
    total: int

    @property
    def num_minibatches(self) -> int:
        """Minibatches per epoch (the same on every process)."""
        return len(self.sizes[0]) if self.sizes else 0

    def scale(self, epoch: int, j: int) -> float:
        """Weight of this process's mean loss over its part of minibatch ``j`` such that DDP's average of the
        processes' gradients is the gradient of the mean loss over the whole minibatch: ``W * m_j / size_j``."""
        return self.world_size * len(self.parts[epoch][j]) / self.sizes[epoch][j]


def plan_minibatches(
    alive: Tensor, rank: int, rollouts_per_rank: int, minibatch_size: int, epochs: int, generator: torch.Generator
) -> MinibatchPlan:
    """Shuffle the update's queries over all processes once per epoch and cut them into minibatches of
    ``minibatch_size`` (the last one smaller); keep this process's part of each.

    Args:
        alive: ``(S, W * N)`` bool, whether global rollout ``n`` was still running at query step ``s`` (the processes'
            alive masks side by side, padded with False to the same ``S``).
        rank: this process.
        rollouts_per_rank: ``N``, rollouts per process.
        minibatch_size: ``B``, queries per minibatch over all processes.
        epochs: PPO epochs (one permutation each).
        generator: draws the permutations; it must be in the same state on every process.

    Returns:
        The plan; on one process, ``parts`` are the minibatches themselves.
    """
    if alive.ndim != 2 or alive.shape[1] % rollouts_per_rank:
        raise ValueError(f"alive must be (S, W * N) with N={rollouts_per_rank} rollouts per process, "
                         f"got {tuple(alive.shape)}")  # fmt: skip
    world = alive.shape[1] // rollouts_per_rank
    if not 0 <= rank < world or minibatch_size < 1 or epochs < 1:
        raise ValueError(f"need 0 <= rank < {world}, minibatch_size >= 1 and epochs >= 1, got {rank}, "
                         f"{minibatch_size}, {epochs}")  # fmt: skip
    _, n_idx = alive.bool().nonzero(as_tuple=True)  # step-major
    mine = n_idx // rollouts_per_rank == rank
    local = torch.cumsum(mine.long(), 0) - 1  # a query's index among this process's queries (where mine)
    m = len(n_idx)
    parts: list[list[Tensor]] = []
    sizes: list[list[int]] = []
    for _ in range(epochs):
        perm = torch.randperm(m, generator=generator)
        chunks = [perm[i : i + minibatch_size] for i in range(0, m, minibatch_size)]
        parts.append([local[q[mine[q]]] for q in chunks])
        sizes.append([len(q) for q in chunks])
    return MinibatchPlan(parts, sizes, world, m)
