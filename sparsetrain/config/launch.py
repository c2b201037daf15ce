"""The `launch:` config section: cluster resources for submitit (Slurm) jobs."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LaunchConfig(BaseModel):
    """Resources of one Slurm job (or job-array element); ignored by local runs."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    nodes: int = Field(1, ge=1, description="Number of nodes.")
    tasks_per_node: int = Field(1, ge=1, description="Processes (DeepSpeed ranks) per node.")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per node (0 = CPU job).")
    cpus_per_task: int = Field(1, ge=1, description="CPU cores per task.")
    mem_gb: float | None = Field(None, gt=0, description="Memory per node in GB (None = cluster default).")
    time_min: int = Field(60, ge=1, description="Wall-time limit in minutes.")
    partition: str | None = Field(None, description="Slurm partition.")
    account: str | None = Field(None, description="Slurm account.")
    qos: str | None = Field(None, description="Slurm QOS.")
    constraint: str | None = Field(None, description="Slurm node constraint.")
    extra_sbatch: list[str] = Field(default_factory=list, description="Extra raw '#SBATCH' option lines.")
    setup: list[str] = Field(default_factory=list, description="Shell commands run before the tasks start.")
    log_folder: str | None = Field(None, description="submitit log folder (default: <out_dir>/slurm).")
