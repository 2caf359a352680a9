"""``WorldModelEnv`` follows Prophet's device and dtype (``to``) and keeps the ``BatchedEnv`` contract's float32 CPU
outputs; ``reseed`` restarts its noise on a stream of its seed."""

import numpy as np
import pytest
import torch
import yaml

from lightning_prophrl import constants as K
from lightning_prophrl.actions import metaworld_to_unified
from lightning_prophrl.envs.base import Prompt
from lightning_prophrl.envs.poses import CommandedPoses
from lightning_prophrl.envs.world_model import ClassifierScorer, WorldModelEnv
from lightning_prophrl.models.prophet import Prophet
from lightning_prophrl.models.reward import VideoSuccessClassifier
from tests.envs.test_world_model import CONFIGS, stats


def tiny_prophet(memory: bool) -> Prophet:
    kwargs = yaml.safe_load((CONFIGS / "model_tiny.yaml").read_text())["init_args"]
    torch.manual_seed(0)
    return Prophet(**{**kwargs, "action_chunk_length": 2, "history_length": 4 if memory else 0,
                      "history_scale_frames": [1, 1, 2], "use_action_frames": memory})  # fmt: skip


def pinhole_poses() -> CommandedPoses:
    """Commanded targets drawn by a camera 1 m in front of the workspace (32 px frames)."""
    extr = np.eye(4)
    extr[2, 3] = 1.0
    k = np.array([[40.0, 0.0, 16.0], [0.0, 40.0, 16.0], [0.0, 0.0, 1.0]])
    return CommandedPoses(camera_k=k, camera_extr=extr, target_quat=np.array([1.0, 0, 0, 0]),
                          dpos_frame_quat=np.array([1.0, 0, 0, 0]))  # fmt: skip


def branch_prompts(p: int = 2) -> list[Prompt]:
    g = torch.Generator().manual_seed(1)
    return [Prompt("pick-place-v3", -1, "pick", torch.rand(3, 32, 32, generator=g) * 2 - 1, torch.ones(4),
                   history_frames=torch.rand(3, 3, 32, 32, generator=g) * 2 - 1) for _ in range(p)]  # fmt: skip


def actions(n: int = 4) -> np.ndarray:
    return metaworld_to_unified(np.random.default_rng(0).uniform(-1, 1, (n * 4, 4)))[0].reshape(n, 4, 14)


# float64: the whole imagination (memory, action frames, classifier scorer); bfloat16 without the memory, whose 3D
# average pooling has no bfloat16 kernel on the CPU
@pytest.mark.parametrize("dtype, memory", [(torch.float64, True), (torch.bfloat16, False)])
def test_world_model_imagines_in_prophets_dtype_and_returns_float32_cpu_tensors(dtype, memory):
    torch.manual_seed(0)
    scorer = ClassifierScorer(VideoSuccessClassifier(feature_dim=16, channels=(8, 8), groups=4, temporal_kernel=2))
    env = WorldModelEnv(tiny_prophet(memory), stats(), num_prompts=2, group_size=2, max_segments=2, num_steps=1,
                        stop_at_success=False, poses=pinhole_poses() if memory else None, success_scorer=scorer,
                        seed=3)  # fmt: skip
    assert env.to(dtype=dtype) is env and env.dtype == dtype and env.device.type == "cpu"
    assert [type(m).__name__ for m in env.networks()] == ["Prophet", "VideoSuccessClassifier"]
    assert all(p.dtype == dtype for net in env.networks() for p in net.parameters())
    obs = env.reset(branch_prompts())
    for _ in range(2):
        obs, done, info = env.step(actions())
    for x in (obs[K.OBS_IMAGE], obs[K.OBS_STATE], env.video(), info["success_prob"], info["success_score"]):
        assert x.dtype == torch.float32 and x.device.type == "cpu" and bool(torch.isfinite(x).all())
    assert env.video().shape == (4, 3, 3, 32, 32) and done.all()
    assert not torch.equal(env.video()[:, 1], env.video()[:, 0])  # frames were imagined
    if memory:  # the memory holds Prophet's latents, in its dtype, on its device
        assert env.history.items.dtype == dtype and env.history.mask[:, :3].all()


def test_reseed_restarts_the_noise_on_a_stream_of_the_environments_seed():
    def video(seed: int, *key: int) -> torch.Tensor:
        env = WorldModelEnv(tiny_prophet(False), stats(), num_prompts=1, group_size=2, max_segments=1, num_steps=1,
                            stop_at_success=False, seed=seed)  # fmt: skip
        env.reseed(*key)
        env.reset(branch_prompts(1))
        env.step(actions(2))
        return env.video()[:, -1]

    assert torch.equal(video(0, 5, 1), video(0, 5, 1))
    assert not torch.equal(video(0, 5, 1), video(0, 5, 0))  # another process
    assert not torch.equal(video(0, 5, 1), video(0, 6, 1))  # another update
    assert not torch.equal(video(0, 5, 1), video(1, 5, 1))  # another environment seed
    with pytest.raises(ValueError, match="non-negative"):
        video(0, -1)


def test_a_success_scorer_skips_the_success_heads_pass_and_imagines_the_same_frames():
    prophet = tiny_prophet(memory=True).eval()
    calls = []
    hook = prophet.register_forward_hook(lambda *_: calls.append(1))

    def imagine(scorer):
        calls.clear()
        env = WorldModelEnv(prophet, stats(), num_prompts=2, group_size=1, max_segments=3, num_steps=2, seed=0,
                            poses=pinhole_poses(), stop_at_success=False, success_scorer=scorer)  # fmt: skip
        env.reset(branch_prompts())
        for a in actions(3).reshape(1, 3, 4, 14).repeat(2, 0).transpose(1, 0, 2, 3):
            env.step(a)
        return env.video(), len(calls)

    head_video, head_calls = imagine(None)
    scored_video, scored_calls = imagine(lambda v: torch.zeros(v.shape[0]))
    hook.remove()
    assert head_calls == 3 * (2 + 1) and scored_calls == 3 * 2  # num_steps passes per segment, + the head's
    assert torch.equal(head_video, scored_video)
