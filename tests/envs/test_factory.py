"""``envs.factory.world_model_env``: a WorldModelEnv from directories (the YAML path of RL inside a world model)."""

import numpy as np
import pytest
import torch
import yaml

from lightning_prophrl import constants as K
from lightning_prophrl.actions import ActionStats, metaworld_to_unified
from lightning_prophrl.envs.base import Prompt
from lightning_prophrl.envs.factory import world_model_env
from lightning_prophrl.envs.world_model import classifier_scorer
from lightning_prophrl.models.prophet import Prophet
from tests.envs.test_world_model import CONFIGS, TINY_UNET


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("prophet")
    kwargs = yaml.safe_load((CONFIGS / "model_unet.yaml").read_text())["init_args"]
    torch.manual_seed(0)
    Prophet(
        **{**kwargs, "unet_kwargs": TINY_UNET, "action_frame_channels": 8, "action_hidden_dim": 32}
    ).save_pretrained(root)
    unified, mask = metaworld_to_unified(np.random.default_rng(0).uniform(-1, 1, (300, 4)))
    ActionStats.compute([unified], mask=mask).save(root / K.STATS_FILE)
    return root


def prompts(p=2):
    g = torch.Generator().manual_seed(1)
    return [Prompt("pick-place-v3", -1, "pick", torch.rand(3, 32, 32, generator=g) * 2 - 1, torch.ones(4))] * p


def test_env_from_a_saved_prophet_and_its_stats(model_dir):
    env = world_model_env(str(model_dir), num_prompts=2, group_size=3, max_segments=2, num_steps=1, image_size=32)
    assert (env.num_envs, env.chunk, env.max_segments) == (6, 1, 2)
    assert env.poses is None and env.initial_env is None  # no task: prompts bring their own frames
    assert (env.success_threshold, env.success_k) == (0.5, 2)  # Prophet's success head
    assert env.stats == ActionStats.load(model_dir / K.STATS_FILE)
    assert not any(p.requires_grad for p in env.prophet.parameters())
    obs = env.reset(prompts())
    obs, done, info = env.step(torch.zeros(6, 4, K.ACTION_DIM))
    assert obs[K.OBS_IMAGE].shape == (6, 3, 32, 32) and info["success_prob"].shape == (6,)


def test_a_trained_success_classifier_becomes_the_scorer(model_dir, tmp_path):
    from lightning_prophrl.studies.reward import load_classifier, train_classifier
    from tests.conftest import write_coded_dataset

    data = write_coded_dataset(tmp_path / "coded", "coded", episodes=4, size=32)
    train_classifier([data], tmp_path / "classifier", steps=1, batch_size=4, image_size=32)
    env = world_model_env(str(model_dir), num_prompts=2, group_size=1, max_segments=1, num_steps=1, image_size=32,
                          reward_dir=str(tmp_path / "classifier"))  # fmt: skip
    assert (env.success_threshold, env.success_k) == (0.9, 3)
    env.reset(prompts())
    _, _, info = env.step(torch.zeros(2, 4, K.ACTION_DIM))
    expected = classifier_scorer(load_classifier(tmp_path / "classifier"))(env.video())
    assert torch.allclose(info["success_prob"], expected.float())
    own = world_model_env(str(model_dir), image_size=32, reward_dir=str(tmp_path / "classifier"), success_k=1)
    assert own.success_k == 1 and own.success_threshold == 0.9


def test_bad_directories_and_settings_are_named(model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved Prophet"):
        world_model_env(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="stats.json"):
        world_model_env(str(model_dir), image_size=32, stats_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="reward_dir"):
        world_model_env(str(model_dir), image_size=32, reward_dir=str(tmp_path / "none"))
    with pytest.raises(ValueError, match="do not fit the Prophet"):
        world_model_env(str(model_dir), image_size=31)
    with pytest.raises(ValueError, match="poses=True needs"):
        world_model_env(str(model_dir), image_size=32, poses=True)
