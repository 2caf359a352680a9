"""Every YAML in configs/ parses through the LightningCLI (classes resolve, arguments type-check)."""

import re
from pathlib import Path

import pytest

from lightning_prophrl.cli import _lightning_cli

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")
                 if re.search(r"^model:", p.read_text(), re.M) and re.search(r"^data:", p.read_text(), re.M))  # fmt: skip


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_fit_config_parses(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _lightning_cli(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path" in printed and "trainer:" in printed


def _printed(args: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        _lightning_cli(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize("drop_optimizer", [False, True], ids=["as_given", "default_optimizer"])
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_a_saved_config_parses_again_to_the_same_config(path, drop_optimizer, tmp_path, capsys):
    """What LightningCLI saves with a run (the full resolved config) is itself a valid config of the same run, also
    when the module's optimizer is left at its default."""
    import yaml

    cfg = yaml.safe_load(path.read_text())
    if drop_optimizer:
        init = cfg["model"].get("init_args", {})
        if "optimizer" not in init:
            pytest.skip("the config leaves the optimizer at its default already")
        del init["optimizer"]
    source = path.parent / f".{tmp_path.name}.yaml"  # next to the original: configs name sibling files relatively
    source.write_text(yaml.safe_dump(cfg))
    try:
        saved = tmp_path / "config.yaml"
        saved.write_text(_printed(["--config", str(source)], capsys))
    finally:
        source.unlink()
    assert _printed(["--config", str(saved)], capsys) == saved.read_text()


def test_the_configs_ship_inside_the_package_and_its_wheel(tmp_path):
    """``configs/`` at the repository root is the package's own directory (so an installed wheel has every config the
    demo and the docs name), and a wheel built from the sources carries every config file."""
    import shutil
    import subprocess
    import sys
    import zipfile

    from lightning_prophrl.constants import CONFIG_DIR

    root = Path(__file__).resolve().parents[1]
    assert (root / "configs").resolve() == CONFIG_DIR and CONFIG_DIR.parent == root / "lightning_prophrl"
    files = {str(p.relative_to(CONFIG_DIR.parent.parent)) for p in CONFIG_DIR.rglob("*") if p.is_file()}
    assert {
        "lightning_prophrl/configs/rl/fagrpo_prophet.yaml",
        "lightning_prophrl/configs/prophet/model_tiny.yaml",
    } <= files
    src = tmp_path / "src"
    shutil.copytree(root / "lightning_prophrl", src / "lightning_prophrl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(root / name, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src),
                          "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert files <= set(zipfile.ZipFile(wheel).namelist())
