"""Checkpoint dynamics: the tiny training run, checkpoint series in the registry, the dynamics table and figure."""

from __future__ import annotations

import copy

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dropnoise import checkpoints, dynamics, models, probe_figures, sentences, style, training
from dropnoise.config import ConfigError, check

from conftest import ROOT


def test_training_saves_loadable_checkpoints_and_the_loss_decreases(tmp_path, paper_config, smol_tokenizer):
    entry = {**paper_config["models"]["tiny-trained"], "layers": 2,
             "training": {"sentences": 400, "context": 16, "batch_size": 8, "learning_rate": 3e-3, "seed": 0},
             "checkpoints": [{"step": 0}, {"step": 10}, {"step": 40}]}
    pool = sentences.candidates({"source": "synthetic"}, 1, ROOT / "data/synthetic_grammar.yaml")
    losses = training.train("tiny-trained", entry, copy.deepcopy(smol_tokenizer), pool, None, tmp_path)
    assert list(losses.step) == [0, 10, 40]
    assert losses.held_out_loss.is_monotonic_decreasing and losses.held_out_loss.iloc[-1] < losses.held_out_loss.iloc[0] - 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step0", "step10", "step40"]  # no half-written folder left
    first = AutoModelForCausalLM.from_pretrained(tmp_path / "step0")
    last = AutoModelForCausalLM.from_pretrained(tmp_path / "step40")
    assert AutoTokenizer.from_pretrained(tmp_path / "step40").chat_template == smol_tokenizer.chat_template
    assert models.read_marker(tmp_path / "step40")["revision"].endswith("step=40")
    assert not torch.equal(first.model.layers[0].mlp.up_proj.weight, last.model.layers[0].mlp.up_proj.weight)

    prepared = tmp_path / "prepared"
    derived = checkpoints.derive("tiny-trained", entry, {"step": 10}, paper_config["dynamics"])
    models.prepare_trained("tiny-trained-step10", derived, prepared, tmp_path)
    marker = models.read_marker(prepared)
    assert marker["key"] == "tiny-trained-step10" and marker["revision"].endswith("step=10")


def test_checkpoint_series_become_registry_entries(paper_config):
    config = copy.deepcopy(paper_config)
    expanded = checkpoints.expand(config)
    olmo = expanded["olmo2-1b-step1000"]
    assert olmo["revision"] == "stage1-step1000-tokens3B" and olmo["repo_id"].endswith("-early-training")
    assert olmo["checkpoint_of"] == "olmo2-1b" and olmo["step"] == 1000 and "checkpoints" not in olmo
    assert expanded["olmo2-1b-step10000"]["repo_id"] == "allenai/OLMo-2-0425-1B"  # inherited from the series
    assert olmo["settings"]["localization"]["samples_per_condition"] == config["dynamics"]["localization"]["samples_per_condition"]
    assert olmo["grids"]["localization"] == config["dynamics"]["localization"]["grid"]
    assert list(checkpoints.steps(expanded, "tiny-trained").values()) == [0, 50, 100, 200, 400]
    config["models"] = expanded
    assert checkpoints.expand(config) == expanded  # expanding twice changes nothing
    check(config, root=ROOT)


@pytest.mark.parametrize(
    "series,points,message",
    [
        ("olmo2-1b", [{"step": 5}], "an hf checkpoint needs a revision"),
        ("olmo2-1b", [{"step": 5, "revision": "a"}, {"step": 5, "revision": "b"}], "step 5 is listed twice"),
        ("tiny-trained", [{"step": 5, "revision": "a"}], "named by its step only"),
        ("tiny-llama", [{"step": 5}], "only hf and trained_tiny entries have checkpoints"),
    ],
)
def test_bad_checkpoint_lists_fail_naming_the_entry(paper_config, series, points, message):
    config = copy.deepcopy(paper_config)
    config["models"][series]["checkpoints"] = points
    with pytest.raises(ConfigError, match=message) as err:
        checkpoints.expand(config)
    assert f"models.{series}.checkpoints" in str(err.value)


def test_dynamics_needs_probes_and_known_series(paper_config):
    config = copy.deepcopy(paper_config)
    config["dynamics"]["models"] = ["olmo2-1b", "llama8b"]
    config["dynamics"]["localization"]["buckets"] = [7, 9]
    config["models"] = checkpoints.expand(config)
    with pytest.raises(ConfigError) as err:
        check(config, root=ROOT)
    assert "'llama8b' is not a registry entry with a checkpoints: list" in str(err.value)
    assert "need probes.enabled: true" in str(err.value)
    assert "dynamics.localization.buckets: [9]" in str(err.value)


def synthetic_checkpoint(step: int, signal: float):
    """The three tables of one checkpoint: two strengths per perturbation, two layers; `signal` grows with training."""
    rows, probe_rows, mi_rows = [], [], []
    for perturbation in ("dropout", "noise"):
        for level, strength in enumerate((0.0, 0.5)):
            accuracy = 0.5 + signal * level
            rows.append({"perturbation": perturbation, "strength": strength, "subset": "all", "n": 40,
                         "accuracy_primary": accuracy, "ci_low_primary": accuracy - 0.1, "ci_high_primary": accuracy + 0.1})
            rows.append({"perturbation": perturbation, "strength": strength, "subset": "sentence_tokens=7", "n": 20,
                         "accuracy_primary": 0.0, "ci_low_primary": 0.0, "ci_high_primary": 0.0})
            for layer in (0, 2):
                for task in ("perturbed", "which_sentence"):
                    for site in ("answer", "span_mean"):
                        for features in ("linear", "norm"):
                            value = 0.5 + signal * level * (layer == 2) * (features == "linear")
                            probe_rows.append({"experiment": "localization", "task": task, "perturbation": perturbation,
                                               "strength": strength, "level": level, "site": site, "layer": layer,
                                               "features": features, "accuracy": value, "accuracy_low": value - 0.1,
                                               "accuracy_high": value + 0.1})
                    for bandwidth in (4, 16, 64):
                        mi_rows.append({"experiment": "localization", "task": task, "perturbation": perturbation,
                                        "strength": strength, "level": level, "site": "answer", "layer": layer,
                                        "bandwidth": bandwidth, "nhsic_tx": 5.0 - signal, "nhsic_ty": signal + bandwidth,
                                        "nhsic_ty_null_mean": float(bandwidth), "nhsic_ty_p": 0.01})
    return step, f"series-step{step}", pd.DataFrame(rows), pd.DataFrame(probe_rows), pd.DataFrame(mi_rows)


def test_dynamics_table_joins_checkpoints(tmp_path):
    table = dynamics.table([synthetic_checkpoint(1000, 0.4), synthetic_checkpoint(0, 0.0), synthetic_checkpoint(10, 0.1)])
    assert list(table.columns) == dynamics.COLUMNS
    assert set(table.metric) == {"verbal_accuracy", "probe_accuracy", "nhsic_tx", "nhsic_ty_excess"}
    verbal = table[(table.metric == "verbal_accuracy") & (table.perturbation == "noise") & (table.level == 1)]
    assert list(verbal.step) == [0, 10, 1000] and np.allclose(verbal.value, [0.5, 0.6, 0.9])
    assert verbal.layer.isna().all() and (verbal.ci_low < verbal.value).all()
    probes = table[(table.metric == "probe_accuracy") & (table.task == "perturbed") & (table.site == "answer")]
    assert set(probes.layer[probes.step > 0]) == {2}  # the best layer, chosen per checkpoint
    assert len(probes) == 3 * 2 * 2  # checkpoints x perturbations x strengths: one layer each
    excess = table[(table.metric == "nhsic_ty_excess")]
    assert np.allclose(excess.groupby("step").value.first(), [0.0, 0.1, 0.4])  # middle bandwidth, minus the null
    assert set(excess.site) == {"answer"}

    probe_figures.dynamics(table, tmp_path / "dynamics")
    assert (tmp_path / "dynamics.png").stat().st_size > 0 and (tmp_path / "dynamics.pdf").stat().st_size > 0


@pytest.mark.parametrize("steps,scale", [([0, 50, 400], "linear"), ([0, 10, 1000], "symlog"), ([100, 10000], "log")])
def test_step_axis_is_logarithmic_when_steps_span_decades(steps, scale):
    fig, axes = style.figure()
    probe_figures.step_axis(axes[0, 0], steps)
    assert axes[0, 0].get_xscale() == scale
    plt.close(fig)


def test_a_checkpoint_missing_from_the_training_run_says_how_to_retrain(tmp_path):
    (tmp_path / "trained/step100").mkdir(parents=True)  # trained for other checkpoints: no step 200
    entry = {"kind": "trained_tiny", "checkpoints": [{"step": 100}, {"step": 200}]}
    out = tmp_path / "models/series"
    retrain = rf"no complete checkpoint at step 200 .*`snakemake {out} --forcerun train_tiny`"
    with pytest.raises(models.ModelError, match=retrain):
        models.prepare_trained("series", entry, out, tmp_path / "trained")
