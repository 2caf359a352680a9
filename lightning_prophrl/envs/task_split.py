"""The one split of Meta-World v3 tasks into Prophet's pretraining tasks and the tasks held out of it.

Everything that pretrains the shipped Prophet reads :data:`PRETRAIN_TASKS`; every held-out evaluation and every
adaptation target reads :data:`HELDOUT_TASKS`, so a model adapted to a held-out task was never trained on it before.
The held-out list keeps the embedded default's target (``window-open-v3``) and tasks whose objects or motions have
no close twin in the pretraining list (faucets, coffee machine, plates, shelf), next to a few that do
(``window-close-v3``, ``drawer-close-v3``, ``door-close-v3``) so both kinds of transfer are measured.
"""

from __future__ import annotations

PRETRAIN_TASKS: tuple[str, ...] = (
    "assembly-v3",
    "basketball-v3",
    "bin-picking-v3",
    "box-close-v3",
    "button-press-topdown-v3",
    "button-press-topdown-wall-v3",
    "button-press-v3",
    "button-press-wall-v3",
    "coffee-pull-v3",
    "coffee-push-v3",
    "dial-turn-v3",
    "disassemble-v3",
    "door-lock-v3",
    "door-open-v3",
    "door-unlock-v3",
    "drawer-open-v3",
    "hammer-v3",
    "hand-insert-v3",
    "handle-pull-side-v3",
    "handle-pull-v3",
    "lever-pull-v3",
    "pick-out-of-hole-v3",
    "pick-place-wall-v3",
    "push-back-v3",
    "push-v3",
    "push-wall-v3",
    "reach-v3",
    "reach-wall-v3",
    "soccer-v3",
    "stick-pull-v3",
    "stick-push-v3",
    "sweep-into-v3",
    "sweep-v3",
)

HELDOUT_TASKS: tuple[str, ...] = (
    "window-open-v3",
    "window-close-v3",
    "door-close-v3",
    "drawer-close-v3",
    "faucet-open-v3",
    "faucet-close-v3",
    "coffee-button-v3",
    "handle-press-v3",
    "handle-press-side-v3",
    "plate-slide-v3",
    "plate-slide-side-v3",
    "plate-slide-back-v3",
    "plate-slide-back-side-v3",
    "pick-place-v3",
    "peg-insert-side-v3",
    "peg-unplug-side-v3",
    "shelf-place-v3",
)


def check_heldout(task: str) -> str:
    """Return ``task`` when it is held out of pretraining; raise a ``ValueError`` naming the split otherwise."""
    if task in PRETRAIN_TASKS:
        raise ValueError(
            f"task {task!r} is one of Prophet's pretraining tasks (lightning_prophrl.envs.task_split.PRETRAIN_TASKS); "
            f"adapt and evaluate on a held-out task instead: {', '.join(HELDOUT_TASKS)}"
        )
    if task not in HELDOUT_TASKS:
        raise ValueError(f"unknown Meta-World task {task!r}; held-out tasks: {', '.join(HELDOUT_TASKS)}")
    return task
