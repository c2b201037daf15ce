"""`resume=false` starts a run fresh once: a re-run of the same submission continues it (issue 10, fault 4).

The real requeues (scontrol requeue, SIGTERM, a node failure) are tested on the local Slurm cluster in
tests/launch/test_slurm.py; here the identity rules and the pipeline's use of them, in one process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsetrain.engine import preemption
from sparsetrain.engine.preemption import Preempted
from sparsetrain.pipeline import run_pipeline
from sparsetrain.submission import ENV, current_submission, is_rerun
from tests.core.conftest import tiny_config

SLURM_VARS = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_STEP_ID", "SLURM_RESTART_COUNT")


@pytest.fixture
def no_scheduler(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (ENV, *SLURM_VARS):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_identity_of_launch_tokens_slurm_jobs_and_plain_runs(no_scheduler: pytest.MonkeyPatch) -> None:
    assert current_submission() is None, "a plain run has no submission: every start is new"
    no_scheduler.setenv("SLURM_JOB_ID", "41")
    no_scheduler.setenv("SLURM_STEP_ID", "0")
    first = current_submission()
    assert first == {"id": "slurm:41.0", "attempt": 0}
    no_scheduler.setenv("SLURM_RESTART_COUNT", "1")
    requeued = current_submission()
    assert is_rerun(first, requeued), "a later attempt of the same job step is a re-run"
    assert not is_rerun(first, first), "the same attempt started again (salloc, a loop in a script) is new"
    assert not is_rerun(first, {"id": "slurm:42.0", "attempt": 1}), "another job is a new submission"
    no_scheduler.setenv("SLURM_ARRAY_JOB_ID", "40")
    no_scheduler.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert current_submission()["id"] == "slurm:40_3.0", "array tasks are told apart"
    no_scheduler.setenv(ENV, "launch:abc")
    token = current_submission()
    assert token == {"id": "launch:abc", "attempt": None}
    assert is_rerun(token, token), "a launch token is kept by the job's requeues only"
    assert not is_rerun(None, token) and not is_rerun(token, {"id": "launch:def", "attempt": None})


def _stop_after_first_step(cfg: object) -> None:
    preemption.request_stop()  # the loop checkpoints after the step it is in and raises
    try:
        with pytest.raises(Preempted):
            run_pipeline(cfg)
    finally:
        preemption.clear()


def _sparsify_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row for row in rows if row.get("phase") == "sparsify" and "loss" in row]


def test_resume_false_continues_its_own_submission_and_restarts_for_a_new_one(
        tmp_path: Path, no_scheduler: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    extra = ("resume=false", "tracking.mode=offline", "train.log_every=1", "phases.sparsify.epochs=0.2",
             "phases.finetune.epochs=0.1")
    no_scheduler.setenv(ENV, "launch:first")
    _stop_after_first_step(tiny_config(out, *extra))
    state = json.loads((out / "state.json").read_text())
    assert state["current"]["step"] == 1 and state["submission"] == {"id": "launch:first", "attempt": None}
    first_row = _sparsify_rows(out)[0]
    run_id = (out / "wandb_run_id.txt").read_text()

    capsys.readouterr()
    run_pipeline(tiny_config(out, *extra))  # the same submission again: a requeue
    err = capsys.readouterr().err
    assert "[sparsify] resuming from checkpoint sparsify-step0000001 at step 1" in err, err[-2000:]
    rows = _sparsify_rows(out)
    assert rows[0] == first_row and [row["step"] for row in rows] == list(range(1, len(rows) + 1)), \
        "the re-run did not continue from its checkpoint"
    assert (out / "wandb_run_id.txt").read_text() == run_id, "a re-run must continue the same W&B run"

    no_scheduler.setenv(ENV, "launch:second")  # a new submission of the same command starts over
    (out / "weights" / "stale.safetensors").write_bytes(b"")
    _stop_after_first_step(tiny_config(out, *extra))
    state = json.loads((out / "state.json").read_text())
    assert state["completed"] == {} and not (out / "weights").exists(), "the previous run's results were kept"
    assert state["submission"]["id"] == "launch:second" and state["current"]["step"] == 1
    assert len(_sparsify_rows(out)) == 1, "the new submission's log continues the old one"
    assert (out / "wandb_run_id.txt").read_text() != run_id, "a new submission must start a new W&B run"
