"""`sparsetrain launch --dry-run`: validate the config, show the sbatch script, the world size, the pruning plan
and the per-rank memory plan (`sparsetrain.plan`); submit nothing."""

from __future__ import annotations

from launch.submit import sbatch_script, validate_launch
from sparsetrain.config.schema import RunConfig


def dry_run_report(config: RunConfig, cluster: str) -> str:
    """Everything `--dry-run` prints: sbatch script (Slurm), world size, pruning plan, memory plan.

    Raises:
        LaunchError: invalid launch settings (same checks as a real submission).
        ValueError: the model does not fit the data (one line naming `model.name`).
        ConfigError: a per-layer pruning setting names a layer the model does not have.
    """
    from sparsetrain.plan import plan_report

    validate_launch(config, cluster)
    launch = config.launch
    parts = []
    if cluster == "slurm":
        parts += ["# sbatch script", sbatch_script(config).rstrip(), ""]
    parts.append(f"world size: {launch.world_size} (nodes={launch.nodes} × tasks_per_node={launch.tasks_per_node}"
                 f", gpus_per_node={launch.gpus_per_node})")
    return "\n".join(parts) + "\n" + plan_report(config, launch.world_size)
