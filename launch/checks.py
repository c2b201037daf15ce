"""Checks a submission makes on the submitting machine, before anything is queued: what the job would refuse at its
start from files visible here, with the run's own comparisons (`sparsetrain.rundir`), so that `launch` exits 2 with
the job's line instead of returning 0 and letting the job fail minutes later.

Refused (the run refuses them on any node): an `out_dir` that is an export folder or lies inside another run's
directory, an `out_dir` holding a run whose settings differ in a way its resume refuses (`check_same_run`), and a
`--phase` that starts from the weights of an earlier phase not finished there (`phases_needed_first`).
Warned about only: a `data.path` this machine does not have (it may exist on the compute nodes alone).
"""

from __future__ import annotations

from pathlib import Path

from sparsetrain.config.loader import config_to_dict
from sparsetrain.config.schema import RunConfig
from sparsetrain.engine.checkpoint import STATE_FILE, read_run_state
from sparsetrain.rundir import check_own_out_dir, check_same_run, phases_needed_first


def check_before_submission(config: RunConfig, phases: list[str] | None = None) -> None:
    """Refuse a job that would be refused at its start, from what this machine sees of `config.out_dir`.

    Only an out_dir visible here is judged: one that exists on the nodes alone is the job's to check. A resume
    (`resume=true`, the default) of an out_dir holding state.json compares settings and finished phases as the run
    does; `resume=false` starts a new run there, so only `--phase` against an empty run is checked.

    Args:
        config: the resolved config to submit.
        phases: `--phase` values (None: every phase).

    Raises:
        InputError: one line naming `out_dir` (its stored settings that may not change, as the run says them) or
            `phase` (the phase to run first).
    """
    out_dir = Path(config.out_dir)
    check_own_out_dir(out_dir)
    resumes = config.resume and (out_dir / STATE_FILE).is_file()
    if resumes:
        check_same_run(out_dir, config_to_dict(config))
    if phases:
        state = read_run_state(out_dir) if resumes else None
        completed = state["completed"] if state else {}
        phases_needed_first(phases, completed, config.phases.sparsify.enabled)


def submission_warnings(config: RunConfig) -> list[str]:
    """What this machine cannot confirm but the nodes may have, one line each naming the field: a `data.path` that
    does not exist here (the job reads it on the nodes; a cluster's data often lives on node-local or compute-only
    storage, so it is not refused)."""
    path = config.data.path
    if path is None or Path(path).exists():
        return []
    return [f"data.path: {path} does not exist on this machine; the job reads it on the compute nodes and fails at "
            "its start if it is not there either"]
