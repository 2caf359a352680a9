import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from lightning_prophrl.datamodules.shards import list_shards
from tests.conftest import write_coded_dataset


def _probe(tmp_path, data: str, *args: str) -> list[dict]:
    """Run ``ddp_probe.py`` (a 2-process gloo fit) and return what each rank recorded."""
    out = str(tmp_path / "keys")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None)
    subprocess.run([sys.executable, str(Path(__file__).with_name("ddp_probe.py")), data, out, *args], check=True,
                   env=env, timeout=300, cwd=tmp_path)  # fmt: skip
    return [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_two_ddp_ranks_see_disjoint_episodes(tmp_path):
    data = write_coded_dataset(tmp_path / "d", "d", episodes=8, per_shard=1)
    ranks = _probe(tmp_path, data)
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2 * 6  # 24 clips / 2 ranks / batch 2, 2 epochs
    k0, k1 = set(ranks[0]["keys"]), set(ranks[1]["keys"])
    assert k0 and k1 and k0.isdisjoint(k1)
    # one episode per shard: rank r reads shards r, r + 2, ... only
    assert k0 <= {f"d_{i:05d}" for i in range(0, 8, 2)} and k1 <= {f"d_{i:05d}" for i in range(1, 8, 2)}


@pytest.mark.slow
@pytest.mark.parametrize("episodes, per_shard, split", [(15, 2, "shards"), (7, 3, "samples")])
def test_two_ranks_by_two_workers_read_disjoint_episodes_over_uneven_shards(tmp_path, episodes, per_shard, split):
    """8 shards (2 episodes each, the last 1) split by shard, or 3 shards (3, 3, 1) split by sample over 4 slots."""
    data = write_coded_dataset(tmp_path / "d", "d", episodes=episodes, length=12, per_shard=per_shard)
    owner = {}  # episode -> rank that must read it: slot // 2 of 2 workers, slot as slots.py assigns it
    for j, shard in enumerate(list_shards(data)):
        with tarfile.open(shard) as tar:
            keys = list(dict.fromkeys(m.name.split(".", 1)[0] for m in tar.getmembers()))
        for i, key in enumerate(keys):
            owner[key] = (j if split == "shards" else i + j) % 4 // 2
    ranks = _probe(tmp_path, data, "2", split)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2 * 6  # 24 clips / 2 ranks / batch 2, 2 epochs, no hang
    for r, rank in enumerate(ranks):
        assert rank["keys"] and {owner[k] for k in rank["keys"]} == {r}
    assert set(ranks[0]["keys"]).isdisjoint(ranks[1]["keys"])


@pytest.mark.slow
def test_two_ranks_by_two_workers_over_three_shards_fail_naming_the_flag(tmp_path):
    data = write_coded_dataset(tmp_path / "d", "d", episodes=6, length=12, per_shard=2)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None)
    run = subprocess.run([sys.executable, str(Path(__file__).with_name("ddp_probe.py")), data, str(tmp_path / "k"), "2",
                          "shards"], env=env, timeout=300, cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert run.returncode != 0
    assert "3 shard(s) but 2 rank(s) x 2 DataLoader worker(s) (num_workers=2) = 4 slots" in run.stderr
    assert "set num_workers <= 1" in run.stderr and "shard_split='samples'" in run.stderr
