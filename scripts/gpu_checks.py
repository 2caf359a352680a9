"""GPU checks of the real-scale pieces, in one short run (the tests never need it; ``--tiny --device cpu`` is the
plumbing check they run):

1. Prophet training: the 2B-class Prophet (configs/prophet/model_2b.yaml, random weights) for a few AdamW steps in
   bf16 autocast with activation checkpointing: step time, peak memory, and the memory estimate
   (:mod:`lightning_prophrl.scale.memory`) of the same step for comparison.
2. Prophet generation: frames per second of ``Prophet.generate`` at 1, 2 and 4 sampling steps (bf16, history given).
3. FA-GRPO log-probs with a policy of real VLA size (:mod:`lightning_prophrl.scale.vla`: a PaliGemma-3B backbone
   built from its config + a 0.35 B flow head): the K = 10 per-step log-probs in one batched call
   (``FlowMatchingPolicy.log_prob``) against a loop over the steps (``log_prob_loop``), forward + backward, and
   forward only (also re-encoding the observation every step).
4. bf16 rollouts, fp32 log-probs: SDE rollouts sampled in bf16 (autocast, and bf16 weights), the behaviour log-probs
   recomputed without gradients and the first minibatch's log-probs with gradients, as ``FAGRPOModule`` does: the
   log-probs must be float32 and the FA-GRPO ratio exactly 1.

A check that runs out of memory is recorded as an error and the others still run. Output: a JSON file and a markdown
table on stdout. Usage::

    python scripts/gpu_checks.py --out runs/gpu_checks/h100.json       # on a GPU machine
    python scripts/gpu_checks.py --tiny --device cpu --out /tmp/c.json  # tiny models, CPU, seconds
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from lightning_prophrl import constants as K
from lightning_prophrl.models.prophet import Prophet
from lightning_prophrl.rl import fa_grpo_loss
from lightning_prophrl.scale import estimate_memory, measure_activations, meta_copy, prophet_batch
from lightning_prophrl.scale.memory import GIB
from lightning_prophrl.scale.vla import build_vla_policy

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "prophet"
GENERATION_STEPS = (1, 2, 4)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="torch device (cuda, cuda:1, cpu)")
    p.add_argument("--tiny", action="store_true", help="tiny models (configs/prophet/model_tiny.yaml, tiny VLA)")
    p.add_argument("--out", default="runs/gpu_checks/gpu_checks.json", help="JSON output file")
    p.add_argument("--image-size", type=int, default=None, help="frame size (default 256; tiny: 32)")
    p.add_argument("--train-batch", type=int, default=None, help="Prophet training batch (default 4; tiny: 2)")
    p.add_argument("--train-steps", type=int, default=5, help="Prophet training steps (the first is not timed)")
    p.add_argument("--gen-batch", type=int, default=1, help="rollouts per generate call")
    p.add_argument("--vla-batch", type=int, default=None, help="policy queries per log-prob call (default 8; tiny: 2)")
    p.add_argument("--num-steps", type=int, default=10, help="flow steps K of the policy")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement")
    args = p.parse_args(argv)
    args.image_size = args.image_size or (32 if args.tiny else 256)
    args.train_batch = args.train_batch or (2 if args.tiny else 4)
    args.vla_batch = args.vla_batch or (2 if args.tiny else 8)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no CUDA device here (use --device cpu, with --tiny)")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Mean seconds of ``fn()`` over ``repeats`` calls after one untimed warm-up call."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16)


def build_prophet(args: argparse.Namespace, device: torch.device) -> Prophet:
    spec = yaml.safe_load((CONFIGS / ("model_tiny.yaml" if args.tiny else "model_2b.yaml")).read_text())["init_args"]
    torch.manual_seed(0)
    with torch.device(device):
        return Prophet(**spec)


def random_batch(model: Prophet, size: int, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator(device).manual_seed(0)
    batch = prophet_batch(model, size, batch_size, device=device)
    return {k: (torch.rand(v.shape, generator=g, device=device) * 2 - 1 if v.dtype.is_floating_point else v)
            for k, v in batch.items()}  # fmt: skip


def check_prophet_training(model: Prophet, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """(1) AdamW steps of the training loss in bf16 autocast with the model's activation checkpointing."""
    from diffusers.models.transformers.transformer_cosmos import CosmosTransformerBlock

    model.train().enable_gradient_checkpointing()
    twin = meta_copy(model)
    act = measure_activations(twin, lambda m: m.training_loss(prophet_batch(m, args.image_size, 1)), 1,
                              (CosmosTransformerBlock,))  # fmt: skip
    estimate = estimate_memory(model, precision="bf16-mixed", activations=act, checkpointing=True,
                               batch_size=args.train_batch)  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    batch = random_batch(model, args.image_size, args.train_batch, device)
    losses: list[float] = []

    def step() -> None:
        with _autocast(device):
            loss, _ = model.training_loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))

    _reset_peak(device)
    seconds = timed(step, device, max(1, args.train_steps - 1))
    return {
        "params_b": sum(p.numel() for p in model.parameters()) / 1e9,
        "batch_size": args.train_batch,
        "image_size": args.image_size,
        "steps": len(losses),
        "step_time_s": seconds,
        "peak_memory_gib": _peak_gib(device),
        "estimated_gib": estimate.total / GIB,
        "final_loss": losses[-1],
        "loss_finite": all(torch.isfinite(torch.tensor(losses)).tolist()),
    }


def check_prophet_generation(model: Prophet, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """(2) Frames per second of ``generate`` at 1/2/4 sampling steps (bf16 autocast, full history)."""
    model.eval()
    batch = random_batch(model, args.image_size, args.gen_batch, device)
    length = batch[K.FUTURE].shape[1]
    fps: dict[str, float] = {}
    _reset_peak(device)
    for steps in GENERATION_STEPS:

        def generate(n: int = steps) -> None:
            with torch.no_grad(), _autocast(device):
                model.generate(batch[K.COND_FRAME], batch[K.ACTIONS], history=batch.get(K.HISTORY),
                               history_mask=batch.get(K.HISTORY_MASK), num_steps=n)  # fmt: skip

        fps[str(steps)] = args.gen_batch * length / timed(generate, device, args.repeats)
    return {"batch_size": args.gen_batch, "frames_per_call": args.gen_batch * length, "fps": fps,
            "peak_memory_gib": _peak_gib(device)}  # fmt: skip


def _policy_inputs(policy: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    g = torch.Generator(device).manual_seed(0)
    return {
        K.OBS_IMAGE: torch.rand(args.vla_batch, 3, 224, 224, generator=g, device=device) * 2 - 1,
        K.INSTRUCTION: ["put the red block in the bowl"] * args.vla_batch,
    }


def check_vla_log_probs(policy: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """(3) Batched vs per-step log-probs of K flow steps with a VLA-size policy (bf16 autocast)."""
    obs = _policy_inputs(policy, args, device)
    with torch.no_grad(), _autocast(device):
        x_steps = policy.sample(obs, mode="sde", generator=torch.Generator(device).manual_seed(1)).x_steps

    def fwd_bwd(fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with _autocast(device):
                fn(obs, x_steps).sum().backward()
            policy.zero_grad(set_to_none=True)

        return run

    def fwd(fn: Callable[..., torch.Tensor], **kw: Any) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad(), _autocast(device):
                fn(obs, x_steps, **kw)

        return run

    _reset_peak(device)
    out = {"params_b": sum(p.numel() for p in policy.parameters()) / 1e9, "batch_size": args.vla_batch,
           "K": args.num_steps}  # fmt: skip
    out["fwd_bwd_batched_s"] = timed(fwd_bwd(policy.log_prob), device, args.repeats)
    out["fwd_bwd_loop_s"] = timed(fwd_bwd(policy.log_prob_loop), device, args.repeats)
    out["fwd_batched_s"] = timed(fwd(policy.log_prob), device, args.repeats)
    out["fwd_loop_s"] = timed(fwd(policy.log_prob_loop), device, args.repeats)
    out["fwd_loop_reencode_s"] = timed(fwd(policy.log_prob_loop, reencode=True), device, args.repeats)
    out["speedup_fwd_bwd"] = out["fwd_bwd_loop_s"] / out["fwd_bwd_batched_s"]
    out["speedup_fwd"] = out["fwd_loop_s"] / out["fwd_batched_s"]
    out["speedup_fwd_reencode"] = out["fwd_loop_reencode_s"] / out["fwd_batched_s"]
    out["peak_memory_gib"] = _peak_gib(device)
    return out


def _ratio_check(policy: torch.nn.Module, obs: dict[str, Any], device: torch.device, autocast: bool) -> dict:
    """One bf16 rollout, behaviour log-probs recomputed (no grad), first-minibatch log-probs (grad), FA-GRPO ratio."""
    ctx = _autocast(device) if autocast else torch.autocast(device.type, enabled=False)
    with torch.no_grad(), ctx:
        sample = policy.sample(obs, mode="sde", generator=torch.Generator(device).manual_seed(2))
        old = policy.log_prob(obs, sample.x_steps)
    with ctx:
        new = policy.log_prob(obs, sample.x_steps)
    adv = torch.randn(new.shape[0], device=device)
    loss, stats = fa_grpo_loss(new, old, adv)
    loss.backward()
    policy.zero_grad(set_to_none=True)
    return {
        "sampled_dtype": str(sample.log_probs.dtype),
        "log_prob_dtype": str(new.dtype),
        "ratio_min": float(stats["ratio_min"]),
        "ratio_max": float(stats["ratio_max"]),
        "exact": bool(torch.equal(new.detach(), old)) and float(stats["ratio_min"]) == float(stats["ratio_max"]) == 1,
        "sampler_mismatch": float((sample.log_probs.sum(1) - old.sum(1)).abs().max()),
    }


def check_bf16_ratio(policy: torch.nn.Module, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """(4) bf16 rollouts (autocast over fp32 weights, and bf16 weights) give fp32 log-probs and a ratio of exactly 1."""
    obs = _policy_inputs(policy, args, device)
    out = {"bf16-mixed": _ratio_check(policy, obs, device, autocast=True)}
    policy.to(torch.bfloat16)
    out["bf16-true"] = _ratio_check(policy, obs, device, autocast=False)
    policy.to(torch.float32)
    out["passed"] = all(r["exact"] and r["log_prob_dtype"] == "torch.float32" for r in out.values())
    return out


def _guarded(name: str, fn: Callable[[], dict[str, Any]], results: dict[str, Any]) -> None:
    try:
        results[name] = fn()
    except torch.cuda.OutOfMemoryError as err:
        results[name] = {"error": f"out of memory: {str(err).splitlines()[0]}"}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def markdown(results: dict[str, Any]) -> str:
    """The results as a markdown table (one row per figure)."""
    rows = [("device", results["device"])]
    train = results.get("prophet_train", {})
    if "error" in train:
        rows.append(("1. Prophet training", train["error"]))
    elif train:
        rows += [
            ("1. Prophet training: parameters (B)", _fmt(train["params_b"])),
            (f"1. step time, batch {train['batch_size']} at {train['image_size']} px (s)", _fmt(train["step_time_s"])),
            ("1. peak memory / estimate (GiB)", f"{_fmt(train['peak_memory_gib'])} / {_fmt(train['estimated_gib'])}"),
        ]
    gen = results.get("prophet_generate", {})
    if "error" in gen:
        rows.append(("2. Prophet generation", gen["error"]))
    for steps, fps in gen.get("fps", {}).items():
        rows.append((f"2. frames/s, {steps} sampling step(s), batch {gen['batch_size']}", _fmt(fps)))
    vla = results.get("vla_log_probs", {})
    if "error" in vla:
        rows.append(("3. VLA log-probs", vla["error"]))
    elif vla:
        rows += [
            ("3. VLA policy: parameters (B), queries x K", f"{_fmt(vla['params_b'])}, {vla['batch_size']} x {vla['K']}"),
            ("3. fwd+bwd batched / per-step (s), speedup",
             f"{_fmt(vla['fwd_bwd_batched_s'])} / {_fmt(vla['fwd_bwd_loop_s'])}, {_fmt(vla['speedup_fwd_bwd'])}x"),
            ("3. forward batched / per-step / per-step re-encoding (s)",
             f"{_fmt(vla['fwd_batched_s'])} / {_fmt(vla['fwd_loop_s'])} / {_fmt(vla['fwd_loop_reencode_s'])}"),
        ]  # fmt: skip
    ratio = results.get("bf16_ratio", {})
    for mode in ("bf16-mixed", "bf16-true"):
        if mode in ratio:
            r = ratio[mode]
            rows.append((f"4. {mode} rollouts: log-prob dtype, ratio min/max",
                         f"{r['log_prob_dtype']}, {r['ratio_min']!r} / {r['ratio_max']!r}"))  # fmt: skip
    if "passed" in ratio or "error" in ratio:
        rows.append(
            ("4. fp32 log-probs with ratio exactly 1", ratio.get("error", "pass" if ratio["passed"] else "FAIL"))
        )
    return "\n".join(["| check | result |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def run_prophet_checks(args: argparse.Namespace, device: torch.device, results: dict[str, Any]) -> None:
    """Checks (1) and (2) on one Prophet (freed when this returns)."""
    prophet = build_prophet(args, device)
    _guarded("prophet_train", lambda: check_prophet_training(prophet, args, device), results)
    _guarded("prophet_generate", lambda: check_prophet_generation(prophet, args, device), results)


def run_policy_checks(args: argparse.Namespace, device: torch.device, results: dict[str, Any]) -> None:
    """Checks (3) and (4) on one VLA-size policy (freed when this returns)."""
    torch.manual_seed(0)
    with torch.device(device):
        policy = build_vla_policy("tiny" if args.tiny else "3b", num_steps=args.num_steps).train()
    _guarded("vla_log_probs", lambda: check_vla_log_probs(policy, args, device), results)
    _guarded("bf16_ratio", lambda: check_bf16_ratio(policy, args, device), results)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the four checks, write the JSON (``--out``) and print the markdown table; returns the results."""
    args = parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"
    results: dict[str, Any] = {"device": name, "torch": torch.__version__, "mode": "tiny" if args.tiny else "full",
                               "date": datetime.date.today().isoformat()}  # fmt: skip
    run_prophet_checks(args, device, results)
    run_policy_checks(args, device, results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    print(f"\nwritten: {out}")
    return results


if __name__ == "__main__":
    main()
