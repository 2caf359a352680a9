"""Can a Prophet configuration learn to use its actions at all? A two-minute synthetic check on CPU.

On the Meta-World data a model that ignores its actions loses little at one step (the hand moves ~1 cm per model
frame and is largely predictable from the history), so "are the actions used" takes a 45-minute study to answer.
This task answers it for a conditioning design in minutes, because here *only* the action says where things go:

* frames are ``size x size`` (pixel codec), a grey background with one red disk of radius ``radius``;
* the conditioning frame has the disk at a random centre ``p`` (uniform in the middle half of the frame);
* the 2-D action ``a`` is uniform in ``[-1, 1]^2`` (times ``action_gain``) in the first two unified dimensions;
* the future frame has the disk at ``centre + shift * a`` (``mode="absolute"``: needs absolute positions, e.g.
  ``extra_pos_embed_type: learnable``) or at ``p + shift * a`` (``mode="relative"``: move the disk by the action).

The model is trained with :meth:`Prophet.training_loss` (one future frame, no memory, no action frames, no success
head) and scored by the clean-target loss at fixed noise levels under the real and the shuffled (rolled) actions with
the same noise: a model that uses its actions has ``real < shuffled`` at ``t = 1``. Measured results are in
docs/results.md. Run: ``python -m lightning_prophrl.studies.synthetic [--steps N] [--mode absolute|relative]
[--set key=value ...]`` (``--set`` takes Prophet arguments, values parsed as YAML); the final line is JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from lightning_prophrl import constants as K

MODES = ("absolute", "relative")


def disk_frames(centres: torch.Tensor, size: int, radius: float) -> torch.Tensor:
    """``(B, 2)`` pixel centres ``(x, y)`` -> ``(B, 3, size, size)`` frames in ``[-1, 1]``."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    inside = (xx[None] - centres[:, 0, None, None]) ** 2 + (yy[None] - centres[:, 1, None, None]) ** 2 < radius**2
    frames = torch.full((centres.shape[0], 3, size, size), -0.5)
    frames[:, 0] = torch.where(inside, 0.9, -0.5)
    frames[:, 1] = torch.where(inside, -0.9, -0.5)
    return frames


def synthetic_batch(
    n: int,
    generator: torch.Generator,
    mode: str = "absolute",
    size: int = 32,
    radius: float = 3.0,
    shift: float = 8.0,
    action_gain: float = 5.0,
) -> dict[str, torch.Tensor]:
    """One batch of the task (keys of :meth:`Prophet.training_loss`; ``"centre"`` holds the future disk centres)."""
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}")
    quarter = size / 4
    p = quarter + 2 * quarter * torch.rand(n, 2, generator=generator)
    a = 2 * torch.rand(n, 2, generator=generator) - 1
    centre = (size / 2 if mode == "absolute" else p) + shift * a
    actions = torch.zeros(n, 1, K.ACTION_DIM)
    actions[:, 0, :2] = action_gain * a
    return {
        K.COND_FRAME: disk_frames(p, size, radius),
        K.FUTURE: disk_frames(centre, size, radius)[:, None],
        K.ACTIONS: actions,
        "centre": centre,
    }


def run_synthetic(
    overrides: dict[str, Any] | None = None,
    steps: int = 1500,
    mode: str = "absolute",
    batch_size: int = 16,
    lr: float = 3e-4,
    eval_size: int = 64,
    seed: int = 0,
    size: int = 32,
) -> dict[str, Any]:
    """Train the tiny Prophet (``model_tiny.yaml`` + ``overrides``) on the task and score its action use.

    Returns:
        ``{"loss": {"real": {t: l}, "shuffled": {t: l}}, "action_effect": mean |pred(a) - pred(-a)| at t = 1,
        "prediction_scale": mean |pred(a)|, "seconds", "steps", "mode", "overrides"}``.
    """
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.recipes.prophet import prophet_config
    from lightning_prophrl.studies.probe import flow_loss_at

    if steps < 0:
        raise ValueError(f"`steps` must be >= 0, got {steps}")
    overrides = dict(overrides or {})
    torch.manual_seed(seed)
    cfg = prophet_config(size, chunk_len=1, history_length=0, use_action_frames=False)
    cfg.update(success_head=False, **overrides)
    model = Prophet(**cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    model.train()
    for _ in range(steps):
        batch = synthetic_batch(batch_size, g, mode, size)
        loss, _ = model.training_loss(batch)  # the extra "centre" key is not read
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    model.eval()
    batch = synthetic_batch(eval_size, torch.Generator().manual_seed(seed + 1), mode, size)
    shuffled = {**batch, K.ACTIONS: batch[K.ACTIONS].roll(1, 0)}
    with torch.no_grad():  # the probe's fixed-time flow loss, the same noise for real and shuffled actions
        losses = {name: {t: flow_loss_at(model, b, t, torch.Generator().manual_seed(5)) for t in (0.3, 1.0)}
                  for name, b in (("real", batch), ("shuffled", shuffled))}  # fmt: skip
        cond_lat = model.latent_codec.encode(batch[K.COND_FRAME][:, None])
        noise = torch.randn((eval_size, cond_lat.shape[1], 1, *cond_lat.shape[-2:]), generator=g)
        ones = torch.ones(eval_size)
        pred = model(noise, ones, cond_lat, batch[K.ACTIONS]).prediction
        flipped = model(noise, ones, cond_lat, -batch[K.ACTIONS]).prediction
    return {"loss": losses, "action_effect": float((pred - flipped).abs().mean()),
            "prediction_scale": float(pred.abs().mean()), "seconds": seconds, "steps": steps, "mode": mode,
            "overrides": overrides}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import yaml

    ap = argparse.ArgumentParser(prog="python -m lightning_prophrl.studies.synthetic", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--mode", choices=MODES, default="absolute")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a Prophet argument (YAML value)")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    torch.set_num_threads(args.threads)
    result = run_synthetic(overrides, args.steps, args.mode, lr=args.lr, seed=args.seed)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
