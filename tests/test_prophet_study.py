"""The Prophet world-model study: its pieces (config, LoRA merge, memory ablation, agreement, contact sheet) and the
quick study end to end on real generated Meta-World data."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lightning_prophrl import constants as K
from lightning_prophrl.models.prophet import Prophet
from lightning_prophrl.studies.prophet import (
    ProphetStudyConfig,
    _success_agreement,
    _train_kwargs,
    contact_sheet,
    generate_wm_data,
    memory_disabled,
    merge_lora,
    prophet_config,
    run_study,
)


def _tiny(history: int = 4) -> Prophet:
    torch.manual_seed(0)
    return Prophet(**prophet_config(image_size=16, chunk_len=2, history_length=history)).eval()


def _inputs(model: Prophet, b: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    c = model.latent_codec.latent_channels
    return {
        "noisy_latents": torch.randn(b, c, 2, 4, 4, generator=g),
        "timestep": torch.full((b,), 0.5),
        "cond_latents": torch.randn(b, c, 1, 4, 4, generator=g),
        "actions": torch.randn(b, 2, K.ACTION_DIM, generator=g),
        "history_latents": torch.randn(b, c, 4, 4, 4, generator=g),
        "history_mask": torch.ones(b, 4, dtype=torch.bool),
    }


def test_prophet_config_sizes_and_errors():
    cfg = prophet_config(image_size=32, chunk_len=4, history_length=4)
    assert cfg["action_chunk_length"] == 4 and cfg["use_action_frames"] is True and cfg["action_frame_mode"] == "both"
    assert prophet_config(use_action_frames=False)["use_action_frames"] is False
    assert sum(cfg["history_scale_frames"]) == 4 and len(cfg["history_scales"]) == len(cfg["history_scale_frames"])
    assert prophet_config(history_length=8)["history_scale_frames"] == [2, 2, 4]  # model_tiny.yaml's split
    assert prophet_config(history_length=2)["history_scale_frames"] == [1, 1]
    model = Prophet(**prophet_config(image_size=16, chunk_len=3, history_length=1))
    assert model.config.history_length == 1 and hasattr(model, "action_frame_encoder")
    with pytest.raises(ValueError, match="image_size"):
        prophet_config(image_size=30)
    with pytest.raises(KeyError, match="not_an_arg"):
        prophet_config(not_an_arg=1)


def test_study_model_options_override_the_yaml_only_when_set():
    default = _train_kwargs(ProphetStudyConfig(out="unused"), 0)["model_config"]
    assert default["flow_shift"] == 24.0 and default["prev_concat"] is False  # model_tiny.yaml's values
    cfg = ProphetStudyConfig(out="unused", flow_shift=3.0, prev_concat=True, cond_concat=False)
    model_config = _train_kwargs(cfg, 0)["model_config"]
    assert model_config["flow_shift"] == 3.0 and model_config["prev_concat"] is True
    assert model_config["cond_concat"] is False


def test_generate_wm_data_rejects_leaky_or_large_settings(tmp_path):
    with pytest.raises(ValueError, match="held out"):
        generate_wm_data(tmp_path, ["reach-v3", "push-v3"], "push-v3")
    with pytest.raises(ValueError, match="target_episodes"):
        generate_wm_data(tmp_path, ["reach-v3"], "push-v3", target_episodes=21)
    assert not list(tmp_path.iterdir())  # nothing written before the checks


def test_merge_lora_keeps_the_adapted_function_and_reloads_without_adapters(tmp_path):
    model = _tiny()
    model.add_lora(rank=4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    x = _inputs(model)
    with torch.no_grad():
        adapted = model(**x).velocity
        merged_model = merge_lora(model)
        merged = merged_model(**x).velocity
    assert not any("lora" in k for k in merged_model.state_dict())
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-5)
    merged_model.save_pretrained(tmp_path / "m")
    reloaded_model = Prophet.from_pretrained(tmp_path / "m")
    saved, loaded = merged_model.state_dict(), reloaded_model.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)  # bit-exact weights
    with torch.no_grad():  # same weights, same function (fused weights live in other buffers: last-bit rounding)
        torch.testing.assert_close(reloaded_model(**x).velocity, merged, atol=1e-5, rtol=0)


def test_memory_disabled_is_the_all_masked_memory_and_is_undone():
    model = _tiny()
    x = _inputs(model)
    with torch.no_grad():
        with_memory = model(**x).velocity
        masked = model(**{**x, "history_mask": torch.zeros(2, 4, dtype=torch.bool)}).velocity
        with memory_disabled(model):
            disabled = model(**x).velocity
            args = [x[k] for k in ("noisy_latents", "timestep", "cond_latents", "actions")]
            positional = model(*args, None, x["history_latents"], x["history_mask"]).velocity  # positional history
        again = model(**x).velocity
    torch.testing.assert_close(disabled, masked, atol=0, rtol=0)
    torch.testing.assert_close(positional, masked, atol=0, rtol=0)
    assert (with_memory - masked).abs().max() > 1e-4  # the memory matters for this model
    torch.testing.assert_close(again, with_memory, atol=0, rtol=0)


def test_success_agreement_closed_form():
    prob = torch.tensor([[0.9, 0.9], [0.9, 0.2], [0.1, 0.8], [0.1, 0.1]])
    real = torch.tensor([1.0, 1.0, 0.0, 0.0])
    two = _success_agreement(prob, real, last=2, threshold=0.5)  # imagined: T F F F
    assert two["confusion"] == {"both": 1, "real_only": 1, "imagined_only": 0, "neither": 2}
    assert two["kappa"] == pytest.approx(0.5) and two["accuracy"] == 0.75 and two["imagined_rate"] == 0.25
    one = _success_agreement(prob, real, last=1, threshold=0.5)  # imagined: T F T F
    assert one["kappa"] == pytest.approx(0.0) and one["final_prob_mean"] == pytest.approx(0.5)


def test_contact_sheet_rows_are_episodes_times_videos(tmp_path):
    videos = [torch.full((3, 5, 3, 4, 4), v) for v in (-1.0, 0.0, 1.0)]
    path = contact_sheet(videos, tmp_path / "s.png", episodes=2, max_frames=12)
    img = cv2.imread(path)
    assert img.shape == (2 * 3 * 4, 5 * 4, 3)
    rows = img[::4, 0, 0].tolist()  # one value per (episode, video) row
    assert rows == [0, 128, 255, 0, 128, 255]
    with pytest.raises(ValueError, match="videos"):
        contact_sheet([videos[0], videos[1][:, :2]], tmp_path / "bad.png")


@pytest.mark.slow
def test_quick_study_end_to_end_and_cached(tmp_path):
    from lightning_prophrl.datamodules.shards import iter_episodes

    cfg = ProphetStudyConfig.quick(out=str(tmp_path / "study"))
    out = run_study(cfg)
    root = Path(cfg.out)
    # 1. Data: one dataset per pretraining task, disjoint target seeds, no stop at success
    data = out["data"]
    assert len(data["pretrain"]) == len(cfg.pretrain_tasks) == 4
    train_seeds = {e.meta["seed"] for e in iter_episodes(data["target"], decode_frames=False)}
    eval_eps = list(iter_episodes(data["eval"], decode_frames=False))
    assert len(train_seeds) == cfg.target_episodes and len(eval_eps) == cfg.eval_episodes
    assert train_seeds.isdisjoint(e.meta["seed"] for e in eval_eps)
    assert all(e.meta["num_actions"] == cfg.max_steps and e.meta["task"] == cfg.target_task for e in eval_eps)
    # 2. Table: every setting with its ablation rows, and the copy-last baseline
    table = (root / "results.md").read_text()
    header = table.splitlines()[0]
    for col in ("PSNR", "dyn PSNR", "flow EPE", "PSNR last segment", "success kappa", "seeds"):
        assert f"| {col} |" in header
    for setting in ("pretrained+lora", "scratch", "pretrained_only"):
        for suffix in ("", " · shuffled actions", " · no memory"):
            assert f"| {setting}{suffix} |" in table
    assert "| copy-last (first frame held) |" in table
    # 3. Reports: 3 segments; the first has no history, so memory changes only later segments
    reports = json.loads((root / "results.json").read_text())["reports"]
    r = reports["pretrained+lora"][0]
    assert r["segments"] == cfg.segments == 3 and len(r["psnr_per_segment"]) == 3
    assert r["psnr_per_segment"][0] == r["psnr_per_segment_no_memory"][0]
    assert r["memory_effect"] > 0 and r["action_effect"] > 0
    assert r["psnr_copy_last"] == reports["scratch"][0]["psnr_copy_last"]  # the baseline ignores the model
    assert sum(r["success"]["confusion"].values()) == cfg.eval_episodes
    sheet = cv2.imread(r["contact_sheet"])
    assert sheet.shape == (2 * 3 * cfg.image_size, 12 * cfg.image_size, 3)  # 2 episodes x (real, GT, perturbed)
    # 4. Models: plain save_pretrained dirs; LoRA touched only adapted weights
    pre = Prophet.from_pretrained(root / "pretrain" / "seed0" / "model").state_dict()
    lora = Prophet.from_pretrained(root / "adapt_lora" / "seed0" / "model").state_dict()
    assert set(lora) == set(pre) and (root / "adapt_lora" / "seed0" / "model" / K.STATS_FILE).exists()
    attn = [k for k in pre if k.startswith("transformer.") and any(t in k for t in ("to_q", "to_v"))]
    frozen = [k for k in pre if k.startswith("transformer.") and ".ff." in k]
    assert attn and frozen and any(not torch.equal(pre[k], lora[k]) for k in attn)
    assert all(torch.equal(pre[k], lora[k]) for k in frozen)
    adapt_info = json.loads((root / "adapt_lora" / "seed0" / "done.json").read_text())
    scratch_info = json.loads((root / "scratch" / "seed0" / "done.json").read_text())
    assert adapt_info["steps"] == scratch_info["steps"] == cfg.adapt_steps
    assert adapt_info["trainable_parameters"] < scratch_info["trainable_parameters"]
    assert list((root / "tb").iterdir())
    # 5. Rerun: every stage is cached
    weights = root / "pretrain" / "seed0" / "model" / "diffusion_pytorch_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert run_study(cfg)["table"] == out["table"]
    assert weights.stat().st_mtime_ns == stamp
    assert np.isfinite(r["psnr"]) and r["psnr"] > 0
