"""Which submission a run belongs to: `resume=false` starts a run fresh once, and re-runs of that same submission
(a Slurm requeue after preemption, a node failure or `scontrol requeue`, any attempt) continue from its checkpoint.

A cluster re-runs a requeued job from its original submission, which still says `resume=false`; only the identity
of the submission tells a re-run from a new start. It is, in order:

1. `SPARSETRAIN_SUBMISSION`: a token `sparsetrain launch`/`sweep` creates when it submits a job (kept by every
   requeue of that job);
2. Slurm's job id (with array task and step ids) for a `sparsetrain run` started inside an sbatch script: the same
   on every attempt of the job, while `SLURM_RESTART_COUNT` counts the attempts. A re-run is a later attempt, so
   starting `resume=false` twice within one allocation (salloc) still starts fresh twice;
3. none (a plain shell or torchrun): every start is a new submission.

The identity of the submission that last started a run is kept in its `state.json`.
"""

from __future__ import annotations

import os
from typing import Any

ENV = "SPARSETRAIN_SUBMISSION"


def current_submission() -> dict[str, Any] | None:
    """{"id": str, "attempt": int | None} of this process's submission, or None outside any scheduler."""
    token = os.environ.get(ENV)
    if token:
        return {"id": token, "attempt": None}
    env = os.environ
    job = (f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}" if env.get("SLURM_ARRAY_JOB_ID")
           else env.get("SLURM_JOB_ID"))
    if not job:
        return None
    step = env.get("SLURM_STEP_ID")
    return {"id": f"slurm:{job}" + (f".{step}" if step else ""), "attempt": int(env.get("SLURM_RESTART_COUNT", "0"))}


def is_rerun(recorded: dict[str, Any] | None, current: dict[str, Any] | None) -> bool:
    """Whether `current` re-runs the submission that `recorded` (from state.json) started."""
    if not recorded or not current or recorded.get("id") != current["id"]:
        return False
    if current["attempt"] is None:  # a launch token: unique per submission, kept by its requeues
        return True
    return current["attempt"] > int(recorded.get("attempt") or 0)
