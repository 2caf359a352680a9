"""Language instructions for the 50 Meta-World v3 tasks.

Meta-World ships no language: these instructions were written for this project by looking at rendered initial
states (object colours and layout as they appear in ``"overview"`` renders). They name the object to manipulate and the
goal in the words a VLA prompt would use, so that the frozen text encoder separates the tasks.
"""

from __future__ import annotations

INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "pick up the ring by its green handle and put it over the red peg",
    "basketball-v3": "pick up the basketball and dunk it into the hoop",
    "bin-picking-v3": "pick up the green cube from the red bin and place it in the blue bin",
    "box-close-v3": "pick up the lid by its handle and close the box with it",
    "button-press-topdown-v3": "press the red button down from above",
    "button-press-topdown-wall-v3": "reach over the wall and press the red button down from above",
    "button-press-v3": "push the red button into the yellow box",
    "button-press-wall-v3": "reach past the wall and push the red button into the yellow box",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug away from the coffee machine to the goal",
    "coffee-push-v3": "push the mug under the spout of the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "lift the ring by its green handle off the peg",
    "door-close-v3": "swing the open door closed",
    "door-lock-v3": "turn the knob on the door to lock it",
    "door-open-v3": "pull the door open by its handle",
    "door-unlock-v3": "turn the knob on the door to unlock it",
    "hand-insert-v3": "put the gripper into the hole in the table",
    "drawer-close-v3": "push the green drawer closed",
    "drawer-open-v3": "pull the green drawer open by its handle",
    "faucet-open-v3": "turn the red faucet handle to open the faucet",
    "faucet-close-v3": "turn the red faucet handle to close the faucet",
    "hammer-v3": "pick up the hammer and drive the nail into the box",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the red handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the red handle up",
    "lever-pull-v3": "pull the lever up",
    "pick-place-wall-v3": "pick up the red puck, lift it over the wall and place it at the goal",
    "pick-out-of-hole-v3": "pick the red object out of the hole and lift it to the goal",
    "pick-place-v3": "pick up the red puck and place it at the goal",
    "plate-slide-v3": "slide the black puck into the net",
    "plate-slide-side-v3": "slide the black puck sideways into the net",
    "plate-slide-back-v3": "slide the black puck back out of the net",
    "plate-slide-back-side-v3": "slide the black puck sideways out of the net",
    "peg-insert-side-v3": "pick up the green peg and insert it sideways into the hole in the box",
    "peg-unplug-side-v3": "pull the peg sideways out of its socket",
    "soccer-v3": "push the soccer ball into the goal",
    "stick-push-v3": "grab the blue stick and use it to push the thermos to the goal",
    "stick-pull-v3": "grab the blue stick and use it to pull the thermos to the goal",
    "push-v3": "push the red puck to the goal",
    "push-wall-v3": "push the red puck around the wall to the goal",
    "push-back-v3": "push the brown block back to the goal",
    "reach-v3": "move the gripper to the red goal",
    "reach-wall-v3": "reach over the wall to the red goal",
    "shelf-place-v3": "pick up the blue cube and place it on the shelf",
    "sweep-into-v3": "sweep the brown block into the hole",
    "sweep-v3": "sweep the brown block off the edge of the table",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}

TASKS: tuple[str, ...] = tuple(INSTRUCTIONS)


def instruction_for(task: str) -> str:
    """The language instruction of a Meta-World v3 task.

    Args:
        task: a Meta-World v3 environment name, e.g. ``"pick-place-v3"``.

    Raises:
        KeyError: naming the unknown task and the closest known ones.
    """
    try:
        return INSTRUCTIONS[task]
    except KeyError:
        stem = task.removesuffix("-v3").removesuffix("-v2").split("-")[0]
        close = [t for t in TASKS if t.startswith(stem)] or list(TASKS[:5])
        raise KeyError(f"no instruction for task {task!r}; known Meta-World v3 tasks include {close}") from None
