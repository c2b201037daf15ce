"""Checks a submission makes on the submitting machine, before anything is queued: what the job would refuse at its
start from files visible here, with the run's own comparisons (`sparsetrain.rundir`), so that `launch` exits 2 with
the job's line instead of returning 0 and letting the job fail minutes later.

Refused (the run refuses them on any node): an `out_dir` that is an export folder or lies inside another run's
directory, an `out_dir` holding a run whose settings differ in a way its resume refuses (`check_same_run`), and a
`--phase` that starts from the weights of an earlier phase not finished there (`phases_needed_first`). Refused too:
an `out_dir` that another run uses (`check_out_dir_free`): its run lock is held, or names a Slurm job still pending or
running (e.g. requeued after a preemption, waiting to continue there); two jobs in one out_dir mix their files.
Warned about only: a `data.path`, `model.checkpoint` or `model.pretrained_file` this machine does not have (it may
exist on the compute nodes alone).
"""

from __future__ import annotations

from pathlib import Path

from launch.submit import QUEUED_STATES, live_slurm_state
from sparsetrain.config.loader import config_to_dict
from sparsetrain.config.schema import RunConfig
from sparsetrain.engine.checkpoint import STATE_FILE, read_run_state
from sparsetrain.errors import InputError
from sparsetrain.rundir import check_own_out_dir, check_same_run, phases_needed_first
from sparsetrain.runlock import held_by_another, in_use_error, read_holder


def check_before_submission(config: RunConfig, phases: list[str] | None = None) -> None:
    """Refuse a job that would be refused at its start, from what this machine sees of `config.out_dir`.

    Only an out_dir visible here is judged: one that exists on the nodes alone is the job's to check. A resume
    (`resume=true`, the default) of an out_dir holding state.json compares settings and finished phases as the run
    does; `resume=false` starts a new run there, so only `--phase` against an empty run is checked.

    Args:
        config: the resolved config to submit.
        phases: `--phase` values (None: every phase).

    Raises:
        InputError: one line naming `out_dir` (another run or Slurm job in it, `check_out_dir_free`; its stored
            settings that may not change, as the run says them) or `phase` (the phase to run first).
    """
    out_dir = Path(config.out_dir)
    check_own_out_dir(out_dir)
    check_out_dir_free(out_dir)
    resumes = config.resume and (out_dir / STATE_FILE).is_file()
    if resumes:
        check_same_run(out_dir, config_to_dict(config))
    if phases:
        state = read_run_state(out_dir) if resumes else None
        completed = state["completed"] if state else {}
        phases_needed_first(phases, completed, config.phases.sparsify.enabled)


def check_out_dir_free(out_dir: Path) -> None:
    """Refuse an out_dir another run uses: its lock file (`sparsetrain.runlock`) names a Slurm job that is still
    pending or running (`live_job`), or some process holds its lock now (a run on this machine, or on any machine
    sharing the file system). Reads only; a folder without a lock file is free.

    Raises:
        InputError: `out_dir: D has Slurm job J pending in it; wait for it, scancel J, or use another out_dir`, or the
            run's own `out_dir: D is in use by another run (host H, pid P, ...)` line.
    """
    job = live_job(out_dir)
    if job is not None:
        job_id, state = job
        word = "pending" if state in QUEUED_STATES else "running"
        shown = word if state == word.upper() else f"{word} ({state})"
        raise InputError(f"out_dir: {out_dir} has Slurm job {job_id} {shown} in it; wait for it, scancel {job_id}, or "
                         "use another out_dir")
    holder = held_by_another(out_dir)
    if holder is not None:
        raise in_use_error(out_dir, holder)


def live_job(out_dir: Path) -> tuple[str, str] | None:
    """(job id, Slurm state) of the Slurm job out_dir's lock file names when it is still pending or running (a job
    requeued after a preemption runs there again); None without a lock file, without a Slurm job in it, or when
    that job has ended."""
    job_id = (read_holder(out_dir) or {}).get("slurm_job")
    state = None if not job_id else live_slurm_state(str(job_id))
    return None if state is None else (str(job_id), state)


def submission_warnings(config: RunConfig) -> list[str]:
    """What this machine cannot confirm but the nodes may have, one line each naming the field: a `data.path`,
    `model.checkpoint` or `model.pretrained_file` that does not exist here (the job reads it on the nodes; a cluster's
    data and weights often live on node-local or compute-only storage, so it is not refused)."""
    paths = {"data.path": config.data.path, "model.checkpoint": config.model.checkpoint,
             "model.pretrained_file": config.model.pretrained_file}
    return [f"{field}: {path} does not exist on this machine; the job reads it on the compute nodes and fails at its "
            "start if it is not there either" for field, path in paths.items()
            if path is not None and not Path(path).exists()]
