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
