"""The pretraining corpus: held-out tasks refused, one directory stands for its datasets, pooled statistics."""

import json

import numpy as np
import pytest

from lightning_prophrl import constants as K
from lightning_prophrl.datamodules.metaworld_corpus import generate_corpus
from lightning_prophrl.datamodules.robot import RobotClipDataModule, dataset_specs
from lightning_prophrl.datamodules.shards import iter_episodes, load_stats
from lightning_prophrl.envs.metaworld_expert import ScriptedExpert


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    info = generate_corpus(out, tasks=["reach-v3", "push-v3"], cameras={"workspace": 2, "overview": 1}, size=16,
                           max_steps=24, seed=3, workers=1)  # fmt: skip
    return out, info


def test_corpus_refuses_heldout_tasks(tmp_path):
    with pytest.raises(ValueError, match="window-open-v3"):
        generate_corpus(tmp_path, tasks=["reach-v3", "window-open-v3"], workers=1)


def test_corpus_directory_stands_for_its_datasets_with_pooled_stats(corpus):
    out, info = corpus
    assert sorted(info["datasets"]) == ["overview/push-v3", "overview/reach-v3", "workspace/push-v3",
                                        "workspace/reach-v3"]  # fmt: skip
    assert json.loads((out / "corpus.json").read_text())["datasets"] == info["datasets"]
    specs = dataset_specs([str(out), {"path": str(out / "workspace/push-v3"), "stride": 2}], stride=4)
    assert [s.path for s in specs[:4]] == [str(out / d) for d in info["datasets"]]
    assert [s.stride for s in specs] == [4, 4, 4, 4, 2]  # the default fills in, an explicit stride wins
    # pooled statistics: every action of every dataset, each episode runs to the step cap
    frames = sum(len(e) for d in specs[:4] for e in iter_episodes(d.path, decode_frames=False))
    assert load_stats(out).count == frames == info["frames"] == 6 * 25
    dm = RobotClipDataModule(datasets=[str(out)], stats_from=str(out), stride=4, history_len=2, chunk_len=1,
                             image_size=16, batch_size=3, samples_per_epoch=3, shuffle_buffer=4)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch[K.FUTURE].shape == (3, 1, 3, 16, 16) and batch[K.HISTORY].shape == (3, 2, 3, 16, 16)


def test_corpus_with_a_missing_dataset_names_it_and_the_fix(corpus, tmp_path):
    out, info = corpus
    (tmp_path / "corpus.json").write_text(json.dumps({"datasets": ["workspace/reach-v3"]}))
    with pytest.raises(FileNotFoundError, match=r"corpus.json.*prophrl-data corpus"):
        dataset_specs([str(tmp_path)])


def test_drivers_act_instead_of_the_task_expert():
    with pytest.raises(ValueError, match="driver"):
        ScriptedExpert("reach-v3", driver="no-such-task")
    runs = {}
    for driver in (None, "random", "push-v3"):
        expert = ScriptedExpert("reach-v3", image_size=16, max_steps=40, stop_at_success=False, render=False,
                                driver=driver)  # fmt: skip
        try:
            runs[driver] = expert.run(7).actions
        finally:
            expert.close()
    assert not np.allclose(runs[None], runs["random"]) and not np.allclose(runs[None], runs["push-v3"])
    # random driving is smooth: runs of 8-24 identical actions at unit-bounded speed, the gripper fully open/closed
    changes = np.flatnonzero(np.any(np.diff(runs["random"], axis=0) != 0, axis=1))
    assert len(changes) >= 1 and np.all(np.diff(changes) >= 8) and changes[0] + 1 >= 8
    assert np.all(np.abs(runs["random"][:, 3]) == 1.0)
