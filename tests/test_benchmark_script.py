"""The benchmark scripts end to end on a tiny model: engine_vs_naive.py (both ways run, alternate, and agree row by
row), hook_overhead.py and probe_jobs.py."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
from conftest import ROOT
from dropnoise import models


def tiny_folder(tmp_path, paper_config):
    entry = {"kind": "tiny", "family": "qwen3", "layers": 2, "seed": 0}
    models.prepare_tiny("tiny-qwen3", entry, tmp_path / "model", paper_config["models"]["smollm2-135m"], None)
    return tmp_path / "model"


def test_engine_vs_naive_runs_and_agrees(tmp_path, paper_config):
    tiny_folder(tmp_path, paper_config)
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


def test_hook_overhead_runs(tmp_path, paper_config):
    folder = tiny_folder(tmp_path, paper_config)
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/hook_overhead.py"), "--model-dir", str(folder),
         "--rows", "4", "--tokens", "40", "--spans", "3", "--span-tokens", "5", "--repeats", "2", "--threads", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "4 rows x 40 tokens, 3 spans of 5 tokens per row, 4 hooked sublayers" in result.stdout, result.stdout
    assert "us per (row, span, sublayer)" in result.stdout
    too_long = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/hook_overhead.py"), "--tokens", "20", "--spans", "3"],
        capture_output=True, text=True, timeout=600,
    )
    assert too_long.returncode == 2 and "do not fit in 20 tokens" in too_long.stderr


def test_gpu_mode_path_with_random_weights_of_a_paper_architecture(tmp_path, smol_tokenizer):
    """The --random-init path (meant for a GPU) on CPU: a paper config shrunk to test size, built from the JSON."""
    import json

    spec = json.loads((ROOT / "benchmarks/configs/llama-3.1-8b.json").read_text())
    spec.update(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                vocab_size=49152)
    (tmp_path / "small.json").write_text(json.dumps(spec))
    smol_tokenizer.save_pretrained(tmp_path / "tokenizer")
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/engine_vs_naive.py"), "--random-init", "--config",
         str(tmp_path / "small.json"), "--layers", "2", "--tokenizer-dir", str(tmp_path / "tokenizer"),
         "--experiments", "zero_shot", "--trials", "2", "--aliases", "dropout_noise", "--threads", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "small (random weights, 2 layers), float32 on cpu" in result.stdout, result.stdout
    assert "predictions identical" in result.stdout


def _row(trial_id, a, b, argmax=None):
    """A scored row with option logits a, b (summed probabilities follow them)."""
    primary = "A" if a > b else "B"
    return {"trial_id": trial_id, "perturbation": "dropout", "strength": 0.5, "logit_A": a, "logit_B": b,
            "logit_diff": a - b, "sum_prob_A": a / 10, "sum_prob_B": b / 10, "pred_primary": primary,
            "pred_aggregate": primary, "pred_argmax": argmax or primary}


def test_agreement_tells_near_ties_from_real_disagreements():
    from dropnoise.benchmark import agreement

    reference = [_row(0, 2.0, 1.0), _row(1, 1.0, 3.0), _row(2, 1.004, 1.0), _row(3, 2.0, 1.0), _row(4, 2.0, 1.0)]
    same = agreement(reference, [dict(r) for r in reversed(reference)])
    assert same.differ == 0 and same.summary() == "predictions identical (largest option-logit difference 0.00e+00)"

    ours = [_row(0, 2.01, 1.0), _row(1, 1.0, 3.0),
             _row(2, 0.999, 1.0),  # margin 0.004 in the reference, the agreeing rows' margins move by up to 0.01
             _row(3, 1.0, 2.0),  # margin 1.0: no rounding flips that
             _row(4, 2.0, 1.0, argmax="OTHER")]
    found = agreement(reference, ours)
    assert found.differ == 3 and found.flips == {"primary": 2, "aggregate": 2, "argmax": 3}
    assert found.within_rounding == {"primary": 1, "aggregate": 1}
    assert found.largest_logit_gap == 1.0
    assert found.summary() == ("predictions DIFFER in 3 of 5 rows: primary 2 (1 within rounding), aggregate 2 "
                               "(1 within rounding), argmax 3 (no margin recorded); largest option-logit difference "
                               "1.00e+00")


def test_probe_jobs_benchmark_runs_the_rules_calls(tmp_path):
    """The probe-job benchmark on a small shape: its capture is what the probes and MI rules read."""
    shape = tmp_path / "shape.json"
    shape.write_text('{"num_hidden_layers": 4, "hidden_size": 16}')
    for step in ("make", "probes", "mutual_information"):
        result = subprocess.run([sys.executable, str(ROOT / "benchmarks/probe_jobs.py"), step, str(tmp_path),
                                 "--config", str(shape), "--trials", "24"], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"{step}: " in result.stdout
    probes = pd.read_csv(tmp_path / "probes.csv")
    assert set(probes.experiment) == {"localization", "zero_shot"} and set(probes.layer) == {0, 3}
    assert {"perturbed", "which_sentence", "dropout_vs_noise"} <= set(probes.task)
    assert pd.read_csv(tmp_path / "mutual_information.csv").probe_bound_bits.notna().all()
