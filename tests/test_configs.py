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
