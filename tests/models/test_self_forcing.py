"""Self-forcing: two-segment clips, the second continuing from the model's own frames."""

import pytest
import torch

import lightning_prophrl.constants as K
from lightning_prophrl.models.prophet import Prophet
from lightning_prophrl.models.prophet.self_forcing import self_forced, split_segments
from lightning_prophrl.modules import ProphetAdaptModule, ProphetPretrainModule
from tests.models.test_prophet_unet import TINY


def _clip(b=3, size=16, history=2):
    g = torch.Generator().manual_seed(0)
    return {K.COND_FRAME: torch.rand(b, 3, size, size, generator=g) * 2 - 1,
            K.FUTURE: torch.rand(b, 2, 3, size, size, generator=g) * 2 - 1,
            K.ACTIONS: torch.randn(b, 2, 14, generator=g),
            K.HISTORY: torch.rand(b, history, 3, size, size, generator=g) * 2 - 1,
            K.HISTORY_MASK: torch.tensor([[False, True], [True, True], [False, False]]),
            K.CLIP_SUCCESS: torch.tensor([0.0, 1.0, 1.0])}  # fmt: skip


def test_split_continues_the_clip_from_its_first_future_frame():
    clip = _clip()
    first, second = split_segments(clip, chunk=1, history_length=2)
    assert torch.equal(first[K.FUTURE], clip[K.FUTURE][:, :1]) and torch.equal(first[K.ACTIONS], clip[K.ACTIONS][:, :1])
    assert K.CLIP_SUCCESS not in first and torch.equal(second[K.CLIP_SUCCESS], clip[K.CLIP_SUCCESS])
    assert torch.equal(second[K.COND_FRAME], clip[K.FUTURE][:, 0])
    assert torch.equal(second[K.FUTURE], clip[K.FUTURE][:, 1:]) and torch.equal(
        second[K.ACTIONS], clip[K.ACTIONS][:, 1:]
    )
    # history: the newest old entry, then the first segment's conditioning frame
    assert torch.equal(second[K.HISTORY][:, 0], clip[K.HISTORY][:, 1])
    assert torch.equal(second[K.HISTORY][:, 1], clip[K.COND_FRAME])
    assert second[K.HISTORY_MASK].tolist() == [[True, True], [True, True], [False, True]]
    with pytest.raises(ValueError, match="two segments"):
        split_segments({**clip, K.FUTURE: clip[K.FUTURE][:, :1]}, chunk=1, history_length=2)
    with pytest.raises(ValueError, match="pre-encoded latents"):
        split_segments({**clip, K.LATENT_COND: torch.zeros(3, 3, 16, 16)}, chunk=1, history_length=2)


def test_self_forced_clips_start_from_the_models_generation():
    torch.manual_seed(0)
    model = Prophet(**TINY).train()
    first, second = split_segments(_clip(), chunk=1, history_length=2)
    forced, chosen = self_forced(model, first, second, share=1.0, generator=torch.Generator().manual_seed(4))
    assert chosen.all() and model.training  # the generation ran in eval mode and the mode is restored
    g = torch.Generator().manual_seed(4)
    torch.rand(3, generator=g)  # the draw of the chosen clips
    gen = model.eval().generate(first[K.COND_FRAME], first[K.ACTIONS], history=first[K.HISTORY],
                                history_mask=first[K.HISTORY_MASK], num_steps=1, generator=g, score_success=False)  # fmt: skip
    assert torch.equal(forced[K.COND_FRAME], gen.frames[:, -1])
    assert torch.equal(forced[K.FUTURE], second[K.FUTURE])  # the targets stay real
    kept, none = self_forced(model, first, second, share=0.0)
    assert not none.any() and kept is second


def test_modules_train_on_two_segment_clips_and_reject_a_bad_share(tmp_path):
    torch.manual_seed(0)
    model = Prophet(**TINY)
    model.save_pretrained(tmp_path)
    module = ProphetAdaptModule(pretrained_path=str(tmp_path), mode="full", self_forcing=0.5)
    module.log = lambda *a, **k: None
    loss = module.training_step(_clip(), 0)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in module.model.unet.conv_in.parameters())
    # validation: both segments from real frames, same noise -> the mean of the two segments' losses
    val = module.validation_step(_clip(), 7)
    first, second = split_segments(_clip(), 1, 2)
    losses = [module.model.training_loss(c, generator=torch.Generator().manual_seed(7))[0] for c in (first, second)]
    g = torch.Generator().manual_seed(7)
    ref = (module.model.training_loss(first, generator=g)[0] + module.model.training_loss(second, generator=g)[0]) / 2
    assert torch.allclose(val, ref) and not torch.allclose(val, losses[0])
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="self_forcing"):
            ProphetPretrainModule(Prophet(**TINY), self_forcing=bad)
