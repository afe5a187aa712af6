"""benchmarks/engine_vs_naive.py end to end on a tiny model: both ways run, alternate, and agree row by row."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT
from dropnoise import models


def test_engine_vs_naive_runs_and_agrees(tmp_path, paper_config):
    entry = {"kind": "tiny", "family": "qwen3", "layers": 2, "seed": 0}
    models.prepare_tiny("tiny-qwen3", entry, tmp_path / "model", paper_config["models"]["smollm2-135m"], None)
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/engine_vs_naive.py"), "--model-dir", str(tmp_path / "model"),
         "--trials", "3", "--repeats", "2", "--threads", "1", "--dropout", "0", "0.5", "--noise", "0", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for experiment in ("localization", "zero_shot"):
        assert f"\n{experiment}: " in out
    assert out.count("median of 2 timing(s)") == 2
    assert out.count("predictions identical") == 2, out
    assert "each timing:" in out and "of the measured matmul throughput" in out
