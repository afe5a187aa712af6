"""Print the sbatch options the SLURM executor plugin would submit for some jobs, without a cluster.

    python tests/slurm/render_sbatch.py PROFILE TARGET [TARGET ...] [--cli ARG ...]

Loads PROFILE the way `snakemake --workflow-profile PROFILE` does (Snakemake's own CLI parser: profile keys become
--set-resources/--default-resources/--set-threads), builds the DAG for the TARGET files with those settings, lets
Snakemake evaluate each job's resources (rule functions, `attempt`, profile expressions over wildcards), and renders
them with the plugin's own code: `submit_string.get_submit_command` + `utils.set_gres_string` (the sbatch call; the
account is left out: resolving it asks sacctmgr; the partition is the plugin's choice from the profile's
`slurm-partition-config`, `<TBD>` for a job whose resources depend on inputs not yet written) and the jobstep
plugin's `srun` options (what runs inside the allocation). Prints (or writes to --out) JSON: {target: {"rule", "resources", "threads", "sbatch", "srun", "local"}} ("local":
a localrule, which runs on the submit host and is never submitted).
Run it from the workflow's root. Extra Snakemake arguments (e.g. `--configfile x.yaml`, `--profile p`) go after --cli.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from types import SimpleNamespace


# the resources the plugin's partition selection weighs (partitions.Partition.score_job_fit)
SCORED = ("mem_mb", "mem_mb_per_cpu", "runtime", "nodes", "tasks", "tasks_per_node", "mpi_tasks", "gpu", "gres",
          "cpus_per_task", "cpus_per_gpu")


def render(profile: str, targets: list[str], cli: list[str]) -> dict:
    from snakemake.api import SnakemakeApi
    from snakemake.cli import parse_args
    from snakemake.common.tbdstring import TBDString
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import ConfigSettings, DAGSettings, OutputSettings, ResourceSettings
    from snakemake_executor_plugin_slurm import Executor
    from snakemake_executor_plugin_slurm.partitions import read_partition_file
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting, get_gpu_setting, get_node_setting

    _, args = parse_args(["--workflow-profile", profile, "--dry-run", *cli])
    if args.executor != "slurm":
        raise SystemExit(f"{profile}: executor is {args.executor!r}, not slurm")
    resource_settings = ResourceSettings(
        nodes=args.jobs,
        resources=args.resources or {},  # a global limit (e.g. profiles/default's gpu=1) caps job requests
        overwrite_threads=args.set_threads or {},
        overwrite_resources=args.set_resources or {},
        default_resources=args.default_resources,
    )
    config_settings = ConfigSettings(
        configfiles=[Path(f).absolute() for f in args.configfile or []], config=args.config or {}
    )
    out = {}
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow_api = api.workflow(
            resource_settings=resource_settings,
            config_settings=config_settings,
            snakefile=Path("Snakefile").absolute(),
            workdir=Path.cwd(),
        )
        workflow_api.dag(DAGSettings(targets=set(targets)))
        workflow = workflow_api._workflow
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True, nolock=True)
        workflow._build_dag()
        # the profile's partitions (slurm-partition-config) as the plugin reads them; a job without a partition would
        # go to the cluster's default, which only sinfo knows: no -p here
        partitions = getattr(args, "slurm_partition_config", None)
        stub_executor = SimpleNamespace(_partitions=read_partition_file(partitions) if partitions else None,
                                        _fallback_partition="", logger=logging.getLogger(__name__))
        for job in workflow.dag.jobs:
            produced = [str(f) for f in job.output]
            target = next((t for t in targets if t in produced), None)
            if target is None:
                continue
            # a resource from input sizes is unknown before its inputs exist: so is the partition it fits
            unknown = any(isinstance(job.resources.get(name), TBDString) for name in SCORED)
            partition = (" -p <TBD>" if unknown and stub_executor._partitions
                         else Executor.get_partition_arg(stub_executor, job))
            params = {
                "run_uuid": "RUN_UUID",
                "slurm_logfile": ".snakemake/slurm_logs/%j.log",
                "comment_str": f"rule_{job.name}",
                "account": "",
                "partition": partition,
                "workdir": str(Path.cwd()),
            }
            sbatch = get_submit_command(job, params) + set_gres_string(job)
            # inside the allocation the jobstep plugin runs `srun -n1 --cpu-bind=q <these> python -m snakemake ...`;
            # it treats the job as a GPU job when SLURM set SLURM_GPUS, i.e. when sbatch had --gpus
            srun = " ".join(
                s for s in (
                    "srun -n1", get_cpu_setting(job, "--gpus=" in sbatch), get_gpu_setting(job), get_node_setting(job)
                ) if s
            )
            resources = {k: v for k, v in job.resources.items() if not k.startswith("_") and isinstance(v, (int, str))}
            out[target] = {
                "rule": job.name, "resources": resources, "threads": job.threads, "sbatch": sbatch, "srun": srun,
                "local": job.rule.name in workflow._localrules,  # job.is_local: True for any job here (local exec)
            }
    missing = set(targets) - set(out)
    if missing:
        raise SystemExit(f"no job produces {sorted(missing)}")
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile")
    parser.add_argument("targets", nargs="+")
    parser.add_argument("--out", help="write the JSON here instead of stdout")
    parser.add_argument("--cli", nargs=argparse.REMAINDER, default=[])
    ns = parser.parse_args(argv)
    text = json.dumps(render(ns.profile, ns.targets, ns.cli), indent=1)
    if ns.out:
        Path(ns.out).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
