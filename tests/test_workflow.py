"""The Snakemake DAG: lint, dry runs of the paper config, readable config errors, and an end-to-end tiny run."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from dropnoise import config as dnconfig

WORKFLOW_FILES = ["Snakefile", "config.yaml", "workflow", "envs", "data", "presets", "profiles"]
PAPER_MODELS = ["llama8b", "qwen14b", "qwen32b", "olmo32b"]


def snakemake(*args, cwd=ROOT, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True, timeout=1200
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats" table of a dry run, without its total."""
    lines = output[output.index("Job stats:") :].splitlines()[3:]
    table = {}
    for line in lines:
        if not line.strip():
            break
        name, count = line.split()
        table[name] = int(count)
    table.pop("total", None)
    return table


def copy_workflow(dest):
    for name in WORKFLOW_FILES:
        source = ROOT / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, dest / name)
    return dest


def test_lint_is_clean():
    out = snakemake("--lint")
    assert "Congratulations" in out.stdout + out.stderr


def test_paper_dry_run_lists_every_paper_model_offline():
    out = snakemake("-n", "--cores", "all").stdout
    for model in PAPER_MODELS:
        for experiment in ("localization", "localization_control", "zero_shot", "few_shot"):
            assert f"results/{model}/{experiment}.csv" in out
            assert f"results/{model}/{experiment}.summary.csv" in out
        for figure in ("fig4_zero_shot", "fig5_few_shot_heatmap", "fig6_flipped_labels"):
            assert f"paper_figures/{model}/{figure}.png" in out
    for target in ("results/stats/condition_tests.csv", "results/stats/alias_controls.tex", "paper_figures/fig2_localization.pdf"):
        assert target in out


def test_single_target_dry_run_has_only_its_jobs():
    out = snakemake("-n", "results/qwen32b/localization.csv").stdout
    assert job_counts(out) == {"prepare_model": 1, "sentences": 1, "prompt_set": 1, "perturbed_inference": 8, "aggregate": 1}
    assert "qwen14b" not in out and "localization_control" not in out


def test_zero_shot_target_has_only_its_jobs():
    out = snakemake("-n", "results/qwen32b/zero_shot.csv").stdout
    assert job_counts(out) == {
        "prepare_model": 1, "sentences": 1, "prompt_set": 1, "strength_grid": 1, "perturbed_inference": 11,
        "aggregate": 1,
    }
    assert "localization" not in out  # the paper's grid is configured: no dependency on localization results


@pytest.mark.parametrize("target", ["results/qwen23b/zero_shot.csv", "paper_figures/qwen23b/fig4_zero_shot.pdf"])
def test_a_target_of_an_unknown_model_names_the_models(target):
    out = snakemake("-n", target, check=False)
    assert out.returncode != 0
    assert f"{target}: 'qwen23b' is not a model of this configuration; its models are llama8b, qwen14b" in out.stdout + out.stderr


@pytest.mark.parametrize("target,message", [
    ("results/qwen32b/shards/zero_shot/11.csv", "qwen32b runs zero_shot in 11 shards, numbered 0 to 10"),
    ("paper_figures/fig4_zero_shot.png", "No rule to produce paper_figures/fig4_zero_shot.png"),  # a per-model one
    ("paper_figures/qwen32b/fig2_localization.png", "No rule to produce"),  # a figure of every model
])
def test_a_target_that_names_no_job_says_so(target, message):
    out = snakemake("-n", target, check=False)
    assert out.returncode != 0 and message in out.stdout + out.stderr


def test_a_working_directory_without_the_configured_files_fails_at_parse(tmp_path):
    """Jobs read the configuration's files from the working directory (--directory), so the check does too."""
    (tmp_path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    out = snakemake("-s", str(ROOT / "Snakefile"), "-n", "results/qwen32b/zero_shot.csv", cwd=tmp_path, check=False)
    assert out.returncode != 0
    assert "aliases: file 'data/aliases.yaml' does not exist" in out.stdout + out.stderr
    (tmp_path / "config.yaml").unlink()  # with a preset, Snakemake skips the missing default without a word
    out = snakemake("-s", str(ROOT / "Snakefile"), "-n", "--configfile", str(ROOT / "presets/ci.yaml"), cwd=tmp_path,
                    check=False)
    assert out.returncode != 0 and "no config.yaml in the working directory" in out.stdout + out.stderr


def test_a_statistics_table_with_nothing_to_test_is_not_written_empty(tmp_path):
    overlay = tmp_path / "localization_only.yaml"
    overlay.write_text(yaml.safe_dump({"run": {"models": ["qwen32b"], "experiments": ["localization"]},
                                       "probes": {"enabled": False}, "dynamics": {"models": []}}))
    out = snakemake("-n", "results/stats/label_pairs.csv", "--configfile", str(overlay), check=False)
    assert out.returncode != 0
    assert "results/stats/label_pairs.csv: no model in run.models ran an experiment this table tests (few_shot" in out.stdout + out.stderr


def test_dynamics_target_runs_only_localization_on_each_checkpoint(tmp_path):
    overlay = tmp_path / "probes.yaml"
    overlay.write_text("probes: {enabled: true}\n")
    out = snakemake("-n", "results/olmo2-1b/dynamics.csv", "--configfile", str(overlay)).stdout
    n = len(yaml.safe_load((ROOT / "config.yaml").read_text())["models"]["olmo2-1b"]["checkpoints"])
    per_checkpoint = ("prepare_model", "sentences", "prompt_set", "perturbed_inference_capture", "aggregate", "summarize",
                      "probes", "mutual_information")
    assert job_counts(out) == {**dict.fromkeys(per_checkpoint, n), "dynamics": 1}
    assert "resources/models/olmo2-1b-step1000" in out and "resources/models/olmo2-1b\n" not in out
    assert "zero_shot" not in out and "localization_control" not in out
    without_probes = snakemake("-n", "results/olmo2-1b/dynamics.csv", check=False)
    assert without_probes.returncode != 0
    assert "reads each checkpoint's probes, which are off" in without_probes.stdout + without_probes.stderr


@pytest.mark.parametrize(
    "overlay,message",
    [
        ({"models": {"llama8b": {"kind": "hff"}}}, "'hff' is not one of"),
        ({"run": {"models": ["qwen33b"], "experiments": ["localization"]}}, "unknown model key 'qwen33b'"),
        ({"experiments": {"localization": {"grid": {"dropout": [1.5]}}}}, "dropout rates must be < 1"),
        ({"experiments": {"localization": {"grid": {"dropout": [{"start": 0.5, "stop": 0.1, "step": 0.1}]}}}},
         "experiments.localization.grid.dropout: range from 0.5 to 0.1 by 0.1 runs downward"),
        ({"experiments": {"localization": {"grid": {"dropout": [{"start": 0, "stop": 0.5, "step": 0.03}]}}}},
         "range from 0 to 0.5 by 0.03: the step does not divide stop - start"),
        ({"sentences": {"source": "file", "path": "nowhere.txt"}}, "sentences.path: file 'nowhere.txt' does not exist"),
        ({"sentences": {"mix": [{"source": "file", "path": "nowhere.txt"}]}},
         "sentences.mix[0].path: file 'nowhere.txt' does not exist"),
        ({"sentences": {"mix": [{"source": "wikitext"}]}}, "repeat a kind"),
        ({"inference": {"device": "auto", "batch_size": "large"}}, "inference.batch_size: 'large' is not valid under any of the given schemas"),
        ({"models": {"tiny-llama": {"kind": "tiny", "family": "llama", "tokenizer_from": "smollm2-135m",
                                    "checkpoints": [{"step": 1}]}}}, "only hf and trained_tiny entries have checkpoints"),
        # a key of another kind, which that kind would ignore
        # an alias typo in the settings of a model that run.models does not list (a target can still name it)
        ({"models": {"tiny-qwen3": {"settings": {"zero_shot": {"aliases": ["papr"]}}}}},
         "models.tiny-qwen3.settings.zero_shot.aliases: unknown alias 'papr'"),
        # a Hub model must say how many GPUs it needs (no silent CPU default)
        ({"models": {"mistral7b": {"kind": "hf", "repo_id": "mistralai/Mistral-7B-Instruct-v0.3", "revision": "0" * 40}}},
         "models.mistral7b: 'gpus' is a required property"),
        ({"models": {"mine": {"kind": "local", "path": "nowhere", "gpus": 0}}},
         ["models.mine.path: 'nowhere' (", "/nowhere) is not a model folder (no config.json in it"]),
        # ~ is the home directory; a template's name is its file's without the suffix
        ({"models": {"mine": {"kind": "local", "path": "~/nowhere", "gpus": 0, "chat_template": "qwen3.jinja"}}},
         [f"'~/nowhere' ({Path.home()}/nowhere) is not a model folder", "models.mine.chat_template: no file "
          "data/chat_templates/qwen3.jinja.jinja (the name, without .jinja: "
          + ", ".join(sorted(p.stem for p in (ROOT / "data/chat_templates").glob("*.jinja")))]),
        # captured aliases: each must run, and steering must read captured ones
        ({"probes": {"enabled": True, "aliases": ["dropout_noize"]}},
         "probes.aliases: 'dropout_noize' is not among the zero_shot aliases of llama8b"),
        ({"probes": {"enabled": True, "aliases": ["x_y"]}},
         "probes.steering.alias: 'dropout_noise' is not captured (probes.aliases: ['x_y'])"),
        # README's placeholder, pasted as is
        ({"models": {"llama8b": {"revision": "<40-hex commit>"}}},
         "models.llama8b.revision: '<40-hex commit>' does not match"),
        ({"models": {"smollm2-135m": {"revision": "main"}}},
         "models.smollm2-135m.revision: only hf entries read this key, and this entry is gguf_package"),
        # a misspelled key in a model entry (here: 0 GPUs on a cluster) or in its settings for an experiment
        ({"models": {"llama8b": {"gpu": 2}}}, "models.llama8b: Additional properties are not allowed ('gpu' was unexpected)"),
        ({"models": {"qwen32b": {"settings": {"zero_shot": {"aliasses": ["paper"]}}}}},
         "models.qwen32b.settings.zero_shot: Additional properties are not allowed ('aliasses' was unexpected)"),
    ],
)
def test_bad_config_fails_before_any_job_with_a_readable_message(tmp_path, overlay, message):
    paper = yaml.safe_load((ROOT / "config.yaml").read_text())
    for key, value in overlay.items():  # deep-merge like Snakemake does with --configfile
        if isinstance(value, dict) and key == "experiments":
            paper[key]["localization"]["grid"] = value["localization"]["grid"]
        elif isinstance(value, dict) and key == "probes":
            paper[key].update(value)
        elif isinstance(value, dict) and key in ("models", "sentences"):
            for sub, entry in value.items():
                paper[key][sub] = {**paper[key][sub], **entry} if key == "models" and sub in paper[key] else entry
        else:
            paper[key] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(paper))
    out = snakemake("-n", "--configfile", str(path), check=False)
    assert out.returncode != 0
    for part in [message] if isinstance(message, str) else message:
        assert part in out.stdout + out.stderr


def test_schema_problems_are_listed_together_by_key():
    paper = yaml.safe_load((ROOT / "config.yaml").read_text())
    paper["models"]["llama8b"]["runtme"] = 30
    paper["sentences"]["mix"] = [{"source": "file"}]
    problems = dnconfig.schema_problems(paper, ROOT / "workflow/schemas/config.schema.yaml")
    assert "models.llama8b: Additional properties are not allowed ('runtme' was unexpected)" in problems
    assert "sentences.mix[0]: 'path' is a required property" in problems
    assert len(problems) == 2
    paper["models"]["qwen23b"] = {"gpus": 2}  # an overlay meant for qwen32b
    problems = dnconfig.schema_problems(paper, ROOT / "workflow/schemas/config.schema.yaml")
    assert "models.qwen23b: no `kind`, so a new model; did you mean 'qwen32b'? (an overlay changes an entry under its " \
           "exact key)" in problems


def test_grids_without_strengths_fail_before_any_job():
    """An empty list, or an explicit zero-/few-shot grid without noise, once ran to a header-only table or to trials
    of one class only, with exit status 0."""
    paper = yaml.safe_load((ROOT / "config.yaml").read_text())
    paper["experiments"]["localization"]["grid"]["dropout"] = []
    paper["models"]["llama8b"]["strength_grid"] = {"dropout": [0.1, 0.2]}
    problems = dnconfig.schema_problems(paper, ROOT / "workflow/schemas/config.schema.yaml")
    assert "experiments.localization.grid.dropout: [] should be non-empty" in problems
    assert "models.llama8b.strength_grid: 'noise' is a required property" in problems and len(problems) == 2


def test_an_auto_grid_needs_localization_strengths_above_zero(paper_config):
    config = copy.deepcopy(paper_config)
    config["models"]["llama8b"]["strength_grid"] = "auto"
    config["models"]["llama8b"]["grids"] = {"localization": {"noise": [0.0]}}
    with pytest.raises(dnconfig.ConfigError, match=r"models.llama8b.strength_grid: auto needs a noise strength above 0 "
                                                   r"in the localization grid"):
        dnconfig.check(config, root=ROOT)


def test_a_few_shot_k_beyond_the_pool_fails_before_any_job(paper_config):
    config = copy.deepcopy(paper_config)
    config["experiments"]["few_shot"]["k"] = [1, config["sentences"]["per_bucket"]]
    with pytest.raises(dnconfig.ConfigError, match=r"experiments.few_shot.k: k = \d+ needs \d+ distinct sentences"):
        dnconfig.check(config, root=ROOT)


def test_tiny_preset_end_to_end(tmp_path):
    work = copy_workflow(tmp_path)
    snakemake("--cores", "2", "--configfile", "presets/ci.yaml", cwd=work)
    preset = yaml.safe_load((ROOT / "presets/ci.yaml").read_text())
    loc, ctl = preset["experiments"]["localization"], preset["experiments"]["localization_control"]
    for model in preset["run"]["models"]:
        trials = pd.read_csv(work / f"results/{model}/localization.csv")
        expected_columns = {
            "model", "experiment", "trial_id", "seed", "perturbation", "strength", "template_variant",
            "sentence_id", "sentence_tokens", "n_perturbed_tokens", "target", "answer", "prob_A", "prob_B",
            "logit_A", "logit_B", "sum_prob_A", "sum_prob_B", "pred_primary", "pred_aggregate", "pred_argmax",
            "correct_primary", "correct_aggregate", "correct_argmax", "logit_diff", "log_prob_correct",
            "argmax_token", "entropy",
        }
        assert expected_columns <= set(trials.columns)
        counts = trials.groupby(["perturbation", "strength", "sentence_tokens"]).size()
        assert len(counts) == 6 * len(loc["buckets"])
        assert (counts == loc["samples_per_condition"]).all()
        # buckets count the sentence alone (as the paper's files do); in the prompt its first word gains a space
        assert ((trials.n_perturbed_tokens - trials.sentence_tokens).abs() <= 3).all()
        # sharded by trials (config.yaml): each job ran its own trials under all 6 conditions
        shards = [pd.read_csv(work / f"results/{model}/shards/localization/{i}.csv") for i in range(loc["shards"])]
        assert all(shard.groupby("trial_id").size().eq(6).all() for shard in shards)
        assert sum(shard.trial_id.nunique() for shard in shards) == trials.trial_id.nunique()

        control = pd.read_csv(work / f"results/{model}/localization_control.csv")
        pairs = control.groupby(["perturbation", "strength", "topic_pair"]).size()
        assert (pairs == ctl["samples_per_condition"]).all() and len(pairs) == 6 * 5

        summary = pd.read_csv(work / f"results/{model}/localization.summary.csv")
        pooled = summary[summary.subset == "all"]
        assert len(pooled) == 6 and (pooled.n == loc["samples_per_condition"] * len(loc["buckets"])).all()
        assert ((pooled.ci_low_primary <= pooled.accuracy_primary) & (pooled.accuracy_primary <= pooled.ci_high_primary)).all()

        provenance = json.loads((work / f"results/{model}/localization.provenance.json").read_text())
        assert provenance["model_revision"] == "random:seed=0" and len(provenance["config_hash"]) == 16
        assert provenance["versions"]["torch"] == "2.13.0+cpu" or provenance["versions"]["torch"].startswith("2.13.0")
        zero = pd.read_csv(work / f"results/{model}/zero_shot.csv")
        zs = preset["experiments"]["zero_shot"]
        per_run = zero.groupby(["alias", "perturbation", "strength"]).size()
        assert set(zero.alias) == set(zs["aliases"]) and (zero.perturbation == zero.target).all()  # single-class
        assert per_run.sum() == len(zs["aliases"]) * 2 * zs["samples_per_condition"] * preset["strength_grid"]["points"]

        few = pd.read_csv(work / f"results/{model}/few_shot.csv")
        fs = preset["experiments"]["few_shot"]
        cells = few.groupby(["k", "label_condition", "alias", "dropout_strength", "noise_strength"]).size()
        assert len(few) == len(fs["k"]) * len(fs["label_conditions"]) * len(fs["aliases"]) * fs["samples_per_condition"] * 4
        assert set(few.label_condition) == set(fs["label_conditions"]) and set(few.k) == set(fs["k"])
        assert (few.perturbation == few.target).all() and cells.sum() == len(few)
        grid = json.loads((work / f"results/{model}/strength_grid.json").read_text())
        assert grid["source"] == "auto" and len(grid["dropout"]) == preset["strength_grid"]["points"]
        for figure in ("fig4_zero_shot", "fig5_few_shot_heatmap", "fig6_flipped_labels"):
            assert (work / f"paper_figures/{model}/{figure}.png").stat().st_size > 10_000
        dens = pd.read_csv(work / f"results/{model}/density.csv")
        pool = pd.read_csv(work / f"results/{model}/sentences.csv")
        assert dens.sentence_id.tolist() == pool.sentence_id.tolist()
        assert dens[["log_density", "log_density_x0.5", "log_density_x2", "clean_nll", "effective_neighbours"]].notna().all().all()
        check_probing_outputs(work, model, preset)

    tests = pd.read_csv(work / "results/stats/condition_tests.csv")
    assert set(tests.model) == set(preset["run"]["models"]) and set(tests.experiment) == set(preset["run"]["experiments"])
    assert ((tests.p_adjusted >= tests.p_value - 1e-12) & tests.p_value.between(0, 1)).all()
    pairs = pd.read_csv(work / "results/stats/label_pairs.csv")
    assert set(pairs.comparison) == {"correct - swapped", "correct - random", "correct - empty"}
    controls = pd.read_csv(work / "results/stats/alias_controls.csv")
    assert set(controls.alias) == {"x_y"} and set(controls.experiment) == {"zero_shot", "few_shot"}
    told = pd.read_csv(work / "results/stats/discrimination.csv")
    assert set(told.experiment) == {"zero_shot"} and told.balanced_accuracy.between(0, 1).all()
    for table in ("condition_tests", "dose_response", "label_pairs", "discrimination", "alias_controls"):
        assert "\\toprule" in (work / f"results/stats/{table}.tex").read_text()
    for figure in ("fig2_localization", "fig2_localization_by_length", "fig3_control", "fig5_few_shot_by_k",
                   "equivalence_map"):
        assert (work / f"paper_figures/{figure}.pdf").stat().st_size > 5_000
    curves = pd.read_csv(work / "results/stats/equivalence_curves.csv")
    assert set(curves.model) == set(preset["run"]["models"]) and set(curves.sentence_tokens) == set(loc["buckets"])
    assert {"model", "dropout_strength", "noise_strength"} <= set(pd.read_csv(work / "results/stats/equivalence_pairs.csv"))
    snakemake("--report", "report.html", "--configfile", "presets/ci.yaml", cwd=work)
    report = (work / "report.html").read_text()
    assert "Produced by the configuration with hash" in report
    dependence = pd.read_csv(work / "results/stats/density_dependence.csv")
    scales = preset["density"]["bandwidth"]["scales"]
    assert set(dependence.bandwidth_scale) == set(scales) and len(dependence) % len(scales) == 0
    assert set(zip(dependence.experiment, dependence.perturbation)) == {
        ("localization", "dropout"), ("localization", "noise"), ("zero_shot", "both"), ("few_shot", "both")}
    assert dependence[dependence.bandwidth_scale != 1].permutation_p_adjusted.isna().all()
    nll = pd.read_csv(work / "results/stats/density_nll.csv")
    assert len(nll) == len(preset["run"]["models"]) * len(scales) and nll.permutation_p.between(0, 1).all()
    for stem in ("density_deciles", "density_odds_ratios"):
        assert (work / f"paper_figures/{stem}.png").stat().st_size and (work / f"paper_figures/{stem}.pdf").exists()
    # the preset's pool mixes two sources (sentences.mix): localization draws from both, and they are contrasted
    contrast = pd.read_csv(work / "results/stats/density_source_contrast.csv")
    localization = contrast[contrast.experiment == "localization"]
    assert set(localization.source) == {"synthetic", "file"}
    # the tiny random model gets one source's few trials all right or all wrong: then there is no finite contrast
    assert (localization.source_p.between(0, 1) | localization.status.str.contains("not estimable: .*separation")).all()
    check_dynamics_outputs(work, preset)
    assert not list(work.rglob("*.tmp"))
    check_capture_settings_rerun_the_capturing_jobs(work)


def check_capture_settings_rerun_the_capturing_jobs(work):
    """A finished run is up to date; a changed capture setting re-runs the inference jobs that capture, and no other
    job for its params but the figures, whose provenance line quotes the configuration's hash (everything after the
    capturing jobs re-runs because their outputs are rewritten); scheduling settings rerun nothing."""
    rerun = snakemake("-n", "--configfile", "presets/ci.yaml", cwd=work)
    assert "Nothing to be done" in rerun.stdout + rerun.stderr
    model = yaml.safe_load((work / "presets/ci.yaml").read_text())["run"]["models"][0]
    schedule = work / "schedule.yaml"  # how jobs run, not what they compute: nothing to redo
    schedule.write_text(f"inference: {{batch_size: 3}}\nmodels: {{{model}: {{mem_mb: 1234, runtime: 7}}}}\n")
    rerun = snakemake("-n", "--configfile", "presets/ci.yaml", str(schedule), cwd=work)
    assert "Nothing to be done" in rerun.stdout + rerun.stderr
    overlay = work / "stride.yaml"
    overlay.write_text("probes: {layer_stride: 2}\n")
    out = snakemake("-n", "--configfile", "presets/ci.yaml", str(overlay), cwd=work).stdout
    changed = [block for block in out.split("\nrule ")[1:] if "Params have changed" in block]
    capturing = [block for block in changed if block.startswith("perturbed_inference_capture:")]
    assert capturing and all("'layer_stride': 2" in block for block in capturing)
    assert all("Produced by the configuration" in block for block in changed if block not in capturing)
    overlay.write_text("figures: {emphasis: [x_y]}\n")  # restyling a figure reruns figures, no statistics
    out = snakemake("-n", "--configfile", "presets/ci.yaml", str(overlay), cwd=work).stdout
    rerun = set(re.findall(r"^(?:local)?rule (\w+):", out, re.MULTILINE))
    assert "paper_figure" in rerun and rerun <= {"paper_figure", "model_figure", "probe_figure", "density_figures",
                                                 "dynamics_figure", "all"}, rerun


def check_probing_outputs(work, model, preset):
    """The probing rules of the tiny run: capture files per shard, probe and MI tables, figures."""
    loc = preset["experiments"]["localization"]
    shards = sorted((work / f"results/{model}/shards/localization").glob("*.activations.npz"))
    assert len(shards) == loc["shards"]
    probes = pd.read_csv(work / f"results/{model}/probes.csv")
    assert set(probes.task) == {"perturbed", "which_sentence", "dropout_vs_noise", "none_dropout_noise"}
    three = probes[probes.task == "none_dropout_noise"]  # at the ranks where both strengths are above 0
    assert (three.dropout_strength > 0).all() and (three.noise_strength > 0).all() and three.auroc_low.isna().all()
    assert set(probes.site) == {"answer", "span_mean", "span_last"} and set(probes.features) == {"linear", "norm", "shuffled"}
    assert set(probes.site[probes.task == "which_sentence"]) == {"answer"}  # a span's position would be its label
    assert set(probes.layer) == {0, 1}  # the tiny models' two layers
    assert probes.accuracy.between(0, 1).all() and (probes.accuracy_low <= probes.accuracy).all()
    # strength 0 of perturbed vs clean compares the clean pass with itself: nothing to decode
    baseline = probes[(probes.task == "perturbed") & (probes.level == 0) & (probes.features != "shuffled")]
    assert len(baseline) and (baseline.auroc == 0.5).all()
    mi = pd.read_csv(work / f"results/{model}/mutual_information.csv")
    assert {"nhsic_tx", "nhsic_ty", "nhsic_ty_null_mean", "nhsic_ty_p", "probe_bound_bits"} <= set(mi.columns)
    assert mi.probe_bound_bits.notna().all() and (mi.nhsic_ty_p_adjusted >= mi.nhsic_ty_p).all()
    assert "none_dropout_noise" not in set(mi.task)  # the two-class label kernel
    assert (work / f"results/{model}/represented_vs_reported.csv").exists()
    check_steering(work, model, preset)
    for figure in ("probes_accuracy", "probes_represented_vs_reported", "mi_layers", "steering_dose_response"):
        assert (work / f"paper_figures/{model}/{figure}.png").stat().st_size > 0


def check_steering(work, model, preset):
    """Every vector, control, scale and base run; scale 0 is the one unsteered run of every curve."""
    table = pd.read_csv(work / f"results/{model}/steering.csv")
    scales = preset["probes"]["steering"]["scales"]
    assert len(table) == 2 * 3 * len(scales) * 3 and set(table.scale) == set(scales)
    assert set(table.vector) == {"noise_minus_dropout", "perturbed_minus_clean"}
    assert set(table.kind) == {"mass_mean", "random", "shuffled_labels"} and set(table.base) == {"none", "dropout", "noise"}
    assert set(table.layer) == {1} and (table.n > 0).all() and (table.n_dev > 0).all()
    assert table.frac_noise.between(0, 1).all() and table.logit_diff.notna().all() and (table.unit_norm > 0).all()
    unsteered = table[table.scale == 0]
    assert (unsteered.groupby("base")[["logit_diff", "frac_noise", "nll_per_token"]].nunique() == 1).all().all()
    assert (unsteered.ppl_ratio == 1.0).all() and (unsteered.injected_norm == 0).all()
    steered = table[table.scale != 0]
    assert (steered.groupby(["vector", "scale"]).injected_norm.nunique() == 1).all()  # controls: the vector's norm


def check_dynamics_outputs(work, preset):
    """The trained tiny series: loss falls over training; every checkpoint is in the dynamics table and figure."""
    (series,) = preset["dynamics"]["models"]
    steps = [p["step"] for p in preset["models"][series]["checkpoints"]]
    training = pd.read_csv(work / f"results/{series}/training.csv")
    assert list(training.step) == steps and training.held_out_loss.iloc[-1] < training.held_out_loss.iloc[0]
    assert sorted(p.name for p in (work / f"resources/trained/{series}").iterdir() if not p.name.startswith(".")) == sorted(
        f"step{step}" for step in steps)
    table = pd.read_csv(work / f"results/{series}/dynamics.csv")
    assert sorted(set(table.step)) == steps and set(table.checkpoint) == {f"{series}-step{step}" for step in steps}
    assert {"verbal_accuracy", "probe_accuracy", "nhsic_tx", "nhsic_ty_excess"} == set(table.metric)
    accuracy = table[table.metric.isin(["verbal_accuracy", "probe_accuracy"])]
    assert accuracy.value.between(0, 1).all() and (accuracy.ci_low <= accuracy.value).all()
    loc = pd.read_csv(work / f"results/{series}-step{steps[-1]}/localization.csv")
    small = preset["dynamics"]["localization"]
    assert set(loc.sentence_tokens) == set(small["buckets"]) and set(loc.strength) == {0.0, *small["grid"]["dropout"], *small["grid"]["noise"]}
    assert not (work / f"results/{series}-step{steps[-1]}/zero_shot.csv").exists()
    for ext in ("pdf", "png"):
        assert (work / f"paper_figures/{series}/dynamics.{ext}").stat().st_size > 0


def test_a_models_own_template_is_an_input_of_its_prompts_and_probes(tmp_path):
    """The probes read their labels' option letters from the template the model's prompts were rendered with."""
    paper = yaml.safe_load((ROOT / "config.yaml").read_text())
    own = tmp_path / "own_localization.yaml"
    shutil.copy(ROOT / paper["experiments"]["localization"]["template"], own)
    paper["models"]["qwen32b"]["settings"] = {"localization": {"template": str(own)}}
    paper["probes"]["enabled"] = True
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(paper))
    out = snakemake("-n", "results/qwen32b/probes.csv", "--configfile", str(path)).stdout
    jobs = {block.split(":", 1)[0]: block for block in out.split("\nrule ")[1:]}
    prompt_jobs = [b for b in out.split("\nrule ")[1:] if b.startswith("prompt_set") and "localization.jsonl" in b]
    assert len(prompt_jobs) == 1 and str(own) in prompt_jobs[0]
    assert str(own) in jobs["probes"]
    assert paper["experiments"]["zero_shot"]["template"] in jobs["probes"]  # the other experiments keep theirs
