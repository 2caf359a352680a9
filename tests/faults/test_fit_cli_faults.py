"""``prophrl fit``: each test makes one mistake in the command line or the config and checks the one-line
``error:`` on stderr, the exit status, and that no run directory was started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch  # noqa: F401 - its log handler binds to stderr at import: before any capsys, not inside one
import pytest

from lightning_prophrl.cli import main
from lightning_prophrl.cli_errors import run_user_command, user_command
from tests.conftest import write_coded_dataset

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")  # argv is pytest's own here
CONFIGS = Path(__file__).resolve().parents[2] / "configs"
REWARD = str(CONFIGS / "reward" / "classifier_tiny.yaml")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory: the configs' relative paths (runs/...) resolve inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROPHRL_DEBUG", raising=False)
    return tmp_path


def run(capsys, *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "Given value" not in lines[0] and "Namespace(" not in lines[0] and "usage:" not in err, err
    return exit_info.value.code, lines[0]


def test_misspelt_trainer_flag_is_not_taken_as_an_abbreviation(workdir, capsys):
    """``--trainer.max_step`` was silently read as ``--trainer.max_steps`` by jsonargparse's abbreviations."""
    code, line = run(capsys, "fit", "--config", REWARD, "--trainer.max_step", "5")
    assert code == 2 and "unrecognized arguments: --trainer.max_step 5 (options are never abbreviated)" in line
    assert "prophrl --help" in line
    assert list(workdir.iterdir()) == []


def test_wrong_key_in_config_file_is_named(workdir, capsys):
    (workdir / "extra.yaml").write_text("trainer:\n  max_stepz: 3\n")
    code, line = run(capsys, "fit", "--config", REWARD, "--config", str(workdir / "extra.yaml"))
    assert code == 2 and "'trainer.max_stepz'" in line


def test_wrong_init_arg_is_named_without_a_config_dump(workdir, capsys):
    code, line = run(capsys, "fit", "--config", REWARD, "--model.init_args.shift_padding", "4")
    assert code == 2 and "RewardModelModule" in line and "'shift_padding' is not accepted" in line


def test_missing_config_file_is_named(workdir, capsys):
    code, line = run(capsys, "fit", "--config", "nope.yaml")
    assert code == 2 and "nope.yaml" in line and "does not exist" in line


def test_missing_data_directory_is_one_line_and_starts_no_run(workdir, capsys):
    code, line = run(capsys, "fit", "--config", REWARD)
    assert code == 1
    assert "config key data.init_args.datasets: runs/data/reward_real not found" in line and "prophrl-data" in line
    assert list(workdir.iterdir()) == []  # no runs/reward_tiny log directory was started


def test_data_directory_without_shards_is_named(workdir, capsys):
    (workdir / "empty").mkdir()
    code, line = run(capsys, "fit", "--config", REWARD, "--data.init_args.datasets", "[empty]")
    assert code == 1 and "data.init_args.datasets: no shards in empty" in line
    assert sorted(p.name for p in workdir.iterdir()) == ["empty"]


def test_missing_checkpoint_is_one_line(workdir, capsys):
    data = write_coded_dataset(workdir / "d", "d", episodes=2, length=6)
    code, line = run(capsys, "fit", "--config", REWARD, "--data.init_args.datasets", f"[{data}]", "--ckpt_path",
                     "runs/reward_tiny/last.ckpt")  # fmt: skip
    assert code == 1 and "ckpt_path: runs/reward_tiny/last.ckpt not found" in line
    assert sorted(p.name for p in workdir.iterdir()) == ["d"]


def test_missing_stats_from_is_named(workdir, capsys):
    data = write_coded_dataset(workdir / "d", "d", episodes=2, length=6)
    config = str(CONFIGS / "prophet" / "adapt_metaworld.yaml")
    code, line = run(capsys, "fit", "--config", config, "--data.init_args.datasets", f"[{data}]",
                     "--data.init_args.val_datasets", "[]", "--data.init_args.stats_from", "nostats")  # fmt: skip
    assert code == 1 and "config key data.init_args.stats_from: nostats/stats.json not found" in line


def test_error_inside_a_constructor_is_one_line(workdir, capsys):
    """A ValueError raised by a module's __init__ reaches the user without jsonargparse's union report."""
    data = write_coded_dataset(workdir / "d", "d", episodes=2, length=6)
    config = str(CONFIGS / "prophet" / "adapt_tiny.yaml")
    code, line = run(capsys, "fit", "--config", config, "--data.init_args.datasets", f"[{data}]",
                     "--data.init_args.val_datasets", "[]", "--model.init_args.pretrained_path", "null")  # fmt: skip
    assert code == 1 and line == "error: give exactly one of `model` (a Prophet) and `pretrained_path` (a save_pretrained dir)"  # fmt: skip


def test_debug_shows_the_original_exception(workdir, monkeypatch, capsys):
    with pytest.raises(FileNotFoundError, match="config key data.init_args.datasets"):
        main(["fit", "--config", REWARD, "--debug"])
    monkeypatch.setenv("PROPHRL_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="config key data.init_args.datasets"):
        main(["fit", "--config", REWARD])


def test_nested_commands_report_once_and_pass_debug_inward(capsys):
    """``prophrl demo`` runs inside ``prophrl``: the inner command leaves the report (and --debug) to the outer."""

    @user_command("prophrl demo")
    def inner(argv):
        raise FileNotFoundError(f"runs/x/stats.json not found (argv {argv})")

    with pytest.raises(SystemExit) as exit_info:
        run_user_command(lambda args: inner(args[1:]), ["demo", "--quick"], prog="prophrl")
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: runs/x/stats.json not found (argv ['--quick'])\n"
    with pytest.raises(FileNotFoundError):
        run_user_command(lambda args: inner(args[1:]), ["demo", "--debug"], prog="prophrl")
    with pytest.raises(TypeError):  # not a user error: a bug keeps its traceback
        run_user_command(lambda args: None + 1, [], prog="prophrl")


def test_console_script_prints_exactly_one_line(workdir):
    """The installed ``prophrl`` in a fresh process: stderr is the error line alone (nothing is seeded or logged
    before the config's paths are checked), status 1."""
    exe = os.path.join(os.path.dirname(sys.executable), "prophrl")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PROPHRL_DEBUG": "0"}
    res = subprocess.run([exe, "fit", "--config", REWARD], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 1, res.stderr
    assert res.stderr.splitlines() == [
        "error: config key data.init_args.datasets: runs/data/reward_real not found; create it with `prophrl-data` "
        "(metaworld, corpus or convert) or fix the path in the config"
    ]
    assert list(workdir.iterdir()) == []
