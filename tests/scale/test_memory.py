"""Memory estimate (lightning_prophrl.scale.memory / .activations): exact weight, gradient and optimizer bytes of the
meta-device 2B Prophet, LoRA and FSDP accounting, and the meta activation estimate against real CPU saved tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from diffusers.models.transformers.transformer_cosmos import CosmosTransformerBlock
from torch import nn

from lightning_prophrl.models.prophet import Prophet
from lightning_prophrl.modules.prophet_adapt import ProphetAdaptModule
from lightning_prophrl.scale import estimate_memory, measure_activations, meta_copy, prophet_batch
from lightning_prophrl.scale.budget import main as budget_main

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "prophet"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
ACTIVATION_TOLERANCE = 0.02  # meta estimate vs real CPU saved bytes, without checkpointing
CHECKPOINTED_TOLERANCE = 0.05  # with checkpointing (the estimate keeps every block input, torch may share some)


def meta_2b() -> Prophet:
    spec = yaml.safe_load((CONFIGS / "model_2b.yaml").read_text())["init_args"]
    with torch.device("meta"):
        return Prophet(**spec).train()


def numel_by_module(model: nn.Module, trainable_only: bool = False) -> int:
    """Parameters counted module by module (each tensor once), independently of ``count_parameters``."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None and id(p) not in seen and (p.requires_grad or not trainable_only):
                seen.add(id(p))
                total += p.numel()
    return total


@pytest.fixture(scope="module")
def prophet_2b() -> Prophet:
    return meta_2b()


def test_2b_weights_gradients_and_adamw_bytes_are_exact(prophet_2b):
    total, trainable = numel_by_module(prophet_2b), numel_by_module(prophet_2b, trainable_only=True)
    codec = numel_by_module(prophet_2b.latent_codec)
    assert 2.0e9 < total < 2.2e9 and trainable == total - codec  # the codec is frozen, everything else trains
    e = estimate_memory(prophet_2b, precision="32-true")
    assert (e.counts.total, e.counts.trainable) == (total, trainable)
    assert (e.parameters, e.gradients, e.optimizer_state) == (4 * total, 4 * trainable, 8 * trainable)
    assert e.master_weights == e.compute_weights == 0 and e.activations == 0
    assert e.total == 4 * total + 12 * trainable
    mixed = estimate_memory(prophet_2b, precision="bf16-mixed")
    assert (mixed.parameters, mixed.optimizer_state, mixed.compute_weights) == (4 * total, 8 * trainable, 2 * total)
    frozen = estimate_memory(prophet_2b, precision="bf16-true", optimizer="none")
    assert (frozen.parameters, frozen.gradients, frozen.optimizer_state, frozen.total) == (2 * total, 0, 0, 2 * total)
    assert "Prophet" in str(e) and "optimizer state (AdamW)" in str(e)


def test_bf16_true_halves_weights_gradients_and_states(prophet_2b):
    full = estimate_memory(prophet_2b, precision="32-true")
    half = estimate_memory(prophet_2b, precision="bf16-true")
    assert (2 * half.parameters, 2 * half.gradients, 2 * half.optimizer_state) == (
        full.parameters, full.gradients, full.optimizer_state)  # fmt: skip
    master = estimate_memory(prophet_2b, precision="bf16-true", fp32_master=True)
    assert master.master_weights == 4 * full.counts.trainable and master.optimizer_state == full.optimizer_state


def test_lora_counts_only_the_adapters_as_trainable():
    base = meta_2b()
    expected = sum(16 * (m.in_features + m.out_features) for name, m in base.named_modules()
                   if isinstance(m, nn.Linear) and name.endswith(LORA_TARGETS))  # fmt: skip
    module = ProphetAdaptModule(model=base, mode="lora", lora_rank=16, train_conditioning=False)
    e = estimate_memory(module, precision="bf16-mixed")
    assert e.counts.trainable == expected > 0
    assert e.counts.total == numel_by_module(module) and e.counts.total - expected == numel_by_module(meta_2b())
    assert (e.gradients, e.optimizer_state) == (4 * expected, 8 * expected)


def test_fsdp_full_sharding_divides_sharded_terms_by_world_size(prophet_2b):
    wrap = (CosmosTransformerBlock,)
    one = estimate_memory(prophet_2b, precision="bf16-mixed", wrap=wrap)
    eight = estimate_memory(prophet_2b, precision="bf16-mixed", world_size=8, sharding="full", wrap=wrap)
    total = one.counts.total
    assert eight.parameters == 4 * total // 8 and eight.optimizer_state == one.optimizer_state // 8
    # every unit holds a trainable parameter: FSDP keeps a (sharded) gradient for whole units, the frozen codec too
    assert eight.gradients == 4 * total // 8
    blocks = [numel_by_module(b) for b in prophet_2b.transformer.transformer_blocks]
    root = total - sum(blocks)
    assert eight.compute_weights == 2 * (root + 2 * max(blocks))  # gathered bf16: root + running + prefetched block
    replicated = estimate_memory(prophet_2b, precision="bf16-mixed", world_size=8, sharding="none", wrap=wrap)
    assert replicated.parameters == one.parameters  # world size alone shards nothing


def test_fsdp_lora_keeps_gradients_of_whole_blocks_that_hold_adapters():
    module = ProphetAdaptModule(model=meta_2b(), mode="lora", lora_rank=16, train_conditioning=False)
    e = estimate_memory(module, precision="bf16-mixed", world_size=8, sharding="full", wrap=(CosmosTransformerBlock,))
    blocks = sum(numel_by_module(b) for b in module.model.transformer.transformer_blocks)
    assert e.gradients == 4 * blocks // 8  # the root unit (codec, embeddings, encoders) holds no trainable parameter
    assert e.optimizer_state == 8 * e.counts.trainable // 8


def graph_saved_bytes(loss: torch.Tensor, model: nn.Module) -> int:
    """Bytes of the distinct storages held by the autograd graph of ``loss`` (walking ``_saved_*`` attributes),
    without the model's parameters and buffers: what backward needs, measured on real tensors."""
    exclude = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen, stack, storages = set(), [loss.grad_fn], {}
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for name in dir(node):
            if name.startswith("_saved_"):
                value = getattr(node, name)
                for t in value if isinstance(value, tuple | list) else [value]:
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in exclude:
                        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        stack.extend(n for n, _ in node.next_functions)
    return sum(storages.values())


def tiny_prophet() -> Prophet:
    kwargs = yaml.safe_load((CONFIGS / "model_tiny.yaml").read_text())["init_args"]
    torch.manual_seed(0)
    return Prophet(**kwargs).train()


def real_batch(model: Prophet, size: int, batch_size: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: (torch.rand(v.shape, generator=g) * 2 - 1 if v.dtype.is_floating_point else v)
            for k, v in prophet_batch(model, size, batch_size, device="cpu").items()}  # fmt: skip


def test_meta_activation_estimate_matches_real_cpu_saved_tensors():
    model, size, b = tiny_prophet(), 32, 2
    twin = meta_copy(model)
    assert all(p.is_meta for p in twin.parameters()) and not any(p.is_meta for p in model.parameters())
    est = measure_activations(twin, lambda m: m.training_loss(prophet_batch(m, size, b)), b, (CosmosTransformerBlock,))
    loss, _ = model.training_loss(real_batch(model, size, b))
    real = graph_saved_bytes(loss, model)
    assert real > 1e6 and abs(est.saved_bytes - real) <= ACTIVATION_TOLERANCE * real
    assert est.per_sample(False) == est.saved_bytes / b

    # with the model's own checkpointing on, what stays saved is what is saved outside the blocks + their inputs
    model.enable_gradient_checkpointing()
    held: dict[int, int] = {}
    exclude = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in exclude:
            held[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.training_loss(real_batch(model, size, b))
    kept = est.outside_bytes + est.block_input_bytes
    assert abs(kept - sum(held.values())) <= CHECKPOINTED_TOLERANCE * sum(held.values())
    assert kept < 0.25 * est.saved_bytes and 0 < est.recompute_peak_bytes < est.saved_bytes  # 2 blocks: 1 recomputed


def test_estimate_scales_activations_with_batch_and_precision():
    model = meta_copy(tiny_prophet())
    act = measure_activations(model, lambda m: m.training_loss(prophet_batch(m, 32, 1)), 1, (CosmosTransformerBlock,))
    fp32 = estimate_memory(model, precision="32-true", activations=act, batch_size=4)
    bf16 = estimate_memory(model, precision="bf16-mixed", activations=act, batch_size=4)
    ckpt = estimate_memory(model, precision="32-true", activations=act, batch_size=4, checkpointing=True)
    assert fp32.activations == 4 * act.saved_bytes and bf16.activations == 4 * round(act.saved_bytes / 2)
    assert ckpt.activations == 4 * act.checkpointed_bytes
    assert bf16.compute_weights == 2 * act.grad_path_numel < 2 * bf16.counts.total  # the frozen codec is no-grad


def test_user_errors_name_the_argument(prophet_2b):
    with pytest.raises(ValueError, match="precision"):
        estimate_memory(prophet_2b, precision="16-mixed")
    with pytest.raises(ValueError, match="sharding"):
        estimate_memory(prophet_2b, sharding="hybrid")


def test_budget_command_prints_the_tables(capsys):
    budget_main(["--prophet", str(CONFIGS / "model_tiny.yaml"), "--image-size", "32", "--batch-size", "2",
                 "--vla-size", "tiny", "--rl-minibatch", "2", "--num-steps", "4", "--reward-params", "1e6"])  # fmt: skip
    out = capsys.readouterr().out
    assert out.count("| **sum** |") == 4 and "FSDP x 8" in out and "VLA policy (lora)" in out
    with pytest.raises(FileNotFoundError, match="--prophet"):
        budget_main(["--prophet", "missing.yaml"])
