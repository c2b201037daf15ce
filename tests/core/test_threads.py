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


def test_a_rank_in_a_slurm_job_says_its_threads_and_warns_when_they_outnumber_its_cpus(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """train.threads=2 on a task given 1 CPU (the trial's oversubscribed job: 10-40x slower steps) is said and warned
    about; the thread count is said whichever setting chose it."""
    import logging

    import torch

    from sparsetrain.config.schema import TrainConfig
    from sparsetrain.pipeline import _say_slurm_threads, configure_cpu

    previous = torch.get_num_threads()
    monkeypatch.setenv("SLURM_JOB_ID", "17")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    _say_slurm_threads.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="sparsetrain"):
            configure_cpu(TrainConfig(threads=2))
            configure_cpu(TrainConfig(threads=2))  # a baseline sub-run: said once
            configure_cpu(TrainConfig())
    finally:
        torch.set_num_threads(previous)
        _say_slurm_threads.cache_clear()
    lines = [record.getMessage() for record in caplog.records]
    assert lines.count("threads: 2 per rank, train.threads") == 1, lines
    assert sum("2 torch threads per rank, but this Slurm job gives each task 1 CPU(s)" in x for x in lines) == 1, lines
    assert "threads: 1 per rank, Slurm's cpus-per-task (train.threads overrides)" in lines, lines
