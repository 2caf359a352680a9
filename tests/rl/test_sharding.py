"""The minibatches of an RL update do not depend on the number of processes; random streams depend on their key only."""

import math

import pytest
import torch

from lightning_prophrl.rl import plan_minibatches, stream_seed


def random_alive(steps: int, rollouts: int, seed: int) -> torch.Tensor:
    """``(S, N)`` alive masks of rollouts that end after 1 .. S queries."""
    lengths = torch.randint(1, steps + 1, (rollouts,), generator=torch.Generator().manual_seed(seed))
    return torch.arange(steps)[:, None] < lengths[None]


def shuffle() -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(3, 0, 1))


def test_on_one_process_the_parts_are_the_minibatches_of_the_queries():
    alive = random_alive(5, 6, 0)
    m = int(alive.sum())
    plan = plan_minibatches(alive, 0, 6, 4, 2, shuffle())
    assert plan.total == m and plan.num_minibatches == math.ceil(m / 4) and len(plan.parts) == 2
    for parts, sizes in zip(plan.parts, plan.sizes, strict=True):
        assert sorted(torch.cat(parts).tolist()) == list(range(m))  # every query once per epoch
        assert sizes == [len(p) for p in parts] and sizes[:-1] == [4] * (len(sizes) - 1)
        assert all(plan.scale(0, j) == 1.0 for j in range(len(parts)))
    assert not torch.equal(plan.parts[0][0], plan.parts[1][0])  # a new shuffle per epoch


@pytest.mark.parametrize("world", [2, 3])
def test_the_processes_parts_make_the_one_process_minibatches_with_weights_that_average_to_one(world):
    n = 4  # rollouts per process
    alive = random_alive(6, world * n, world)
    alive[:, n : 2 * n] &= torch.arange(6)[:, None] < 1  # process 1's rollouts all end at once: far fewer queries
    single = plan_minibatches(alive, 0, world * n, 5, 2, shuffle())
    plans = [plan_minibatches(alive, r, n, 5, 2, shuffle()) for r in range(world)]
    assert {p.num_minibatches for p in plans} == {single.num_minibatches}  # the same steps on every process
    counts = [int(alive[:, r * n : (r + 1) * n].sum()) for r in range(world)]
    assert len({math.ceil(c / 5) for c in counts}) > 1  # what per-process minibatches would have run
    s_idx, n_idx = alive.nonzero(as_tuple=True)  # global queries, step-major
    ids = [torch.nonzero(n_idx // n == r).flatten() for r in range(world)]  # process r's queries, as global ids
    empty = 0
    for e in range(2):
        for j in range(single.num_minibatches):
            union = torch.cat([ids[r][plans[r].parts[e][j]] for r in range(world)])
            assert sorted(union.tolist()) == sorted(single.parts[e][j].tolist())
            assert sum(p.scale(e, j) for p in plans) / world == pytest.approx(1.0)  # DDP's average: the mean loss
            empty += sum(len(p.parts[e][j]) == 0 for p in plans)
    assert empty > 0  # some process joins some minibatch with weight 0


def test_plans_reject_inconsistent_layouts():
    alive = random_alive(3, 6, 0)
    with pytest.raises(ValueError, match=r"N=4 rollouts per process"):
        plan_minibatches(alive, 0, 4, 2, 1, shuffle())
    with pytest.raises(ValueError, match="rank < 2"):
        plan_minibatches(alive, 2, 3, 2, 1, shuffle())


def test_stream_seeds_depend_on_the_key_alone():
    assert stream_seed(0, 4, 1) == stream_seed(0, 4, 1) and 0 <= stream_seed(0, 4, 1) < 2**63
    seeds = {stream_seed(s, u, k) for s in (0, 1) for u in (0, 1, 2) for k in (0, 1)}
    assert len(seeds) == 12
    torch.Generator().manual_seed(max(seeds))  # a valid torch seed
    with pytest.raises(ValueError, match="non-negative"):
        stream_seed(0, -1)
