"""Does a Prophet use its actions? The denoising loss at fixed noise levels under real, shuffled and absent actions.

Open-loop rollouts mix two failures: a model that ignores the actions and one that uses them but drifts. This probe
separates them on one-segment clips of held-out episodes: the flow loss of :meth:`Prophet.training_loss` at fixed
times ``t`` (the same noise for every variant), with

* ``real``: the episode's own actions and action frames (commanded end-effector targets);
* ``shuffled``: another episode's actions and action frames (:func:`shuffle_actions`);
* ``no_frames``: the real actions, action frames marked absent (``has_camera = False``).

At ``t = 1`` the loss is what the model predicts from the context alone; a model that uses its actions has
``real < shuffled`` there. Run: ``python -m lightning_prophrl.studies.probe --model-dir DIR --data DIR [--stats DIR]``
(the final line is JSON).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import torch

from lightning_prophrl import constants as K


@torch.no_grad()
def action_use_probe(
    model_dir: str,
    data_dir: str,
    stats_from: str | None = None,
    times: Sequence[float] = (0.3, 0.7, 1.0),
    starts: Sequence[int] = (4, 12, 20, 28),
    num_episodes: int = 20,
    stride: int = 4,
    image_size: int = 64,
    history_len: int = 8,
) -> dict[str, Any]:
    """Mean flow loss per ``(variant, t)`` over one-segment clips starting at each of ``starts`` (strided frames).

    Returns:
        ``{"loss": {variant: {t: loss}}, "clips": n, ...}``; ``shuffled - real`` at ``t = 1`` is the action effect.
    """
    from lightning_prophrl.callbacks.world_model import load_eval_episodes, shuffle_actions
    from lightning_prophrl.models.prophet import Prophet

    model = Prophet.from_pretrained(model_dir).eval()
    chunk = int(model.config.action_chunk_length)
    sums: dict[str, dict[float, float]] = {}
    clips = 0
    for start in starts:
        eps = load_eval_episodes([{"path": data_dir, "stride": stride}], num_episodes, 1, chunk, image_size,
                                 history_len=history_len, stats_from=stats_from or model_dir,
                                 start_frame=start)  # fmt: skip
        n = eps[K.ACTIONS].shape[0]
        clips += n
        variants = {"real": eps, "shuffled": shuffle_actions(eps, start),
                    "no_frames": {**eps, K.HAS_CAMERA: torch.zeros(n, dtype=torch.bool)}}  # fmt: skip
        for name, batch in variants.items():
            for t in times:
                gen = torch.Generator().manual_seed(start)
                loss = flow_loss_at(model, batch, float(t), gen)
                sums.setdefault(name, {}).setdefault(float(t), 0.0)
                sums[name][float(t)] += loss * n
    loss = {name: {t: v / clips for t, v in by_t.items()} for name, by_t in sums.items()}
    return {"model_dir": model_dir, "data_dir": data_dir, "clips": clips, "times": list(times), "loss": loss,
            "action_effect_t1": loss["shuffled"][1.0] - loss["real"][1.0] if 1.0 in loss["real"] else None}  # fmt: skip


def flow_loss_at(model: Any, batch: dict[str, Any], t: float, generator: torch.Generator) -> float:
    """``training_loss`` with every sample at time ``t`` (the model's own ``sample_t`` temporarily replaced)."""
    model.sample_t = lambda b, device, g=None: torch.full((b,), t, device=device)
    try:
        _, logs = model.training_loss(batch, generator=generator)
    finally:
        del model.sample_t
    return float(logs["flow_loss"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m lightning_prophrl.studies.probe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--model-dir", required=True, help="save_pretrained directory of a Prophet")
    ap.add_argument("--data", required=True, help="episode shards (held-out target episodes)")
    ap.add_argument("--stats", default=None, help="stats.json directory of the model's actions (default model dir)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = action_use_probe(args.model_dir, args.data, args.stats)
    for name, by_t in result["loss"].items():
        print(f"{name:>10}: " + "  ".join(f"t={t:.1f} {v:.4f}" for t, v in by_t.items()))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
