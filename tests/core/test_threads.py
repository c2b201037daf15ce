"""A rank's torch threads when `train.threads` is unset: Slurm's cpus-per-task inside a Slurm job (the real Slurm
runs in tests/launch/test_slurm.py log it), torch's default elsewhere or when OMP_NUM_THREADS is set."""

from __future__ import annotations

import pytest

from sparsetrain.pipeline import default_threads

JOB = {"SLURM_JOB_ID": "17", "SLURM_CPUS_PER_TASK": "3"}


@pytest.mark.parametrize(("env", "expected"), [
    (JOB, 3),
    ({**JOB, "OMP_NUM_THREADS": "2"}, None),  # the user's (or torchrun's) setting, which torch reads itself
    ({"SLURM_CPUS_PER_TASK": "3"}, None),  # a leftover variable outside a job
    ({"SLURM_JOB_ID": "17"}, None),  # a job submitted without --cpus-per-task
    ({**JOB, "SLURM_CPUS_PER_TASK": "2(x3)"}, None),  # not a plain count: torch's default
    ({}, None),
])
def test_default_threads_follow_slurms_cpus_per_task(env: dict[str, str], expected: int | None) -> None:
    assert default_threads(env) == expected
