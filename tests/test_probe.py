import math

import pytest
import torch

from lightning_prophrl.datamodules.metaworld_gen import generate_metaworld
from lightning_prophrl.models.prophet import Prophet
from lightning_prophrl.studies.probe import action_use_probe
from lightning_prophrl.studies.prophet import prophet_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    data = root / "data"
    generate_metaworld(["pick-place-v3"], 3, str(data), noise=0.5, size=32, max_steps=40, seed=3, progress=False)
    torch.manual_seed(0)
    model = Prophet(**prophet_config(image_size=32, chunk_len=1, history_length=2))
    model.save_pretrained(root / "model")
    return root, str(data)


def probe(model_dir, data):
    return action_use_probe(str(model_dir), data, stats_from=data, times=(0.5, 1.0), starts=(2,), num_episodes=3,
                            image_size=32, history_len=2)  # fmt: skip


def test_probe_separates_real_shuffled_and_absent_action_frames(setup):
    root, data = setup
    out = probe(root / "model", data)
    assert out["clips"] == 3 and set(out["loss"]) == {"real", "shuffled", "no_frames"}
    assert all(math.isfinite(v) for by_t in out["loss"].values() for v in by_t.values())
    # an untrained model with live action pathways responds to the actions and to the frames
    assert out["loss"]["real"][1.0] != out["loss"]["shuffled"][1.0]
    assert out["loss"]["real"][1.0] != out["loss"]["no_frames"][1.0]
    assert out["action_effect_t1"] == pytest.approx(out["loss"]["shuffled"][1.0] - out["loss"]["real"][1.0])


def test_probe_reports_no_action_effect_for_a_model_without_action_pathways(setup):
    root, data = setup
    model = Prophet.from_pretrained(root / "model")
    with torch.no_grad():  # cut both action streams: the scalar MLP's last layer and the action-frame input weights
        for p in model.action_encoder.parameters():
            p.zero_()
        for p in model.action_frame_encoder.parameters():
            p.zero_()
        weight = model.transformer.patch_embed.proj.weight.view(model.hidden_size, -1, 4)  # (D, channels, 2 x 2)
        weight[:, 48:96] = 0.0  # the concatenated action-frame channels
    model.save_pretrained(root / "cut")
    out = probe(root / "cut", data)
    assert out["loss"]["real"][1.0] == pytest.approx(out["loss"]["shuffled"][1.0], abs=1e-7)
    assert out["action_effect_t1"] == pytest.approx(0.0, abs=1e-7)
