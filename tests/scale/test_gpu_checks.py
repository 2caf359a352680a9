"""scripts/gpu_checks.py in its tiny CPU mode: every check runs, the JSON holds every figure, and bf16 rollouts give
float32 log-probs with an FA-GRPO ratio of exactly 1."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_checks.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_checks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_writes_every_figure_and_the_ratio_is_exactly_one(tmp_path, capsys):
    out = tmp_path / "checks.json"
    results = load_script().main(["--tiny", "--device", "cpu", "--out", str(out), "--train-steps", "3",
                                  "--repeats", "1"])  # fmt: skip
    assert json.loads(out.read_text()) == results and results["mode"] == "tiny"
    train = results["prophet_train"]
    assert train["steps"] == 3 and train["loss_finite"] and train["step_time_s"] > 0 and train["estimated_gib"] > 0
    assert train["peak_memory_gib"] is None  # CPU: no allocator statistics
    assert set(results["prophet_generate"]["fps"]) == {"1", "2", "4"}
    assert all(v > 0 for v in results["prophet_generate"]["fps"].values())
    vla = results["vla_log_probs"]
    assert vla["K"] == 10 and vla["speedup_fwd_bwd"] == vla["fwd_bwd_loop_s"] / vla["fwd_bwd_batched_s"]
    assert all(vla[k] > 0 for k in ("fwd_batched_s", "fwd_loop_s", "fwd_loop_reencode_s"))
    ratio = results["bf16_ratio"]
    assert ratio["passed"]
    for mode in ("bf16-mixed", "bf16-true"):
        r = ratio[mode]
        assert r["exact"] and r["ratio_min"] == r["ratio_max"] == 1.0
        assert r["log_prob_dtype"] == r["sampled_dtype"] == "torch.float32"
    table = capsys.readouterr().out
    assert "| 4. fp32 log-probs with ratio exactly 1 | pass |" in table and "2. frames/s, 4 sampling" in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error given where no GPU exists")
def test_cuda_without_a_gpu_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit):
        load_script().main(["--device", "cuda"])
    assert "--device cuda: no CUDA device here" in capsys.readouterr().err
