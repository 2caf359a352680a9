"""Converters: each test damages one array of a small source dataset and checks that the conversion stops with an
error naming the episode, the source file and key, and that the output directory is left as it was found."""

from __future__ import annotations

import numpy as np
import pytest

from lightning_prophrl.datamodules.converters import convert_hdf5, convert_lerobot
from lightning_prophrl.datamodules.shards import iter_episodes
from tests.faults.sources import nan_rows, replace, snapshot, write_lerobot, write_robomimic


def hdf5(tmp_path, out="out", **kwargs):
    return convert_hdf5(tmp_path / "d.hdf5", tmp_path / out, frame_format="npy", progress=False, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# robomimic / hdf5
# ---------------------------------------------------------------------------------------------------------------------
def test_hdf5_nan_action_names_demo_and_key_and_leaves_no_output(tmp_path):
    write_robomimic(tmp_path / "d.hdf5", {0: 4, 1: 5}, edit=nan_rows("demo_1", "actions", 3, 2))
    with pytest.raises(ValueError, match=r"d\.hdf5 demo 'demo_1': 'data/demo_1/actions' contains NaN/inf \(first at step 3, value 2\)"):  # fmt: skip
        hdf5(tmp_path, action_convention="ee_delta_euler")
    assert not (tmp_path / "out").exists()  # demo_0 had been written: the half-made directory is removed


def test_hdf5_nan_end_effector_position_is_named(tmp_path):
    write_robomimic(tmp_path / "d.hdf5", {0: 4}, edit=nan_rows("demo_0", "robot0_eef_pos", 1, 1))
    with pytest.raises(ValueError, match=r"demo 'demo_0': 'data/demo_0/obs/robot0_eef_pos' contains NaN/inf"):
        hdf5(tmp_path, action_convention="ee_delta_euler")
    assert not (tmp_path / "out").exists()


def test_hdf5_zero_quaternion_is_named(tmp_path):
    def edit(name, group):
        quat = np.tile([0.0, 0.0, 0.0, 1.0], (4, 1))
        quat[2] = 0.0
        replace(group["obs"], "robot0_eef_quat", quat)

    write_robomimic(tmp_path / "d.hdf5", {0: 4}, edit=edit)
    with pytest.raises(ValueError, match=r"'data/demo_0/obs/robot0_eef_quat' holds a zero quaternion \(first at step 2\)"):  # fmt: skip
        hdf5(tmp_path, action_convention="ee_abs_quat", action_key="ee_poses")


def test_hdf5_position_width_is_checked(tmp_path):
    write_robomimic(tmp_path / "d.hdf5", {0: 4}, edit=lambda n, g: replace(g["obs"], "robot0_eef_pos", np.zeros((4, 2))))  # fmt: skip
    with pytest.raises(ValueError, match=r"'data/demo_0/obs/robot0_eef_pos' has 2 values per step but expected 3"):
        hdf5(tmp_path, action_convention="ee_delta_euler")


def test_hdf5_float_images_are_refused_not_cast(tmp_path):
    write_robomimic(tmp_path / "d.hdf5", {0: 4}, edit=lambda n, g: replace(g["obs"], "agentview_image", np.full((4, 8, 12, 3), 0.5)))  # fmt: skip
    with pytest.raises(ValueError, match=r"'data/demo_0/obs/agentview_image' must be \(T, H, W, 3\) uint8 RGB images, got \(4, 8, 12, 3\) float64"):  # fmt: skip
        hdf5(tmp_path, action_convention="ee_delta_euler")


def test_hdf5_state_key_of_other_length_is_named(tmp_path):
    write_robomimic(tmp_path / "d.hdf5", {0: 4}, edit=lambda n, g: g["obs"].create_dataset("joint_pos", data=np.zeros((3, 7))))  # fmt: skip
    with pytest.raises(ValueError, match=r"demo 'demo_0': 'data/demo_0/obs/joint_pos' has 3 steps but the episode has 4"):  # fmt: skip
        hdf5(tmp_path, action_convention="ee_delta_euler", state_keys=["joint_pos"])


def test_hdf5_action_wider_than_declared_robots_is_not_a_second_arm(tmp_path):
    """16 values of ee_abs_quat would read as two arms, but the file declares one robot."""
    write_robomimic(tmp_path / "d.hdf5", {0: 4}, action_width=16)
    with pytest.raises(ValueError, match=r"'data/demo_0/actions' has 16 values per step but .*d\.hdf5 \(env_kwargs\.robots\) declares 1 robot arm\(s\): expected 8"):  # fmt: skip
        hdf5(tmp_path, action_convention="ee_abs_quat")
    assert not (tmp_path / "out").exists()
    write_robomimic(tmp_path / "d.hdf5", {0: 4}, robots=("Panda", "Panda"), action_width=16)  # two robots: accepted
    assert hdf5(tmp_path, "out2", action_convention="ee_abs_quat")["episodes"] == 1


def test_hdf5_failed_append_keeps_existing_dataset_byte_for_byte(tmp_path):
    """A conversion appended to a dataset writes one shard, then hits a bad demo: the new shard is removed and
    index.json / stats.json get their previous content back."""
    (tmp_path / "good").mkdir()
    write_robomimic(tmp_path / "good/a.hdf5", {0: 4, 1: 3})
    convert_hdf5(tmp_path / "good/a.hdf5", tmp_path / "out", action_convention="ee_delta_euler", frame_format="npy",
                 progress=False)  # fmt: skip
    before = snapshot(tmp_path / "out")
    write_robomimic(tmp_path / "d.hdf5", {5: 4, 6: 4, 7: 5}, edit=nan_rows("demo_7", "actions"))
    with pytest.raises(ValueError, match="demo 'demo_7'"):
        hdf5(tmp_path, action_convention="ee_delta_euler", append=True, episodes_per_shard=1)
    assert snapshot(tmp_path / "out") == before
    assert [e.meta["source"]["demo"] for e in iter_episodes(tmp_path / "out")] == ["demo_0", "demo_1"]


def test_hdf5_skip_mode_still_names_the_skipped_demo(tmp_path):
    write_robomimic(tmp_path / "d.hdf5", {0: 4, 1: 5}, edit=nan_rows("demo_0", "actions", 1))
    summary = hdf5(tmp_path, action_convention="ee_delta_euler", on_error="skip")
    assert (summary["episodes"], summary["skipped"]) == (1, 1)
    assert "'data/demo_0/actions' contains NaN/inf" in summary["skipped_episodes"][0]["reason"]
    assert [e.meta["source"]["demo"] for e in iter_episodes(tmp_path / "out")] == ["demo_1"]


def test_joint_convention_is_refused_before_output_exists(tmp_path):
    write_robomimic(tmp_path / "d.hdf5", {0: 4})
    with pytest.raises(ValueError, match="forward-kinematics"):
        hdf5(tmp_path, action_convention="joint")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------------
# LeRobot
# ---------------------------------------------------------------------------------------------------------------------
def lerobot(tmp_path, out="out", **kwargs):
    return convert_lerobot(tmp_path / "src", tmp_path / out, action_convention="ee_abs_quat", frame_format="npy",
                           progress=False, **kwargs)  # fmt: skip


def test_lerobot_action_wider_than_declared_names_both_widths(tmp_path):
    """16 values per row of an 8-wide declared ee_abs_quat action: an error, not a two-arm robot."""
    write_lerobot(tmp_path / "src", declared_action=8, action_width=16)
    with pytest.raises(ValueError, match=r"src episode 0: column 'action' of .*episode_000000\.parquet has 16 values per step but .*meta/info\.json declares 8"):  # fmt: skip
        lerobot(tmp_path)
    assert not (tmp_path / "out").exists()


def test_lerobot_declared_two_arms_are_converted(tmp_path):
    write_lerobot(tmp_path / "src", declared_action=16, action_width=16)
    assert lerobot(tmp_path)["episodes"] == 2
    assert next(iter_episodes(tmp_path / "out")).action_mask.all()


def test_lerobot_nan_state_names_episode_column_and_step(tmp_path):
    write_lerobot(tmp_path / "src", state_nan=(1, 2))
    with pytest.raises(ValueError, match=r"src episode 1: column 'observation\.state' of .*episode_000001\.parquet contains NaN/inf \(first at step 2, value 0\)"):  # fmt: skip
        lerobot(tmp_path)
    assert not (tmp_path / "out").exists()


def test_lerobot_state_width_must_match_declaration(tmp_path):
    write_lerobot(tmp_path / "src", declared_state=3, state_width=5)
    with pytest.raises(ValueError, match=r"column 'observation\.state' .* has 5 values per step but .*info\.json declares 3"):  # fmt: skip
        lerobot(tmp_path)


def test_lerobot_refuses_output_with_shards_and_keeps_them(tmp_path):
    write_lerobot(tmp_path / "src")
    lerobot(tmp_path)
    before = snapshot(tmp_path / "out")
    with pytest.raises(FileExistsError, match="already holds shards; pass append=True"):
        lerobot(tmp_path)
    assert snapshot(tmp_path / "out") == before
