"""Memory budget of the real-scale runs, per GPU, from models built on the meta device (nothing is allocated):

1. Prophet training (pretraining: every parameter but the codec; LoRA adaptation) without sharding and with FSDP
   full sharding over ``world_size`` GPUs, bf16-mixed, activation checkpointing of the DiT blocks;
2. an FA-GRPO node: the frozen Prophet (bf16, rollouts), a VLA-size policy (:mod:`.vla`, trained fully or with LoRA),
   its frozen reference (bf16) and a VLM reward judge (bf16, by parameter count) on one GPU, and the same with the
   policy sharded by FSDP.

Run: ``python -m lightning_prophrl.scale.budget`` (``--help`` for the sizes); it prints markdown tables.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from torch import nn

from lightning_prophrl.scale.activations import measure_activations, prophet_batch
from lightning_prophrl.scale.memory import GIB, MemoryEstimate, ParamCounts, estimate_memory, format_budget

_DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "prophet" / "model_2b.yaml"  # the package's


def meta_prophet(config: str | Path, lora_rank: int | None = None) -> nn.Module:
    """The Prophet of a model YAML (``class_path``/``init_args``) on the meta device, in training mode; with
    ``lora_rank`` the ``ProphetAdaptModule`` LoRA set-up (adapters + conditioning trainable, the rest frozen)."""
    from lightning_prophrl.models.prophet import Prophet
    from lightning_prophrl.modules.prophet_adapt import ProphetAdaptModule

    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"--prophet: {path} not found (a model YAML such as configs/prophet/model_2b.yaml)")
    spec = yaml.safe_load(path.read_text())
    with torch.device("meta"):
        model = Prophet(**spec.get("init_args", spec)).train()
        if lora_rank is not None:
            model = ProphetAdaptModule(model=model, mode="lora", lora_rank=lora_rank).model
    return model


def prophet_training(args: argparse.Namespace) -> list[MemoryEstimate]:
    """Prophet pretraining and LoRA adaptation, unsharded and FSDP-sharded."""
    from diffusers.models.transformers.transformer_cosmos import CosmosTransformerBlock

    out = []
    for label, lora in (("pretrain", None), ("LoRA adapt", args.lora_rank)):
        model = meta_prophet(args.prophet, lora)
        batch = prophet_batch(model, args.image_size, 1)
        act = measure_activations(model, lambda m, b=batch: m.training_loss(b), 1, (CosmosTransformerBlock,))
        for sharding, world in (("none", 1), ("full", args.world_size)):
            out.append(estimate_memory(
                model, precision="bf16-mixed", world_size=world, sharding=sharding, wrap=(CosmosTransformerBlock,),
                activations=act, checkpointing=True, batch_size=args.batch_size, name=f"Prophet {label}",
            ))  # fmt: skip
    return out


def rl_node(args: argparse.Namespace) -> dict[str, list[MemoryEstimate]]:
    """The FA-GRPO models on one GPU, for a fully trained and a LoRA policy, with the policy unsharded or sharded."""
    from lightning_prophrl.constants import INSTRUCTION, OBS_IMAGE
    from lightning_prophrl.scale.vla import add_vla_lora, build_vla_policy, repeated_block_classes

    prophet = meta_prophet(args.prophet)
    frozen = dict(precision="bf16-true", optimizer="none")
    prophet_est = estimate_memory(ParamCounts(sum(p.numel() for p in prophet.parameters()), 0), name="Prophet (frozen)",
                                  **frozen)  # fmt: skip
    reward_est = estimate_memory(ParamCounts(int(args.reward_params), 0), name="reward VLM judge (frozen)", **frozen)
    b, k = args.rl_minibatch, args.num_steps
    tables: dict[str, list[MemoryEstimate]] = {}
    for mode in ("full", "lora"):
        with torch.device("meta"):
            policy = build_vla_policy(args.vla_size, num_steps=k).train()
        if mode == "lora":
            add_vla_lora(policy, args.lora_rank)
        obs = {OBS_IMAGE: torch.zeros(b, 3, 224, 224, device="meta"), INSTRUCTION: ["pick up the red cube"] * b}
        x = torch.zeros(b * k, policy.chunk_len, policy.action_dim, device="meta")
        t = torch.zeros(b * k, device="meta")
        act = measure_activations(policy, lambda m, x=x, t=t, o=obs: m.head(x, t, m.encode(o), repeats=k).sum(), b)
        total = sum(p.numel() for p in policy.parameters())
        ref = estimate_memory(ParamCounts(total, 0), name="reference policy (frozen)", **frozen)
        for sharding, world in (("none", 1), ("full", args.world_size)):
            pol = estimate_memory(policy, precision="bf16-mixed", world_size=world, sharding=sharding,
                                  wrap=repeated_block_classes(policy), activations=act, batch_size=b,
                                  name=f"VLA policy ({mode})")  # fmt: skip
            tables[f"{mode}, policy {'FSDP x ' + str(world) if world > 1 else 'unsharded'}"] = [
                prophet_est,
                pol,
                ref,
                reward_est,
            ]
    return tables


def main(argv: list[str] | None = None) -> None:
    """``python -m lightning_prophrl.scale.budget``: print the budget tables (markdown)."""
    p = argparse.ArgumentParser(prog="python -m lightning_prophrl.scale.budget", description=__doc__.split("\n\n")[0])
    p.add_argument("--prophet", default=str(_DEFAULT_CONFIG), help="Prophet model YAML")
    p.add_argument("--image-size", type=int, default=256, help="frame size of Prophet training")
    p.add_argument("--batch-size", type=int, default=12, help="Prophet training samples per GPU")
    p.add_argument("--world-size", type=int, default=8, help="GPUs FSDP shards over")
    p.add_argument("--lora-rank", type=int, default=16, help="LoRA rank (Prophet adaptation and the LoRA policy)")
    p.add_argument("--vla-size", default="3b", choices=("3b", "tiny"), help="policy backbone size (scale.vla)")
    p.add_argument("--rl-minibatch", type=int, default=8, help="policy queries per PPO minibatch per GPU")
    p.add_argument("--num-steps", type=int, default=10, help="flow steps K of the policy")
    p.add_argument("--reward-params", type=float, default=8.29e9, help="reward judge parameters (Qwen2.5-VL-7B)")
    p.add_argument("--gpu-gib", type=float, default=80.0, help="GPU memory in GiB")
    args = p.parse_args(argv)
    print(f"## Prophet training, per GPU (bf16-mixed, activation checkpointing, batch {args.batch_size} at "
          f"{args.image_size} px)\n")  # fmt: skip
    print(format_budget(prophet_training(args), args.gpu_gib).rsplit("\n", 1)[0] + "\n")
    print(f"## FA-GRPO on one GPU (policy bf16-mixed, minibatch {args.rl_minibatch} x K = {args.num_steps})\n")
    for label, estimates in rl_node(args).items():
        print(f"### {label}\n\n{format_budget(estimates, args.gpu_gib)}\n")
    print(f"(GiB = {GIB} bytes)")


if __name__ == "__main__":
    main()
