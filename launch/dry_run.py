"""`sparsetrain launch --dry-run`: validate the config, show the sbatch script, the world size, the pruning plan
and the per-rank memory plan (`sparsetrain.plan`); submit nothing."""

from __future__ import annotations

from launch.submit import cluster_fit_problems, launch_warnings, sbatch_script, validate_launch
from sparsetrain.config.schema import RunConfig


def dry_run_report(config: RunConfig, cluster: str) -> str:
    """Everything `--dry-run` prints: sbatch script (Slurm), world size, pruning plan, memory plan.

    What this Slurm cluster could never run (`cluster_fit_problems`: partition, nodes, CPUs, memory and GPUs per node)
    is a warning line, not an error: a dry run may plan a job for a larger cluster. So is what the job would run
    badly (`launch_warnings`: train.threads above launch.cpus_per_task), as at submission.

    Raises:
        LaunchError: invalid launch settings (a real submission's checks, but the cluster's fit).
        ValueError: the model does not fit the data (one line naming `model.name`).
        ConfigError: a per-layer pruning setting names a layer the model does not have.
    """
    from sparsetrain.plan import plan_report

    validate_launch(config, cluster, fit=False)  # a plan may be for another cluster than this one: warnings below
    launch = config.launch
    parts = []
    if cluster == "slurm":
        parts += ["# sbatch script", sbatch_script(config).rstrip(), ""]
        parts += [f"warning: this cluster cannot run it as it is (a submission here is refused): {problem}"
                  for problem in cluster_fit_problems(config)]
    parts += [f"warning: {warning}" for warning in launch_warnings(config, cluster)]
    parts.append(f"world size: {launch.world_size} (nodes={launch.nodes} × tasks_per_node={launch.tasks_per_node}"
                 f", gpus_per_node={launch.gpus_per_node})")
    return "\n".join(parts) + "\n" + plan_report(config, launch.world_size)
