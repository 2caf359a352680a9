"""``prophrl-data``: each test makes one user mistake and checks the one-line ``error:`` on stderr, the exit status,
that no half-made ``--out`` directory remains and that data already there is untouched."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lightning_prophrl.constants import STATS_FILE
from lightning_prophrl.data_cli import main
from lightning_prophrl.datamodules.converters import CONVENTIONS
from tests.conftest import write_coded_dataset
from tests.faults.sources import nan_rows, snapshot, write_robomimic


def run(capsys, *argv: str) -> tuple[int, str]:
    """Run ``prophrl-data argv`` in this process; returns (exit status, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    return exit_info.value.code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]  # no bars
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_unknown_metaworld_task_is_one_line_and_creates_nothing(tmp_path, capsys):
    code, err = run(capsys, "metaworld", "--tasks", "reach-v3,pick-plac-v3", "--episodes", "1", "--out", str(tmp_path / "o"))  # fmt: skip
    line = one_error_line(err)
    assert code == 2
    assert "--tasks" in line and "'pick-plac-v3'" in line and "did you mean 'pick-place-v3'" in line
    assert not (tmp_path / "o").exists()


def test_bad_camera_removes_the_output_directory_it_created(tmp_path, capsys):
    """The camera is only checked when the simulator renders, after --out (and its parent) were created."""
    out = tmp_path / "new" / "o"
    code, err = run(capsys, "metaworld", "--tasks", "reach-v3", "--episodes", "1", "--max-steps", "3", "--size", "16",
                    "--camera", "nocam", "--out", str(out))  # fmt: skip
    assert code == 1 and "camera 'nocam'" in one_error_line(err)
    assert not (tmp_path / "new").exists()


def test_metaworld_into_a_dataset_is_refused_and_keeps_it(tmp_path, capsys):
    write_coded_dataset(tmp_path / "d", "d", episodes=2, length=5)
    before = snapshot(tmp_path / "d")
    code, err = run(capsys, "metaworld", "--tasks", "reach-v3", "--episodes", "1", "--out", str(tmp_path / "d"))
    line = one_error_line(err)
    assert code == 1 and "already holds shards" in line and "append=True" not in line
    assert snapshot(tmp_path / "d") == before


def test_abbreviated_flag_is_refused(tmp_path, capsys):
    write_coded_dataset(tmp_path / "d", "d", episodes=2, length=5)
    code, err = run(capsys, "stats", str(tmp_path / "d"), "--recomp")
    line = one_error_line(err)
    assert code == 2 and "prophrl-data stats: unrecognized arguments: --recomp" in line
    assert "did you mean --recompute?" in line and "see `prophrl-data stats --help`" in line


def test_bad_values_name_the_flag(tmp_path, capsys):
    code, err = run(capsys, "metaworld", "--tasks", "reach-v3", "--episodes", "0", "--out", str(tmp_path / "o"))
    assert code == 2 and "argument --episodes: must be >= 1, got 0" in one_error_line(err)
    code, err = run(capsys, "convert", "hdf5", "x.hdf5", "--out", str(tmp_path / "o"), "--action-convention", "abs")
    assert code == 2 and "argument --action-convention: invalid choice: 'abs'" in one_error_line(err)
    code, err = run(capsys, "metaworld", "--tasks", "reach-v3", "--episodes", "1", "--driver", "randomm", "--out",
                    str(tmp_path / "o"))  # fmt: skip
    assert code == 2 and "did you mean 'random'" in one_error_line(err)
    assert not (tmp_path / "o").exists()


def test_missing_source_file_is_one_line(tmp_path, capsys):
    code, err = run(capsys, "convert", "hdf5", str(tmp_path / "nope.hdf5"), "--out", str(tmp_path / "o"),
                    "--action-convention", "ee_delta_euler")  # fmt: skip
    assert code == 1 and f"no hdf5 file at {tmp_path / 'nope.hdf5'}" in one_error_line(err)
    assert not (tmp_path / "o").exists()


def test_invalid_source_data_is_one_line_naming_demo_and_key(tmp_path, capsys):
    write_robomimic(tmp_path / "d.hdf5", {0: 4, 1: 4}, edit=nan_rows("demo_1", "actions"))
    code, err = run(capsys, "convert", "hdf5", str(tmp_path / "d.hdf5"), "--out", str(tmp_path / "o"),
                    "--action-convention", "ee_delta_euler", "--frame-format", "npy")  # fmt: skip
    line = one_error_line(err)
    assert code == 1 and "demo 'demo_1'" in line and "'data/demo_1/actions' contains NaN/inf" in line
    assert not (tmp_path / "o").exists()


def test_convert_offers_append_and_a_failed_append_keeps_the_dataset(tmp_path, capsys):
    write_robomimic(tmp_path / "a.hdf5", {0: 4})
    args = ["--action-convention", "ee_delta_euler", "--frame-format", "npy"]
    main(["convert", "hdf5", str(tmp_path / "a.hdf5"), "--out", str(tmp_path / "o"), *args])
    capsys.readouterr()
    before = snapshot(tmp_path / "o")
    code, err = run(capsys, "convert", "hdf5", str(tmp_path / "a.hdf5"), "--out", str(tmp_path / "o"), *args)
    line = one_error_line(err)
    assert code == 1 and "already holds shards" in line and "--append" in line and "append=True" not in line
    write_robomimic(tmp_path / "b.hdf5", {0: 4}, edit=nan_rows("demo_0", "robot0_eef_pos"))
    code, err = run(capsys, "convert", "hdf5", str(tmp_path / "b.hdf5"), "--out", str(tmp_path / "o"), "--append", *args)  # fmt: skip
    assert code == 1 and "'data/demo_0/obs/robot0_eef_pos' contains NaN/inf" in one_error_line(err)
    assert snapshot(tmp_path / "o") == before


def test_wrong_length_stats_json_is_one_line(tmp_path, capsys):
    import json

    write_coded_dataset(tmp_path / "d", "d", episodes=2, length=5)
    stats = json.loads((tmp_path / "d" / STATS_FILE).read_text())
    stats["std"] = stats["std"][:7]
    (tmp_path / "d" / STATS_FILE).write_text(json.dumps(stats))
    code, err = run(capsys, "stats", str(tmp_path / "d"))
    line = one_error_line(err)
    assert code == 1 and f"{tmp_path / 'd' / STATS_FILE}: invalid action statistics" in line
    assert "'std' has 7 values, expected 14" in line and "--recompute" in line


def test_help_lists_conventions_and_flags(capsys):
    for argv in (["--help"], ["convert", "lerobot", "--help"], ["convert", "hdf5", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        out = capsys.readouterr().out
        assert exit_info.value.code == 0
        assert all(f"  {name}  " in out or f"  {name} " in out for name in CONVENTIONS), out
    assert "--append" in out and "ee_poses" in out and "forward kinematics" in out
    main_help = subprocess.run([sys.executable, "-m", "lightning_prophrl.data_cli", "--help"], capture_output=True,
                               text=True, timeout=120).stdout  # fmt: skip
    assert "--debug" in main_help and "PROPHRL_DEBUG=1" in main_help


def test_debug_flag_and_environment_show_the_traceback(tmp_path, monkeypatch, capsys):
    argv = ["convert", "hdf5", str(tmp_path / "nope.hdf5"), "--out", str(tmp_path / "o"), "--action-convention",
            "ee_delta_euler"]  # fmt: skip
    with pytest.raises(FileNotFoundError, match="no hdf5 file"):
        main([*argv, "--debug"])
    monkeypatch.setenv("PROPHRL_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="no hdf5 file"):
        main(argv)
    monkeypatch.setenv("PROPHRL_DEBUG", "0")
    assert run(capsys, *argv)[0] == 1


def test_console_script_prints_one_line_and_traceback_only_on_request(tmp_path):
    """The installed entry point, in a fresh process: one line on stderr, status 2; a traceback with PROPHRL_DEBUG."""
    exe = os.path.join(os.path.dirname(sys.executable), "prophrl-data")
    argv = [exe, "metaworld", "--tasks", "nope-v3", "--episodes", "1", "--out", str(tmp_path / "o")]
    env = {**os.environ, "PROPHRL_DEBUG": "0", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().count("\n") == 0 and res.stderr.startswith(
        "error: prophrl-data metaworld: argument --tasks"
    )
    res = subprocess.run(argv, capture_output=True, text=True, env={**env, "PROPHRL_DEBUG": "1"}, timeout=120)
    assert res.returncode != 0 and "Traceback" in res.stderr and "UsageError" in res.stderr
    assert not (tmp_path / "o").exists()
