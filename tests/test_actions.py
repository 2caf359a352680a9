import numpy as np
import pytest

from lightning_prophrl.actions import (
    ActionStats,
    absolute_poses_to_unified,
    euler_to_matrix,
    matrix_to_euler,
    metaworld_to_unified,
    quat_to_matrix,
    to_unified,
    unified_to_metaworld,
)


def random_quats(n, rng):
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def test_rotation_conversions_agree():
    rng = np.random.default_rng(0)
    e = rng.uniform(-1.2, 1.2, size=(50, 3))
    m = euler_to_matrix(e)
    np.testing.assert_allclose(m @ np.swapaxes(m, -1, -2), np.broadcast_to(np.eye(3), m.shape), atol=1e-12)
    np.testing.assert_allclose(matrix_to_euler(m), e, atol=1e-10)
    # 90 degrees about z maps x to y
    np.testing.assert_allclose(quat_to_matrix(np.array([np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)])) @ [1, 0, 0],
                               [0, 1, 0], atol=1e-12)  # fmt: skip


def test_absolute_poses_to_tool_frame_deltas_recompose_the_trajectory():
    rng = np.random.default_rng(1)
    t = 12
    pos = np.cumsum(rng.normal(scale=0.02, size=(t, 1, 3)), 0)
    rots = euler_to_matrix(np.cumsum(rng.normal(scale=0.1, size=(t, 1, 3)), 0))
    q = np.stack([_matrix_to_quat(r) for r in rots[:, 0]])[:, None]
    grip = rng.uniform(size=(t, 1))
    acts, mask = absolute_poses_to_unified(pos, q, grip)
    assert acts.shape == (t, 14) and mask[:7].all() and not mask[7:].any()
    # xi_t = xi_{t-1} o dxi_t recomposes every pose from the first one
    p, r = pos[0, 0], rots[0, 0]
    for k in range(t - 1):
        p = p + r @ acts[k, :3]
        r = r @ euler_to_matrix(acts[k, 3:6])
        np.testing.assert_allclose(p, pos[k + 1, 0], atol=1e-5)
        np.testing.assert_allclose(r, rots[k + 1, 0], atol=1e-5)
    np.testing.assert_allclose(acts[:, 6], grip[:, 0], atol=1e-7)
    np.testing.assert_array_equal(acts[-1, :6], 0)


def _matrix_to_quat(m):
    w = np.sqrt(max(1e-12, 1 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
    return np.array([w, (m[2, 1] - m[1, 2]) / (4 * w), (m[0, 2] - m[2, 0]) / (4 * w), (m[1, 0] - m[0, 1]) / (4 * w)])


def test_euler_and_quat_sources_agree():
    rng = np.random.default_rng(2)
    t = 6
    pos = rng.normal(size=(t, 2, 3))
    e = rng.uniform(-0.5, 0.5, size=(t, 2, 3))
    q = np.stack([[_matrix_to_quat(euler_to_matrix(e[i, a])) for a in range(2)] for i in range(t)])
    g = rng.uniform(size=(t, 2))
    a_q = to_unified(np.concatenate([pos, q, g[..., None]], -1).reshape(t, 16), "ee_abs_quat")[0]
    a_e = to_unified(np.concatenate([pos, e, g[..., None]], -1).reshape(t, 14), "ee_abs_euler")[0]
    np.testing.assert_allclose(a_q, a_e, atol=1e-5)


def test_metaworld_round_trip_and_units():
    rng = np.random.default_rng(3)
    a = rng.uniform(-1, 1, size=(20, 4)).astype(np.float32)
    u, mask = metaworld_to_unified(a)
    assert mask.tolist() == [True] * 3 + [False] * 3 + [True] + [False] * 7
    np.testing.assert_allclose(unified_to_metaworld(u), a, atol=1e-6)
    # a pure +x world motion of one unit is 1 cm long in the tool frame, gripper -1 (open) -> opening 1
    u1, _ = metaworld_to_unified(np.array([[1.0, 0, 0, -1.0]]))
    assert np.linalg.norm(u1[0, :3]) == pytest.approx(0.01, rel=1e-6)
    assert u1[0, 6] == pytest.approx(1.0)


def test_joint_space_is_rejected_without_a_mapping():
    with pytest.raises(ValueError, match="forward-kinematics"):
        to_unified(np.zeros((5, 7)), "joint")
    acts, mask = to_unified(np.zeros((5, 7)), "joint", joint_mapping=lambda j: (np.ones((5, 14), np.float32),
                                                                              np.ones(14, bool)))  # fmt: skip
    assert acts.sum() == 70


def test_wrong_widths_name_the_convention():
    with pytest.raises(ValueError, match="Meta-World"):
        to_unified(np.zeros((5, 3)), "metaworld")
    with pytest.raises(ValueError, match="ee_abs_quat"):
        to_unified(np.zeros((5, 9)), "ee_abs_quat")


@pytest.mark.parametrize("mode", ["quantile", "meanstd"])
def test_stats_normalize_round_trip(mode, tmp_path):
    rng = np.random.default_rng(4)
    mask = np.zeros(14, bool)
    mask[[0, 1, 2, 6]] = True
    chunks = [rng.normal(loc=3, scale=2, size=(rng.integers(5, 40), 14)) * mask for _ in range(10)]
    stats = ActionStats.compute(iter(chunks), mask=mask)
    allv = np.concatenate(chunks)
    np.testing.assert_allclose(stats.mean, allv.mean(0), atol=1e-9)
    np.testing.assert_allclose(stats.std, allv.std(0), atol=1e-6)
    np.testing.assert_allclose(stats.q99, np.quantile(allv, 0.99, axis=0), atol=1e-5)
    stats.save(tmp_path / "s.json")
    stats = ActionStats.load(tmp_path / "s.json")
    x = allv.astype(np.float32)
    n = stats.normalize(x, mode)
    np.testing.assert_array_equal(n[:, ~mask], 0)
    np.testing.assert_allclose(stats.unnormalize(n, mode), x, atol=1e-5)
    if mode == "quantile":
        q = stats.normalize(np.array(stats.q01)[None], mode)[0]
        np.testing.assert_allclose(q[mask], -1.0, atol=1e-6)
    else:
        np.testing.assert_allclose(n[:, mask].mean(0), 0, atol=1e-5)


def test_stats_load_names_the_file_on_bad_content(tmp_path):
    p = tmp_path / "stats.json"
    p.write_text('{"mean": [0]}')
    with pytest.raises(ValueError, match="stats.json"):
        ActionStats.load(p)


def test_unknown_convention_is_rejected():
    with pytest.raises(ValueError, match="unknown action convention"):
        to_unified(np.zeros((5, 7)), "robosuite_osc")
