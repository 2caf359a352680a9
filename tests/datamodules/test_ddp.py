import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_coded_dataset


@pytest.mark.slow
def test_two_ddp_ranks_see_disjoint_episodes(tmp_path):
    data = write_coded_dataset(tmp_path / "d", "d", episodes=8, per_shard=1)
    out = str(tmp_path / "keys")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None)
    subprocess.run([sys.executable, str(Path(__file__).with_name("ddp_probe.py")), data, out], check=True, env=env,
                   timeout=300, cwd=tmp_path)  # fmt: skip
    ranks = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 for r in ranks)
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2 * 6  # 24 clips / 2 ranks / batch 2, 2 epochs
    k0, k1 = set(ranks[0]["keys"]), set(ranks[1]["keys"])
    assert k0 and k1 and k0.isdisjoint(k1)
    # one episode per shard: rank r reads shards r, r + 2, ... only
    assert k0 <= {f"d_{i:05d}" for i in range(0, 8, 2)} and k1 <= {f"d_{i:05d}" for i in range(1, 8, 2)}
