"""Prophet world model (as in the paper) and its latent codecs, on the tiny CPU configuration."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from diffusers import CosmosTransformer3DModel

from lightning_prophrl import constants as K
from lightning_prophrl.models.latent import PixelShuffleCodec, WanVAECodec
from lightning_prophrl.models.prophet import Prophet

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "prophet"
B, L, S = 2, 8, 32  # batch, action chunk (tiny config), frame size (latent 8 x 8 with the x4 pixel codec)


def tiny_kwargs(**overrides) -> dict:
    kwargs = yaml.safe_load((CONFIGS / "model_tiny.yaml").read_text())["init_args"]
    return {**kwargs, **overrides}


def make_model(seed: int = 0, **overrides) -> Prophet:
    torch.manual_seed(seed)
    return Prophet(**tiny_kwargs(**overrides)).eval()


def camera(b: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.tensor([[30.0, 0.0, S / 2], [0.0, 30.0, S / 2], [0.0, 0.0, 1.0]])
    return k.expand(b, 3, 3).clone(), torch.eye(4).expand(b, 4, 4).clone()


def make_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ee = torch.zeros(B, L, 2, 7)
    ee[:, :, 0, :3] = torch.tensor([0.0, 0.0, 1.0]) + 0.05 * torch.randn(B, L, 3, generator=g)
    ee[:, :, 0, 3] = 1.0  # arm 1 is padded (zero quaternion)
    k, extr = camera()
    return {
        K.COND_FRAME: torch.rand(B, 3, S, S, generator=g) * 2 - 1,
        K.FUTURE: torch.rand(B, L, 3, S, S, generator=g) * 2 - 1,
        K.ACTIONS: torch.randn(B, L, 14, generator=g),
        K.ACTION_MASK: torch.tensor([[True] * 7 + [False] * 7] * B),
        K.HISTORY: torch.rand(B, 6, 3, S, S, generator=g) * 2 - 1,
        K.HISTORY_MASK: torch.tensor([[True] * 6, [False, False, True, True, True, True]]),
        K.EE_POSES: ee,
        K.GRIPPER: torch.rand(B, L, 2, generator=g),
        K.CAMERA_K: k,
        K.CAMERA_EXTR: extr,
        K.HAS_CAMERA: torch.tensor([True, True]),
        K.CLIP_SUCCESS: torch.tensor([1.0, 0.0]),
    }


def latent_inputs(model: Prophet, seed: int = 1) -> dict:
    """Random latent-space inputs of ``Prophet.forward`` (C = 48, 8 x 8 grid)."""
    g = torch.Generator().manual_seed(seed)
    c = model.latent_codec.latent_channels
    return dict(
        noisy_latents=torch.randn(B, c, L, 8, 8, generator=g),
        timestep=torch.tensor([0.3, 0.8]),
        cond_latents=torch.randn(B, c, 1, 8, 8, generator=g),
        actions=torch.randn(B, L, 14, generator=g),
        action_mask=None,
        history_latents=torch.randn(B, c, 5, 8, 8, generator=g),
        history_mask=None,
        action_frame_latents=torch.randn(B, c, L, 8, 8, generator=g),
        has_camera=torch.tensor([True, True]),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Configs and I/O
# ---------------------------------------------------------------------------------------------------------------------
def test_yaml_configs_parse_through_jsonargparse():
    from jsonargparse import ArgumentParser

    for name in ("model_tiny.yaml", "model_2b.yaml"):
        parser = ArgumentParser()
        parser.add_subclass_arguments(Prophet, "prophet")
        cfg = parser.parse_args(["--prophet", str(CONFIGS / name)])
        assert cfg.prophet.class_path.endswith("prophet.Prophet")
        if name == "model_tiny.yaml":
            assert isinstance(parser.instantiate_classes(cfg).prophet, Prophet)


def test_forward_shapes():
    model = make_model()
    out = model(**latent_inputs(model))
    assert out.velocity.shape == (B, 48, L, 8, 8)
    assert out.success_logit.shape == (B,)


def test_save_pretrained_round_trip_is_exact(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    reloaded = Prophet.from_pretrained(tmp_path)
    a, b = model(**latent_inputs(model)), reloaded(**latent_inputs(reloaded))
    assert torch.equal(a.velocity, b.velocity) and torch.equal(a.success_logit, b.success_logit)
    c = copy.deepcopy(model)(**latent_inputs(model))  # e.g. an EMA copy
    assert torch.equal(a.velocity, c.velocity)


def test_2b_config_builds_on_meta_with_about_2b_parameters():
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = Prophet(**yaml.safe_load((CONFIGS / "model_2b.yaml").read_text())["init_args"])
    total = model.num_parameters()
    dit = model.transformer.num_parameters()
    print(f"Prophet-2B: {total / 1e9:.3f}B parameters ({dit / 1e9:.3f}B DiT)")
    assert next(model.parameters()).device.type == "meta"
    assert 1.9e9 < dit < 2.0e9 and 2.0e9 < total < 2.2e9
    assert model.transformer.patch_embed.proj.weight.shape == (2048, 18 * 4)  # = Cosmos-Predict2-2B's checkpoint


def test_pretrained_backbone_path_loads_a_cosmos_checkpoint(tmp_path):
    torch.manual_seed(3)
    backbone_kwargs = {k: tiny_kwargs()[k] for k in ("num_attention_heads", "attention_head_dim", "text_embed_dim")}
    cosmos = CosmosTransformer3DModel(
        in_channels=48 + 1, out_channels=48, num_layers=1, adaln_lora_dim=16, max_size=(32, 32, 32),
        concat_padding_mask=True, extra_pos_embed_type=None, **backbone_kwargs,
    )  # fmt: skip  # a Cosmos-style checkpoint: condition mask + its own padding-mask channel
    cosmos.save_pretrained(tmp_path / "transformer")
    # pooled action frames: a Cosmos checkpoint has no input channels for concatenated action frames
    model = make_model(pretrained_backbone_path=str(tmp_path), action_frame_mode="pooled", cond_concat=False)
    assert model.config.pretrained_backbone_path is None and model.config.padding_mask_channel
    assert model.config.num_layers == 1 and len(model.transformer.transformer_blocks) == 1
    for name, value in cosmos.state_dict().items():
        assert torch.equal(model.transformer.state_dict()[name], value), name
    model.save_pretrained(tmp_path / "prophet")  # the saved config no longer needs the checkpoint
    reloaded = Prophet.from_pretrained(tmp_path / "prophet")
    assert torch.equal(reloaded(**latent_inputs(reloaded)).velocity, model(**latent_inputs(model)).velocity)


def test_lora_trains_only_adapters_and_round_trips_exactly(tmp_path):
    model = make_model()
    base = copy.deepcopy(model)
    model.add_lora(rank=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # B = 0 at init: the adapted model computes the base model's function (up to the last bit: CPU matmul kernels
    # round by buffer alignment, which the adapter's extra allocations change)
    assert all(float(p.detach().abs().max()) == 0.0 for n, p in model.named_parameters() if "lora_B" in n)
    torch.testing.assert_close(
        model(**latent_inputs(model)).velocity, base(**latent_inputs(base)).velocity, rtol=0, atol=1e-5
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    out = model(**latent_inputs(model)).velocity
    model.save_lora_adapter(tmp_path)
    base.load_lora_adapter(tmp_path, weight_name="pytorch_lora_weights.safetensors", prefix=None)
    assert torch.equal(base(**latent_inputs(base)).velocity, out)


# ---------------------------------------------------------------------------------------------------------------------
# Conditioning
# ---------------------------------------------------------------------------------------------------------------------
def test_memory_changes_output_and_masked_memory_is_a_no_op():
    model = make_model()
    inputs = latent_inputs(model)
    with_memory = model(**inputs).velocity
    other = model(**{**inputs, "history_latents": inputs["history_latents"] + 1.0}).velocity
    none = model(**{**inputs, "history_latents": None}).velocity
    assert not torch.allclose(with_memory, other, atol=1e-4) and not torch.allclose(with_memory, none, atol=1e-4)
    masked = model(**{**inputs, "history_mask": torch.zeros(B, 5, dtype=torch.bool)}).velocity
    assert torch.equal(masked, none)
    half = model(**{**inputs, "history_mask": torch.tensor([[True] * 5, [False] * 5])}).velocity
    assert torch.allclose(half[1], none[1], atol=1e-5) and not torch.allclose(half[0], none[0], atol=1e-4)
    assert not torch.allclose(
        make_model(history_length=0)(**inputs).velocity, with_memory, atol=1e-4
    )  # memory-less variant ignores history


def test_each_action_stream_changes_the_output():
    model = make_model()
    inputs = latent_inputs(model)
    ref = model(**inputs).velocity
    changed = model(**{**inputs, "actions": inputs["actions"] + 0.5}).velocity
    assert not torch.allclose(ref, changed, atol=1e-4)  # scalar stream
    af = model(**{**inputs, "action_frame_latents": inputs["action_frame_latents"].flip(2)}).velocity
    assert not torch.allclose(ref, af, atol=1e-4)  # action-frame stream (per-frame order matters)
    no_cam = {**inputs, "has_camera": torch.tensor([True, False])}
    a = model(**no_cam).velocity
    b = model(**{**no_cam, "action_frame_latents": torch.randn_like(inputs["action_frame_latents"])}).velocity
    assert torch.equal(a[1], b[1]) and not torch.allclose(a[0], b[0], atol=1e-4)  # no camera: f_af is zero
    assert torch.equal(model(**{**inputs, "action_frame_latents": None}).velocity[1], a[1])


def test_rendered_action_frames_reach_the_output():
    model = make_model()
    batch = make_batch()
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    loss, _ = model.training_loss(batch, generator=gen())
    moved = {**batch, K.EE_POSES: batch[K.EE_POSES] + torch.tensor([0.2, 0.0, 0.0, 0, 0, 0, 0])}
    assert not torch.equal(model.training_loss(moved, generator=gen())[0], loss)
    no_cam = {**batch, K.HAS_CAMERA: torch.tensor([False, False])}
    no_cam_moved = {**moved, K.HAS_CAMERA: torch.tensor([False, False])}
    assert torch.equal(
        model.training_loss(no_cam, generator=gen())[0], model.training_loss(no_cam_moved, generator=gen())[0]
    )


def test_zero_init_conditioning_starts_from_the_backbone():
    model = make_model(zero_init_conditioning=True)
    inputs = latent_inputs(model)
    ref = model(**inputs).velocity
    assert torch.equal(model(**{**inputs, "actions": torch.randn(B, L, 14)}).velocity, ref)


# ---------------------------------------------------------------------------------------------------------------------
# Training and sampling
# ---------------------------------------------------------------------------------------------------------------------
def test_training_loss_decreases_on_a_fixed_batch():
    model = make_model().train()
    batch = make_batch()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(30):
        loss, logs = model.training_loss(batch, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert set(logs) == {"loss", "flow_loss", "success_loss", "success_acc"}
    assert losses[-1] < 0.5 * losses[0], losses


def test_gradient_checkpointing_gives_the_same_gradients():
    model = make_model().train()
    batch = make_batch()
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.zero_grad()
        model.training_loss(batch, generator=torch.Generator().manual_seed(0))[0].backward()
        grads.append(model.history_encoder.proj[0].weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0


def test_training_loss_rejects_bad_batches():
    model = make_model()
    batch = make_batch()
    with pytest.raises(KeyError, match=K.ACTIONS):
        model.training_loss({k: v for k, v in batch.items() if k != K.ACTIONS})
    with pytest.raises(ValueError, match="action_chunk_length"):
        model.training_loss({**batch, K.FUTURE: batch[K.FUTURE][:, :4]})


def test_one_step_generate_is_one_euler_step():
    model = make_model()
    batch = make_batch()
    cond, actions = batch[K.COND_FRAME], batch[K.ACTIONS]
    gen = model.generate(cond, actions, num_steps=1, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(B, 48, L, 8, 8, generator=torch.Generator().manual_seed(0))
    cond_lat = model.latent_codec.encode(cond[:, None])
    with torch.no_grad():
        x0 = noise - model(noise, torch.ones(B), cond_lat, actions).velocity  # t: 1 -> 0
    scale = model.config.target_scale  # the flow generates the scaled residual
    frames = model.latent_codec.decode(torch.cat([cond_lat, x0 / scale + cond_lat], 2))[:, 1:].clamp(-1, 1)
    assert torch.allclose(gen.frames, frames, atol=1e-5) and gen.success_logit.shape == (B,)


@pytest.mark.parametrize("parameterization", ["velocity", "data"])
def test_parameterizations_give_a_consistent_velocity_and_loss(parameterization):
    model = make_model(parameterization=parameterization)
    inputs = latent_inputs(model)
    with torch.no_grad():
        out = model(**inputs)
    t = torch.as_tensor(inputs["timestep"]).reshape(-1).expand(B).view(B, 1, 1, 1, 1)
    expected = out.prediction if parameterization == "velocity" else (inputs["noisy_latents"] - out.prediction) / t
    assert torch.allclose(out.velocity, expected, atol=1e-5)
    # the loss is the MSE of the raw output against its own target (velocity eps - z0, or z0)
    batch = {k: v for k, v in make_batch().items() if k != K.CLIP_SUCCESS}
    g = torch.Generator().manual_seed(3)
    t_s = model.sample_t(B, torch.device("cpu"), g)
    noise = torch.randn(B, 48, L, 8, 8, generator=g)
    lat = model.latent_codec.encode(torch.cat([batch[K.COND_FRAME][:, None], batch[K.FUTURE]], 1))
    z0 = (lat[:, :, 1:] - lat[:, :, :1]) * model.config.target_scale  # scaled residual target of the tiny config
    loss, _ = model.training_loss(batch, generator=torch.Generator().manual_seed(3))
    tb = t_s.view(B, 1, 1, 1, 1)
    hist, hmask = model.encode_history(batch[K.HISTORY], batch[K.HISTORY_MASK])
    af, cam = model.encode_action_frames(batch[K.EE_POSES], batch[K.GRIPPER], batch[K.CAMERA_K], batch[K.CAMERA_EXTR],
                                         batch[K.HAS_CAMERA], (S, S))  # fmt: skip
    with torch.no_grad():
        pred = model((1 - tb) * z0 + tb * noise, t_s, lat[:, :, :1], batch[K.ACTIONS], batch[K.ACTION_MASK], hist,
                     hmask, af, cam).prediction  # fmt: skip
    target = z0 if parameterization == "data" else noise - z0
    assert torch.allclose(loss, torch.nn.functional.mse_loss(pred, target), atol=1e-6)


def test_residual_target_with_a_zero_output_generates_the_copy_last_video():
    model = make_model(prediction_target="residual", parameterization="data")
    for p in model.transformer.proj_out.parameters():
        torch.nn.init.zeros_(p)
    batch = make_batch()
    gen = model.generate(batch[K.COND_FRAME], batch[K.ACTIONS], num_steps=3, generator=torch.Generator().manual_seed(0))
    copy_last = batch[K.COND_FRAME][:, None].expand_as(gen.frames)
    assert torch.allclose(gen.frames, copy_last, atol=1e-5)
    frames_model = make_model(prediction_target="frames", parameterization="data")  # zero output = grey frames
    for p in frames_model.transformer.proj_out.parameters():
        torch.nn.init.zeros_(p)
    gen = frames_model.generate(batch[K.COND_FRAME], batch[K.ACTIONS], num_steps=3)
    assert gen.frames.abs().max() < 1e-5
    with pytest.raises(ValueError, match="prediction_target"):
        make_model(prediction_target="delta")
    with pytest.raises(ValueError, match="parameterization"):
        make_model(parameterization="eps")


def test_rollout_length_determinism_and_bounded_history():
    model = make_model()
    batch = make_batch()
    chunks = torch.randn(B, 3, L, 14, generator=torch.Generator().manual_seed(1))
    run = lambda seed: model.rollout(  # noqa: E731
        batch[K.COND_FRAME],
        chunks,
        history=batch[K.HISTORY],
        num_steps=2,
        generator=torch.Generator().manual_seed(seed),
    )
    a, b, c = run(0), run(0), run(1)
    assert a.video.shape == (B, 1 + 3 * L, 3, S, S) and torch.equal(a.video[:, 0], batch[K.COND_FRAME])
    assert torch.equal(a.video, b.video) and not torch.equal(a.video, c.video)
    assert a.success_prob.shape == (B, 3) and ((a.success_prob > 0) & (a.success_prob < 1)).all()
    assert a.video.abs().max() <= 1


# ---------------------------------------------------------------------------------------------------------------------
# Latent codecs
# ---------------------------------------------------------------------------------------------------------------------
def test_pixel_codec_is_exactly_invertible():
    codec = PixelShuffleCodec(factor=4)
    video = torch.rand(2, 3, 3, 16, 24) * 2 - 1
    latents = codec.encode(video)
    assert latents.shape == (2, 48, 3, 4, 6) and torch.equal(codec.decode(latents), video)
    assert torch.equal(codec.encode_frames(video), latents)  # no temporal mixing
    with pytest.raises(ValueError, match="divisible"):
        codec.encode(torch.zeros(1, 1, 3, 10, 16))


def test_wan_codec_compresses_time_causally():
    torch.manual_seed(0)
    codec = WanVAECodec(vae_config={"base_dim": 8, "z_dim": 4, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1})
    assert (codec.temporal_factor, codec.spatial_factor, codec.latent_channels) == (4, 8, 4)
    assert not any(p.requires_grad for p in codec.parameters())
    video = torch.rand(1, 5, 3, 16, 16) * 2 - 1
    latents = codec.encode(video)
    assert latents.shape == (1, 4, 2, 2, 2)
    assert torch.allclose(latents[:, :, :1], codec.encode(video[:, :1]), atol=1e-6)  # causal first latent
    assert codec.decode(latents).shape == (1, 5, 3, 16, 16)
    with pytest.raises(ValueError, match="1 \\+ 4"):
        codec.encode(video[:, :4])


def test_cond_noise_augments_only_in_training_and_only_the_conditioning():
    batch = make_batch()
    plain, noisy = make_model(seed=0), make_model(seed=0, cond_noise=0.5)
    loss = {}
    for name, model in (("plain", plain), ("noisy", noisy)):
        for mode in (False, True):
            model.train(mode)
            loss[name, mode] = model.training_loss(batch, generator=torch.Generator().manual_seed(0))[0]
    assert torch.equal(loss["plain", False], loss["noisy", False])  # evaluation: no augmentation
    assert not torch.allclose(loss["plain", True], loss["noisy", True])
    zeros = torch.zeros(64, 48, 1, 8, 8)
    out = noisy._augment(zeros, torch.Generator().manual_seed(1))
    per_sample = out.flatten(1).std(1)
    assert out.shape == zeros.shape and per_sample.std() > 0.05  # one noise scale per sample
    assert 0.25 < per_sample.mean() < 0.55  # E|n| * 0.5 = 0.40
    with pytest.raises(ValueError, match="cond_noise"):
        make_model(cond_noise=-0.1)


def test_action_tokens_reach_the_output_through_attention_and_respect_the_mask():
    model = make_model(action_tokens=True, history_length=0, use_action_frames=False)
    inputs = {**latent_inputs(model), "history_latents": None, "action_frame_latents": None}
    torch.nn.init.zeros_(model.action_encoder.mlp[-1].weight)  # silence the scalar stream: only tokens carry actions
    torch.nn.init.zeros_(model.action_encoder.mlp[-1].bias)
    ref = model(**inputs).velocity
    changed = model(**{**inputs, "actions": inputs["actions"] + 1.0}).velocity
    assert not torch.allclose(ref, changed, atol=1e-4)
    mask = torch.tensor([[True] * 7 + [False] * 7] * B)
    masked = model(**{**inputs, "action_mask": mask}).velocity
    padded = inputs["actions"].clone()
    padded[..., 7:] = 123.0  # padded dims must not matter
    assert torch.allclose(masked, model(**{**inputs, "actions": padded, "action_mask": mask}).velocity, atol=1e-5)


@pytest.mark.parametrize("mode", ["pooled", "concat", "both"])
def test_action_frame_modes_route_the_frames_where_they_say(mode):
    model = make_model(action_frame_mode=mode, cond_concat=False)
    assert hasattr(model, "action_frame_encoder") == (mode != "concat")
    extra = 48 if mode != "pooled" else 0  # the pixel codec's 48 latent channels, concatenated
    assert model.transformer.config.in_channels == 48 + extra + 1
    inputs = latent_inputs(model)
    ref = model(**inputs).velocity
    # a change at one pixel-aligned latent location reaches the output in every mode ...
    bumped = inputs["action_frame_latents"].clone()
    bumped[:, :, :, 0, 0] += 3.0
    assert not torch.allclose(ref, model(**{**inputs, "action_frame_latents": bumped}).velocity, atol=1e-4)
    # ... and with concatenated channels so does a pure spatial shift of the frames (where the hand goes)
    if mode != "pooled":
        shifted = inputs["action_frame_latents"].roll(1, dims=-1)
        assert not torch.allclose(ref, model(**{**inputs, "action_frame_latents": shifted}).velocity, atol=1e-4)
    # samples without a camera ignore their action frames in every mode
    no_cam = {**inputs, "has_camera": torch.tensor([True, False])}
    a = model(**no_cam).velocity
    b = model(**{**no_cam, "action_frame_latents": torch.randn_like(inputs["action_frame_latents"])}).velocity
    assert torch.equal(a[1], b[1]) and not torch.allclose(a[0], b[0], atol=1e-4)


def test_action_frame_mode_is_validated():
    with pytest.raises(ValueError, match="action_frame_mode"):
        make_model(action_frame_mode="sideways")


def test_target_scale_scales_the_flow_target_and_is_divided_out():
    base, scaled = make_model(target_scale=1.0), make_model(target_scale=4.0)
    future, cond = torch.randn(B, 48, L, 8, 8), torch.randn(B, 48, 1, 8, 8)
    z = scaled._to_target(future, cond)
    assert torch.allclose(z, 4.0 * base._to_target(future, cond), atol=1e-5)
    assert torch.allclose(scaled._from_target(z, cond), future, atol=1e-5)
    with pytest.raises(ValueError, match="target_scale"):
        make_model(target_scale=0.0)


def test_cond_concat_feeds_the_current_frame_to_every_frame_position():
    model = make_model(cond_concat=True)
    assert model.transformer.config.in_channels == 48 + 48 + 48 + 1  # latents, action frames, current frame, mask
    seen = {}
    handle = model.transformer.patch_embed.register_forward_pre_hook(lambda m, a: seen.update(x=a[0].detach()))
    inputs = latent_inputs(model)
    model(**inputs)
    handle.remove()
    cond = inputs["cond_latents"]  # (B, 48, 1, 8, 8): channels 96:144 hold it at the cond and every future frame
    assert torch.equal(seen["x"][:, 96:144], cond.expand(-1, -1, 1 + L, -1, -1))
    base = make_model(cond_concat=False)
    assert base.transformer.config.in_channels == 48 + 48 + 1


def test_prev_concat_feeds_the_previous_frame_and_falls_back_to_the_current_one():
    model = make_model(cond_concat=True, prev_concat=True)
    assert model.transformer.config.in_channels == 48 * 4 + 1  # latents, action frames, current, previous, mask
    seen = {}
    handle = model.transformer.patch_embed.register_forward_pre_hook(lambda m, a: seen.update(x=a[0].detach()))
    inputs = latent_inputs(model)
    inputs["history_mask"] = torch.tensor([[True] * 5, [True] * 4 + [False]])  # sample 1: newest frame missing
    model(**inputs)
    handle.remove()
    prev = seen["x"][:, 144:192]  # (B, 48, 1 + L, 8, 8)
    assert torch.equal(prev[0], inputs["history_latents"][0, :, -1:].expand(-1, 1 + L, -1, -1))
    assert torch.equal(prev[1], inputs["cond_latents"][1].expand(-1, 1 + L, -1, -1))
    with pytest.raises(ValueError, match="prev_concat"):
        make_model(prev_concat=True, history_length=0)


def test_flow_shift_moves_training_times_toward_noise():
    base, shifted = make_model(flow_shift=1.0), make_model(flow_shift=3.0)
    t = base.sample_t(4096, torch.device("cpu"), torch.Generator().manual_seed(0))
    t3 = shifted.sample_t(4096, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert torch.allclose(t3, 3 * t / (1 + 2 * t), atol=1e-6)  # same draws, shifted
    assert abs(float(t3.median()) - 0.75) < 0.02  # logit-normal(0, 1) median 0.5 -> 3 * 0.5 / (1 + 2 * 0.5)
    with pytest.raises(ValueError, match="flow_shift"):
        make_model(flow_shift=0.0)


def test_unshifted_fraction_keeps_that_share_of_training_times_unshifted():
    base = make_model(flow_shift=1.0)
    mixed = make_model(flow_shift=24.0, unshifted_fraction=0.25)
    t = base.sample_t(8192, torch.device("cpu"), torch.Generator().manual_seed(0))
    tm = mixed.sample_t(8192, torch.device("cpu"), torch.Generator().manual_seed(0))  # same first draws
    unshifted = torch.isclose(tm, t, atol=1e-6)
    assert torch.allclose(tm[~unshifted], (24 * t / (1 + 23 * t))[~unshifted], atol=1e-6)
    assert abs(float(unshifted.float().mean()) - 0.25) < 0.02
    with pytest.raises(ValueError, match="unshifted_fraction"):
        make_model(unshifted_fraction=1.5)
