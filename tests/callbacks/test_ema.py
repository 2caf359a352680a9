"""EMACallback: the average matches a hand computation, validation sees it, and resuming restores it exactly."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_prophrl.callbacks import EMACallback


class LinearRegression(L.LightningModule):
    """A real LightningModule small enough to follow by hand: SGD on a linear layer, plus a frozen parameter."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = torch.nn.Linear(3, 2)
        self.frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
        self.val_weights: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x) + self.frozen, y)

    def validation_step(self, batch, batch_idx):
        self.val_weights.append(self.layer.weight.detach().clone())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Recorder(L.Callback):
    """Trainable parameters after every training batch (i.e. after each optimizer step)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append({n: p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad})


def loader(n: int = 6, batch_size: int = 2) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    return DataLoader(TensorDataset(torch.randn(n, 3, generator=g), torch.randn(n, 2, generator=g)),
                      batch_size=batch_size, shuffle=False)  # fmt: skip


def trainer(callbacks, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                    enable_checkpointing=False, num_sanity_val_steps=0)  # fmt: skip
    return L.Trainer(callbacks=callbacks, **{**defaults, **kwargs})


def hand_ema(init: dict[str, torch.Tensor], steps: list[dict[str, torch.Tensor]], decay: float, every: int):
    ema = {k: v.clone() for k, v in init.items()}
    for step, params in enumerate(steps, start=1):  # global_step after the step
        if step % every == 0:
            ema = {k: decay * ema[k] + (1 - decay) * params[k] for k in ema}
    return ema


def test_ema_equals_the_hand_computed_average():
    module = LinearRegression()
    init = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    rec, ema = Recorder(), EMACallback(decay=0.8, every_n_steps=2, apply_at_end=False, validate_with_ema=False)
    trainer([rec, ema], max_steps=5).fit(module, loader(10))
    assert len(rec.steps) == 5 and ema.num_updates == 2
    expected = hand_ema(init, rec.steps, 0.8, 2)
    assert set(ema.ema) == {"layer.weight", "layer.bias"}  # the frozen parameter is not averaged
    for k, v in expected.items():
        torch.testing.assert_close(ema.ema[k], v, rtol=0, atol=1e-7)
        assert not torch.allclose(ema.ema[k], rec.steps[-1][k])  # a real average, not the last weights
    assert torch.equal(module.layer.weight, rec.steps[-1]["layer.weight"])  # raw weights kept (apply_at_end=False)


def test_validation_uses_the_average_and_training_resumes_from_raw_weights():
    module = LinearRegression()
    init = {"layer.weight": module.layer.weight.detach().clone(), "layer.bias": module.layer.bias.detach().clone()}
    rec, ema = Recorder(), EMACallback(decay=0.5, apply_at_end=True)
    trainer([rec, ema], max_epochs=2, limit_val_batches=1).fit(module, loader(4), loader(2))
    assert len(rec.steps) == 4 and len(module.val_weights) == 2  # 2 steps per epoch, validation after each epoch
    for epoch, seen in enumerate(module.val_weights, start=1):
        expected = hand_ema(init, rec.steps[: 2 * epoch], 0.5, 1)["layer.weight"]
        torch.testing.assert_close(seen, expected, rtol=0, atol=1e-7)
        assert not torch.allclose(seen, rec.steps[2 * epoch - 1]["layer.weight"])
    # Training continued from the raw weights: step 3 started from step 2's weights, not from the average.
    x, y = next(iter(loader(4)))
    raw = LinearRegression()
    raw.load_state_dict({**raw.state_dict(), "layer.weight": rec.steps[1]["layer.weight"],
                         "layer.bias": rec.steps[1]["layer.bias"]})  # fmt: skip
    raw.training_step((x, y), 0).backward()
    torch.testing.assert_close(rec.steps[2]["layer.weight"], raw.layer.weight - 0.1 * raw.layer.weight.grad)
    # apply_at_end: the model ends with the average of all four steps.
    assert torch.equal(module.layer.weight, ema.ema["layer.weight"])


def test_gradient_accumulation_counts_optimizer_steps_only():
    module = LinearRegression()
    ema = EMACallback(decay=0.9, apply_at_end=False)
    trainer([ema], max_epochs=1, accumulate_grad_batches=3).fit(module, loader(12))
    assert ema.num_updates == 2  # 6 batches, 2 optimizer steps


def test_resume_restores_the_average_exactly(tmp_path):
    def callbacks():
        return [EMACallback(decay=0.7, apply_at_end=False, validate_with_ema=False)]

    full_cbs = callbacks()
    full = LinearRegression()
    trainer(full_cbs, max_epochs=2).fit(full, loader())

    first_cbs = callbacks()
    t = trainer(first_cbs, max_epochs=1)
    t.fit(LinearRegression(), loader())
    t.save_checkpoint(tmp_path / "half.ckpt")
    state = torch.load(tmp_path / "half.ckpt", weights_only=False)["callbacks"][first_cbs[0].state_key]
    assert all(torch.equal(state["ema"][k], v) for k, v in first_cbs[0].ema.items())

    resumed_cbs = callbacks()
    resumed = LinearRegression()
    trainer(resumed_cbs, max_epochs=2).fit(resumed, loader(), ckpt_path=tmp_path / "half.ckpt")
    assert resumed_cbs[0].num_updates == full_cbs[0].num_updates == 6
    for k, v in full_cbs[0].ema.items():
        assert torch.equal(resumed_cbs[0].ema[k], v), k
    assert torch.equal(resumed.layer.weight, full.layer.weight)


def test_warmup_decay_and_argument_checks():
    ema = EMACallback(decay=0.99, warmup=True)
    assert ema.current_decay() == pytest.approx(1 / 10)
    ema.num_updates = 90
    assert ema.current_decay() == pytest.approx(91 / 100)
    ema.num_updates = 10_000
    assert ema.current_decay() == 0.99
    assert EMACallback(decay=0.5).state_key != EMACallback(decay=0.6).state_key
    with pytest.raises(ValueError, match="decay"):
        EMACallback(decay=1.0)
    with pytest.raises(ValueError, match="every_n_steps"):
        EMACallback(every_n_steps=0)
