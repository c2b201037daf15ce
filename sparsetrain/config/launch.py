"""The `launch:` config section: cluster resources for submitit (Slurm) jobs.

World size = nodes × tasks_per_node: one task is one DeepSpeed data-parallel rank. GPU rule: with
`gpus_per_node > 0`, `tasks_per_node` must divide `gpus_per_node`; each rank then sees its own
`gpus_per_node // tasks_per_node` GPUs (one per rank is the usual DeepSpeed layout).
"""

from __future__ import annotations

import re

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from sparsetrain.config.numbers import NumbersModel
from sparsetrain.paths import absolute_path

MAX_TIME_MIN = 525_600  # a year, as deepspeed.timeout_min (Slurm takes any count; more is a typo, not a plan)
MAX_MEM_GB = 65_536  # GB per node: above the largest shared-memory nodes built (48 TB), far below overflow
MAX_GPU_MEM_GB = 1024  # GiB per device: over 3x the largest GPU memory sold (288 GB: B300, MI355X); more is a typo
_SBATCH_LINE = re.compile(r"^(#SBATCH\s+)?--(?P<key>[A-Za-z][A-Za-z0-9_-]*)(=(?P<value>.+))?$")


class LaunchConfig(NumbersModel):
    """Resources of one Slurm job (or job-array element); ignored by local runs."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    nodes: int = Field(1, ge=1, description="Number of nodes.")
    tasks_per_node: int = Field(1, ge=1, description="Processes (DeepSpeed ranks) per node.")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per node (0 = CPU job); tasks_per_node must divide it.")
    cpus_per_task: int = Field(1, ge=1, description="CPU cores per task.")
    mem_gb: float | None = Field(None, gt=0, le=MAX_MEM_GB, description="Memory per node in GB (None = cluster "
                                 "default; at most 65536, above any node built; sinfo then checks it against "
                                 "the partition's nodes).")
    time_min: int = Field(60, ge=1, le=MAX_TIME_MIN, description="Wall-time limit in minutes (at most 525600, a "
                          "year, as deepspeed.timeout_min).")
    partition: str | None = Field(None, description="Slurm partition (checked against `sinfo` before submission).")
    account: str | None = Field(None, description="Slurm account.")
    qos: str | None = Field(None, description="Slurm QOS.")
    constraint: str | None = Field(None, description="Slurm node constraint.")
    extra_sbatch: list[str] = Field(default_factory=list, description="Extra sbatch options, one per item, as "
                                    "'--key=value', '--flag' or a full '#SBATCH --key=value' line.")
    setup: list[str] = Field(default_factory=list, description="Shell commands run in the sbatch script before srun "
                             "(module loads, environment activation).")
    log_folder: str | None = Field(None, description="submitit log folder, on a shared file system "
                                   "(default: <out_dir>/slurm; never /tmp).")
    job_name: str | None = Field(None, description="Slurm job name (default: '<out_dir name>-sparsetrain', the "
                                 "out_dir's name first: squeue's NAME column shows 8 characters).")
    signal_delay_s: int = Field(120, ge=10, description="Slurm sends USR2 this many seconds before the time limit, "
                                "leaving time to reach the next step and write a checkpoint.")
    max_num_timeout: int = Field(3, ge=0, description="How many times a job hitting its time limit is requeued "
                                 "(preemptions do not count).")
    array_parallelism: int = Field(16, ge=1, description="Sweeps: job-array elements running at the same time.")
    gpu_mem_gb: float | None = Field(None, gt=0, le=MAX_GPU_MEM_GB, description="GPU memory per device in GiB "
                                     "(2^30 bytes: nvidia-smi's MiB / 1024, e.g. 80 for an 80 GB A100; at most 1024, "
                                     "over 3x the largest GPU memory sold): the dry run's memory plan (in GiB) warns "
                                     "when a rank would need more (None = no check).")
    srun_args: list[str] = Field(default_factory=list, description="Extra arguments for the srun that starts tasks.")

    @field_validator("log_folder")
    @classmethod
    def _absolute(cls, path: str | None) -> str | None:
        """Relative to the current directory, stored absolute (`sparsetrain.paths`)."""
        return absolute_path(path) if path is not None else None

    @field_validator("extra_sbatch")
    @classmethod
    def _check_extra_sbatch(cls, lines: list[str]) -> list[str]:
        for line in lines:
            if not _SBATCH_LINE.match(line.strip()):
                raise ValueError(f"launch.extra_sbatch: expected '--key=value' or '#SBATCH --key=value', got {line!r}")
        return lines

    @field_validator("gpus_per_node")
    @classmethod
    def _check_gpus(cls, gpus: int, info: ValidationInfo) -> int:
        tasks = info.data.get("tasks_per_node", 1)
        if gpus and gpus % tasks:
            raise ValueError(f"launch.gpus_per_node: {gpus} GPU{'s' * (gpus != 1)} cannot be split over "
                             f"tasks_per_node={tasks} (nodes={info.data.get('nodes')}, tasks_per_node={tasks}, "
                             f"gpus_per_node={gpus}); use one task per GPU")
        return gpus

    @property
    def world_size(self) -> int:
        """Number of ranks of the job: nodes × tasks_per_node."""
        return self.nodes * self.tasks_per_node

    def extra_sbatch_parameters(self) -> dict[str, str | bool]:
        """`extra_sbatch` as submitit's `additional_parameters` ({'mail_type': 'END', 'exclusive': True})."""
        params: dict[str, str | bool] = {}
        for line in self.extra_sbatch:
            match = _SBATCH_LINE.match(line.strip())
            assert match is not None  # checked by the validator
            key = match.group("key").replace("-", "_")
            params[key] = match.group("value") if match.group("value") is not None else True
        return params
