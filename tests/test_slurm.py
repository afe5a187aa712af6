"""SLURM execution: the cluster profile's GPU requests as sbatch options (no cluster needed), and the tiny preset run
through a real one-node SLURM cluster on localhost, giving the same tables as a local run (the same predictions, the
scores to rounding error).

The real-cluster test is marked `slurm`; it needs root and `apt-get install -y slurm-wlm munge`, and skips
otherwise. It takes about three minutes on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT
from test_workflow import copy_workflow

pytest.importorskip("snakemake_executor_plugin_slurm", reason="snakemake-executor-plugin-slurm is not installed")

PROFILE = ROOT / "profiles/slurm"
TEST_PROFILE = ROOT / "tests/slurm/profile"
RENDER = ROOT / "tests/slurm/render_sbatch.py"
MODELS = yaml.safe_load((ROOT / "config.yaml").read_text())["models"]
SHARD = "results/{model}/shards/localization/0.csv"
# The real-cluster test: presets/ci.yaml on one model and the two localization experiments (12 of its jobs submitted,
# about 3 minutes; with zero_shot and few_shot too, more jobs and about twice the time). The
# preset's extensions (probes, dynamics, density) are off through tests/slurm/extensions_off.yaml (--config passes strings).
TINY_EXPERIMENTS = ["localization", "localization_control"]
TINY_RUN = [
    "--configfile", "presets/ci.yaml", str(ROOT / "tests/slurm/extensions_off.yaml"),
    "--config", f"run={{models: [tiny-llama], experiments: [{', '.join(TINY_EXPERIMENTS)}]}}",
]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


localhost_cluster = _load("localhost_cluster", ROOT / "tests/slurm/localhost_cluster.py")


def render(tmp_path: Path, profile: Path | str, targets: list[str], cli: list[str] = ()) -> dict:
    """{target: {"rule", "resources", "threads", "sbatch", "srun", "local"}}: what the plugin would submit
    (render_sbatch.py)."""
    out = tmp_path / f"render-{len(list(tmp_path.glob('render-*')))}.json"
    cmd = [sys.executable, str(RENDER), str(profile), *targets, "--out", str(out)]
    if cli:
        cmd += ["--cli", *cli]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(out.read_text())


def options(call: str) -> list[str]:
    return call.split()


def gres_alternative() -> dict:
    """The commented `gres alternative` block of profiles/slurm/profile.yaml, uncommented and parsed."""
    text = (PROFILE / "profile.yaml").read_text()
    block = re.search(r"^\s*# >>> gres alternative\n(.*?)^\s*# <<< gres alternative", text, re.S | re.M)
    assert block, "profiles/slurm/profile.yaml lost its '# >>> gres alternative' block"
    uncommented = "\n".join(re.sub(r"^(\s*)# ?", r"\1", line) for line in block.group(1).splitlines())
    return yaml.safe_load(uncommented)


def test_gpu_requests_become_sbatch_gpus_in_one_task(tmp_path):
    targets = [SHARD.format(model=m) for m in ("llama8b", "qwen14b", "qwen32b", "olmo32b")]
    targets += ["results/qwen32b/sentences.csv", "results/qwen32b/prompts/few_shot.jsonl"]
    jobs = render(tmp_path, "profiles/slurm", targets)
    for model in ("llama8b", "qwen14b", "qwen32b", "olmo32b"):
        entry, job = MODELS[model], jobs[SHARD.format(model=model)]
        sbatch, srun = options(job["sbatch"]), options(job["srun"])
        gpus = entry["gpus"]
        assert gpus == (2 if model.endswith("32b") else 1)
        assert f"--gpus={gpus}" in sbatch, job["sbatch"]
        assert not any(o.startswith(("--ntasks-per-gpu", "--ntasks", "--gres")) for o in sbatch), job["sbatch"]
        assert "--cpus-per-gpu=8" in sbatch and not any(o.startswith("--cpus-per-task") for o in sbatch)
        assert sbatch[sbatch.index("-p") + 1] == "gpu"
        assert sbatch[sbatch.index("--mem") + 1] == str(entry["mem_mb"])  # the rule's, attempt 1
        assert sbatch[sbatch.index("-t") + 1] == str(entry["runtime"])
        # inside the allocation: one srun task that gets all the job's GPUs
        assert srun[:2] == ["srun", "-n1"] and f"--gpus={gpus}" in srun, job["srun"]
    for target in ("results/qwen32b/sentences.csv", "results/qwen32b/prompts/few_shot.jsonl"):
        sbatch = options(jobs[target]["sbatch"])
        assert not any("gpu" in o for o in sbatch) and sbatch[sbatch.index("-p") + 1] == "cpu", jobs[target]["sbatch"]
        assert "--ntasks=1" in sbatch and "--cpus-per-task=1" in sbatch


def test_partitions_follow_each_jobs_gpu_request(tmp_path):
    """partitions.yaml, not a partition per rule: the same inference rule goes to the GPU partition for a GPU model
    and to the CPU partition for a CPU model (gpus: 0), with CPUs per task then (no GPU to count CPUs per); a GPU
    request larger than any partition's max_gpu gets no partition of the file (the cluster's default)."""
    overlay = tmp_path / "models.yaml"
    overlay.write_text(yaml.safe_dump({"models": {
        "wide": {"kind": "hf", "repo_id": "org/wide", "revision": "0" * 40, "gpus": 16}}}))
    models = ("qwen14b", "smollm2-135m", "wide")
    table = "results/qwen14b/localization.summary.csv"  # a table job, its memory from its input's size
    jobs = render(tmp_path, "profiles/slurm", [SHARD.format(model=m) for m in models] + [table],
                  cli=["--configfile", "config.yaml", str(overlay)])
    partitions = yaml.safe_load((PROFILE / "partitions.yaml").read_text())["partitions"]
    assert partitions["gpu"]["max_gpu"] < 16 and "max_gpu" not in partitions["cpu"]
    gpu, cpu, wide = (options(jobs[SHARD.format(model=m)]["sbatch"]) for m in models)
    assert gpu[gpu.index("-p") + 1] == "gpu" and "--gpus=1" in gpu
    assert cpu[cpu.index("-p") + 1] == "cpu" and not any("gpu" in o for o in cpu) and "--cpus-per-task=4" in cpu
    assert "-p" not in wide and "--gpus=16" in wide
    assert jobs[table]["resources"]["mem_mb"] == "<TBD>" and "-p <TBD>" in jobs[table]["sbatch"]  # not yet known


def test_probes_and_mutual_information_are_cpu_jobs_sized_from_their_inputs(tmp_path):
    """They load every captured activation (gigabytes for the paper models), so they are submitted as CPU jobs, not
    run on the submit host; their memory follows the activation files, so a dry run, before the capture runs have
    written them, cannot know it yet."""
    overlay = tmp_path / "probes_on.yaml"
    overlay.write_text("probes:\n  enabled: true\n")
    targets = ["results/qwen32b/probes.csv", "results/qwen32b/mutual_information.csv",
               "results/qwen32b/represented_vs_reported.csv"]
    jobs = render(tmp_path, "profiles/slurm", targets, cli=["--configfile", "config.yaml", str(overlay)])
    for target, runtime in zip(targets[:2], (60, 60)):
        job = jobs[target]
        sbatch = options(job["sbatch"])
        assert not job["local"] and sbatch[sbatch.index("-t") + 1] == str(runtime), job["sbatch"]
        assert not any("gpu" in o for o in sbatch) and job["resources"]["mem_mb"] == "<TBD>"
    assert jobs[targets[2]]["local"]  # a join of two small tables stays on the submit host


def test_every_gpu_rule_goes_to_the_gpu_partition_both_ways(tmp_path):
    """The capture runs, steering and density_features ask for GPUs like perturbed_inference: each needs the GPU
    block of set-resources (partition, one task, CPUs per GPU; --gres in the alternative), or it would land on the
    CPU partition with a GPU request."""
    overlay = tmp_path / "extensions_on.yaml"
    overlay.write_text("probes:\n  enabled: true\ndensity:\n  enabled: true\n")
    targets = {"perturbed_inference_capture": "results/qwen32b/shards/localization/0.activations.npz",
               "steering": "results/qwen32b/steering.csv", "density_features": "results/qwen32b/density/features.npz"}
    gres = yaml.safe_load((PROFILE / "profile.yaml").read_text())
    blocks = gres["set-resources"]
    gpu_rules = [rule for rule, block in blocks.items() if block == blocks["perturbed_inference"]]  # the anchor's
    assert set(targets) < set(gpu_rules)
    gres["slurm-partition-config"] = str(PROFILE / "partitions.yaml")  # the copy in tmp_path is not beside it
    blocks.update(dict.fromkeys(gpu_rules, gres_alternative()["perturbed_inference"]))  # the anchor, swapped
    (tmp_path / "gres.yaml").write_text(yaml.safe_dump(gres))
    (tmp_path / "gres_config.yaml").write_text("inference: {gpu_request: gres}\n")
    cli = ["--configfile", "config.yaml", str(overlay)]
    for profile, request, config in (("profiles/slurm", "--gpus=2", []),
                                     (tmp_path / "gres.yaml", "--gres=gpu:2", [str(tmp_path / "gres_config.yaml")])):
        jobs = render(tmp_path, profile, list(targets.values()), cli=cli + config)
        for rule, target in targets.items():
            job = jobs[target]
            sbatch = options(job["sbatch"])
            assert job["rule"] == rule and sbatch[sbatch.index("-p") + 1] == "gpu", job["sbatch"]
            assert request in sbatch and not (request == "--gres=gpu:2" and "--gpus=2" in sbatch), job["sbatch"]


@pytest.mark.parametrize("gres_type", [None, "a100"])
def test_gres_alternative_renders_gres_instead_of_gpus(tmp_path, gres_type):
    """With inference.gpu_request: gres each model's own gpus (config.yaml, or an entry added later) become
    --gres=gpu[:type]:N; a CPU model (gpus: 0) asks no GPU at all."""
    profile = yaml.safe_load((PROFILE / "profile.yaml").read_text())
    profile["set-resources"].update(gres_alternative())
    profile["slurm-partition-config"] = str(PROFILE / "partitions.yaml")
    path = tmp_path / "gres-profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    inference = {"gpu_request": "gres", **({"gres_type": gres_type} if gres_type else {})}
    overlay = tmp_path / "gres_config.yaml"
    overlay.write_text(yaml.safe_dump({"inference": inference, "models": {
        "mistral7b": {"kind": "hf", "repo_id": "mistralai/Mistral-7B-Instruct-v0.3", "revision": "0" * 40, "gpus": 3}}}))
    models = ("llama8b", "qwen32b", "olmo32b", "mistral7b", "smollm2-135m")
    jobs = render(tmp_path, path, [SHARD.format(model=m) for m in models],
                  cli=["--configfile", "config.yaml", str(overlay)])
    for model in models:
        job = jobs[SHARD.format(model=model)]
        sbatch = options(job["sbatch"])
        gpus = {**MODELS, "mistral7b": {"gpus": 3}}[model]["gpus"]
        assert not any(o.startswith(("--gpus", "--ntasks-per-gpu")) for o in sbatch), job["sbatch"]
        if gpus:
            assert f"--gres=gpu:{gres_type + ':' if gres_type else ''}{gpus}" in sbatch, job["sbatch"]
            assert not any(o.startswith("--ntasks") for o in sbatch), job["sbatch"]
        else:
            assert not any(o.startswith("--gres") for o in sbatch), job["sbatch"]
        assert "--cpus-per-task=8" in sbatch and sbatch[sbatch.index("-p") + 1] == ("gpu" if gpus else "cpu")
        # the jobstep's srun asks for no GPU count, so the step gets all the job's GRES (srun's default)
        assert "--gpus" not in job["srun"], job["srun"]


def test_global_profile_would_cap_a_32b_job_at_one_gpu(tmp_path):
    """Why profiles/slurm/README.md says --workflow-profile: with `--profile profiles/slurm`, profiles/default stays
    the workflow profile and its gpu=1 limit caps the request. If this fails, update that README."""
    job = render(tmp_path, "profiles/default", [SHARD.format(model="qwen32b")], cli=["--profile", "profiles/slurm"])
    assert "--gpus=1" in options(next(iter(job.values()))["sbatch"])


def test_test_profile_mirrors_the_cluster_profile():
    cluster = yaml.safe_load((PROFILE / "profile.yaml").read_text())
    test = yaml.safe_load((TEST_PROFILE / "profile.yaml").read_text())
    assert test["executor"] == cluster["executor"] == "slurm"
    assert set(test["set-resources"]) == set(cluster["set-resources"])
    assert test["set-resources"]["perturbed_inference"]["gpu"] == 0 and "slurm_partition" not in str(test)
    assert cluster["slurm-partition-config"] == test["slurm-partition-config"] == "partitions.yaml"
    assert (PROFILE / "partitions.yaml").exists() and (TEST_PROFILE / "partitions.yaml").exists()
    assert test["slurm-status-command"] == "squeue" and test["slurm-no-account"] is True


# ---- a real SLURM cluster ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    reason = localhost_cluster.unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = localhost_cluster.LocalCluster(tmp_path_factory.mktemp("slurm-cluster"))
    cluster.start()
    yield cluster
    left = cluster.stop()
    assert not left, f"daemons still running after teardown: {left}"
    for name in localhost_cluster.DAEMONS:
        if name in cluster.procs:
            assert not localhost_cluster.running_pids(name), f"a {name} process remains"


class Snakemake:
    """`python -m snakemake ARGS` in CWD, in the background, output to CWD/../<name>.log, bounded by
    `timeout -s KILL` (Snakemake under `timeout` ignores SIGTERM)."""

    def __init__(self, cwd: Path, *args: str, limit: int):
        self.cwd, self.start, self.seconds = cwd, time.monotonic(), 0.0
        self.log = cwd.parent / f"{cwd.name}.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                ["timeout", "-s", "KILL", str(limit), sys.executable, "-m", "snakemake", *args],
                cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

    def wait(self) -> Snakemake:
        self.proc.wait()
        self.seconds = time.monotonic() - self.start
        return self

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def failure(self) -> str:
        logs = "".join(
            f"\n--- {path.relative_to(self.cwd)}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.cwd.glob(".snakemake/slurm_logs/**/*.log"))
        )
        return f"rc={self.proc.returncode} after {self.seconds:.0f} s\n{self.output[-10000:]}{logs}"


@pytest.mark.slurm
def test_tiny_preset_through_slurm_matches_local_run(slurm_cluster, tmp_path):
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    for work in (local, cluster):
        work.mkdir()
        copy_workflow(work)
    local_run = Snakemake(local, "--cores", "2", *TINY_RUN, limit=600).wait()
    assert local_run.proc.returncode == 0, local_run.failure()
    slurm_run = Snakemake(cluster, "--workflow-profile", str(TEST_PROFILE), *TINY_RUN, "--verbose", limit=900).wait()
    assert slurm_run.proc.returncode == 0, slurm_run.failure()
    print(f"local run {local_run.seconds:.0f} s, SLURM run {slurm_run.seconds:.0f} s")

    log = slurm_run.output
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    # sentences, 2 prompt sets, 3 inference shards and the table jobs (2 aggregates, 2 summaries, 2 statistics
    # tables, the equivalence map) went through sbatch; the localrules (model folder, strength grid, figures) did not
    calls = [line for line in log.splitlines() if "sbatch call:" in line]
    rules = Counter(re.search(r"--comment '?rule_(\w+?)(?:_wildcards[^'\s]*)?['\s]", c).group(1) for c in calls)
    assert len(submitted) == 13 and rules == {"sentences": 1, "prompt_set": 2, "perturbed_inference": 3, "aggregate": 2,
                                              "summarize": 2, "stats_table": 2, "equivalence_map": 1}, (rules, log[-3000:])
    # the partition is the plugin's choice from the test profile's partitions.yaml (its one partition)
    assert all(re.search(r" -p '?debug'? ", c) for c in calls), calls[:1]
    # each job re-runs Snakemake inside its allocation with this very Python (the venv), not whatever is on PATH
    assert all(f"{sys.executable} -m snakemake" in c for c in calls), calls[:1]
    # a table job asks for table_mem_mb's floor (its tables are small here), not the inference jobs' memory
    assert all("--mem 4000" in c for c in calls if re.search(r"rule_(aggregate|summarize|stats_table|equivalence_map)", c))

    tables = sorted(p.name for p in (local / "results/tiny-llama").glob("*.csv"))
    assert tables == sorted(p.name for p in (cluster / "results/tiny-llama").glob("*.csv"))
    assert tables == sorted(
        ["sentences.csv"] + [f"{e}{suffix}" for e in TINY_EXPERIMENTS for suffix in (".csv", ".summary.csv")]
    )
    # Every discrete column (ids, predictions, correctness) equal; the float columns to float32 rounding. CPU
    # float32 kernels are not bit-reproducible from one process to the next: two local runs of the same job have
    # differed by up to 6e-8 in a logit (about one run in six), and a SLURM job is another process.
    for name in tables:
        a = pd.read_csv(local / "results/tiny-llama" / name)
        b = pd.read_csv(cluster / "results/tiny-llama" / name)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-5, atol=1e-6, obj=name)
