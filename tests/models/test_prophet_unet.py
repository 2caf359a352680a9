"""The U-Net backbone of Prophet: builds, trains a step, round-trips save/load exactly, follows its actions."""

import pytest
import torch

import lightning_prophrl.constants as K
from lightning_prophrl.envs.task_split import HELDOUT_TASKS, PRETRAIN_TASKS, check_heldout
from lightning_prophrl.models.prophet import Prophet
from lightning_prophrl.models.unet_backbone import karras_sigmas

TINY = dict(backbone="unet", codec="pixel", codec_kwargs={"factor": 1}, action_chunk_length=1, history_length=2,
            use_action_frames=False, success_hidden_dim=8,
            unet_kwargs={"block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                         "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "attention_head_dim": 8,
                         "norm_num_groups": 4})  # fmt: skip


def _batch(b=2, size=16):
    g = torch.Generator().manual_seed(0)
    return {K.COND_FRAME: torch.rand(b, 3, size, size, generator=g) * 2 - 1,
            K.FUTURE: torch.rand(b, 1, 3, size, size, generator=g) * 2 - 1,
            K.ACTIONS: torch.randn(b, 1, 14, generator=g),
            K.HISTORY: torch.rand(b, 2, 3, size, size, generator=g) * 2 - 1,
            K.HISTORY_MASK: torch.tensor([[True, True], [False, True]]), K.CLIP_SUCCESS: torch.tensor([0.0, 1.0])}  # fmt: skip


@pytest.mark.parametrize("target", [dict(prediction_target="frames"),
                                    dict(prediction_target="residual", target_scale=3.0)])  # fmt: skip
def test_unet_trains_and_roundtrips(tmp_path, target):
    torch.manual_seed(0)
    model = Prophet(**TINY, **target)
    batch = _batch()
    loss, logs = model.training_loss(batch, generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert torch.isfinite(loss) and "success_loss" in logs
    assert all(p.grad is not None for n, p in model.unet.named_parameters() if "conv_in" in n)
    model.eval().save_pretrained(tmp_path)
    loaded = Prophet.from_pretrained(tmp_path)
    for m in (model, loaded):
        m.eval()
    g = [model.generate(batch[K.COND_FRAME], batch[K.ACTIONS], history=batch[K.HISTORY], num_steps=2,
                        generator=torch.Generator().manual_seed(3)) for model in (model, loaded)]  # fmt: skip
    assert torch.equal(g[0].frames, g[1].frames) and torch.equal(g[0].success_logit, g[1].success_logit)
    assert g[0].frames.shape == (2, 1, 3, 16, 16)


def test_unet_rollout_depends_on_actions():
    torch.manual_seed(0)
    model = Prophet(**TINY).eval()
    with torch.no_grad():
        for p in model.action_encoder.parameters():
            p.add_(torch.randn_like(p))
    first = _batch()[K.COND_FRAME]
    a = torch.randn(2, 3, 1, 14)
    r1 = model.rollout(first, a, num_steps=1, generator=torch.Generator().manual_seed(0))
    r2 = model.rollout(first, -a, num_steps=1, generator=torch.Generator().manual_seed(0))
    assert r1.video.shape == (2, 4, 3, 16, 16) and torch.isfinite(r1.video).all()
    assert not torch.allclose(r1.video[:, 1:], r2.video[:, 1:])


def test_unet_lora_changes_only_adapters():
    model = Prophet(**TINY)
    model.add_lora(rank=2)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_karras_one_step_and_task_split():
    assert karras_sigmas(1, 0.002, 5.0, 7.0) == [5.0, 0.0]
    s = karras_sigmas(3, 0.002, 5.0, 7.0)
    assert abs(s[0] - 5.0) < 1e-9 and abs(s[2] - 0.002) < 1e-9 and s[-1] == 0.0
    assert len(PRETRAIN_TASKS) >= 20 and len(HELDOUT_TASKS) >= 10 and "window-open-v3" in HELDOUT_TASKS
    assert not set(PRETRAIN_TASKS) & set(HELDOUT_TASKS)
    import pytest

    with pytest.raises(ValueError, match="pretraining tasks"):
        check_heldout("reach-v3")


def test_frame_size_check_names_the_multiple_of_each_backbone():
    import pytest

    from tests.models.test_prophet import make_model

    unet = Prophet(**TINY)  # two levels: one 2x downsampling in pixel space
    unet.check_frame_size(16, 18)
    with pytest.raises(ValueError, match="17x16 px do not fit the Prophet \\(multiples of 2 px\\)"):
        unet.check_frame_size(17, 16)
    dit = make_model()  # x4 pixel codec, patches of 2 latent pixels
    dit.check_frame_size(32, 32)
    with pytest.raises(ValueError, match="multiples of 8 px, at most"):
        dit.check_frame_size(36, 32)
