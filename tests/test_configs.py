"""Every YAML in configs/ parses through the LightningCLI (classes resolve, arguments type-check)."""

from pathlib import Path

import pytest

from lightning_prophrl.cli import _lightning_cli

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml")
                 if "model:" in p.read_text() and "data:" in p.read_text())  # fmt: skip


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_fit_config_parses(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _lightning_cli(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path" in printed and "trainer:" in printed
