"""``stats.json``: a vector of the wrong length, a missing statistic or a NaN is an error naming the file and the
expected length, never a numpy broadcast error at normalization time."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lightning_prophrl.actions import ActionStats
from lightning_prophrl.constants import STATS_FILE
from lightning_prophrl.datamodules.shards import load_stats
from tests.conftest import write_coded_dataset


def _damage(path, **changes) -> None:
    d = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            d.pop(key)
        else:
            d[key] = value
    path.write_text(json.dumps(d))


@pytest.fixture
def dataset(tmp_path):
    write_coded_dataset(tmp_path / "ds", "ds", episodes=2, length=6)
    return tmp_path / "ds"


def test_short_vector_names_file_and_expected_length(dataset):
    _damage(dataset / STATS_FILE, q99=[1.0] * 7)
    with pytest.raises(ValueError, match=r"ds/stats\.json: invalid action statistics: action statistics 'q99' has 7 values, expected 14"):  # fmt: skip
        load_stats(dataset)


def test_long_mask_names_file_and_expected_length(dataset):
    _damage(dataset / STATS_FILE, mask=[True] * 16)
    with pytest.raises(ValueError, match=r"stats\.json: .*'mask' has 16 values, expected 14"):
        ActionStats.load(dataset / STATS_FILE)


def test_scalar_statistic_is_named(dataset):
    _damage(dataset / STATS_FILE, std=0.5)
    with pytest.raises(ValueError, match=r"stats\.json: .*'std' has a float, expected 14"):
        load_stats(dataset)


def test_nan_and_missing_statistics_are_named(dataset):
    stats = json.loads((dataset / STATS_FILE).read_text())
    stats["mean"][3] = float("nan")
    (dataset / STATS_FILE).write_text(json.dumps(stats))  # written as the JSON extension NaN
    with pytest.raises(ValueError, match=r"stats\.json: .*'mean' holds NaN/inf at index 3"):
        load_stats(dataset)
    _damage(dataset / STATS_FILE, q01=None)
    with pytest.raises(ValueError, match=r"stats\.json: invalid action statistics: .*missing keys \['q01'\]"):
        load_stats(dataset)


def test_valid_stats_still_normalize(dataset):
    stats = load_stats(dataset)
    out = stats.normalize(np.zeros((3, 14)))
    assert out.shape == (3, 14) and np.isfinite(out).all()


def test_from_dict_checks_lengths_without_a_file():
    good = ActionStats.compute([np.random.default_rng(0).normal(size=(10, 14))]).to_dict()
    with pytest.raises(ValueError, match=r"'min' has 13 values, expected 14"):
        ActionStats.from_dict({**good, "min": good["min"][:13]})
