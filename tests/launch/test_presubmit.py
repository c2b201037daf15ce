"""What `sparsetrain launch` checks on the submitting machine before it queues anything (`launch/checks.py`), and
what it only warns about.

Fresh-user trial 22: an out_dir holding a run with other settings (`seed 0 -> 5`) and a `--phase finetune` on an
empty out_dir were refused only inside the job, after `launch` returned 0; a data.path missing here was a plain line
of the dry run and nothing at submission. Real tiny runs on digits, the real local Slurm cluster (held jobs).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launch.submit import FINAL_STATES, slurm_state
from sparsetrain.config.loader import save_resolved
from sparsetrain.pipeline import run_pipeline
from sparsetrain.runlock import RunLock, read_holder
from tests.core.conftest import tiny_config
from tests.launch.cli_runs import launch_in_process

SHORT = ("phases.sparsify.epochs=0.5", "phases.finetune.epochs=0.3")
HELD = 'launch.extra_sbatch=["--hold"]'  # a job the old code would have queued stays held, then is cancelled


def _cancel_submitted(out: str) -> None:
    """Cancel the job a `submitted job N ...` line names (only a refused check leaves none)."""
    match = re.search(r"submitted job (\d+)", out)
    if match:
        subprocess.run(["scancel", match.group(1)], capture_output=True, check=False)


@pytest.fixture
def sparsified(tmp_path: Path) -> Path:
    """An out_dir whose sparsify phase has finished (`--phase sparsify`): seed is fixed, prune has not run."""
    out = tmp_path / "run"
    run_pipeline(tiny_config(out, *SHORT), ["sparsify"])
    return out


def _refused(argv: list[str], out_dir: Path) -> str:
    """Launch (slurm, held) and expect a refusal before submission: exit 2, one `error:` line, no job, no log folder."""
    before = sorted(path.name for path in out_dir.iterdir()) if out_dir.is_dir() else None
    code, out, err = launch_in_process([*argv, "--cluster", "slurm", HELD])
    _cancel_submitted(out)
    assert code == 2 and out == "", out + err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    after = sorted(path.name for path in out_dir.iterdir()) if out_dir.is_dir() else None
    assert after == before, "a refused launch must leave out_dir as it was (no slurm/ folder)"
    return err.strip()


def test_changed_settings_on_an_existing_run_are_refused_before_submission(sparsified: Path) -> None:
    """The same comparison the run makes (`rundir.check_same_run`), the same line; also by --dry-run."""
    stored = sparsified / "config.yaml"
    err = _refused([str(stored), "seed=5"], sparsified)
    assert err == (f"error: out_dir: {sparsified} holds a run with other settings: seed 0 -> 5 (fixed: sparsify has "
                   "run with it); use a new out_dir, or resume=false to start over"), err
    code, out, dry_err = launch_in_process([str(stored), "seed=5", "--dry-run"])
    assert (code, dry_err.strip()) == (2, err), out + dry_err
    # what the resume allows passes: an execution setting, or resume=false (a new run there)
    for allowed in (["train.log_every=7"], ["seed=5", "resume=false"]):
        code, out, dry_err = launch_in_process([str(stored), *allowed, "--dry-run"])
        assert code == 0, dry_err


def test_a_phase_the_run_cannot_start_is_refused_before_submission(sparsified: Path, tmp_path: Path) -> None:
    """`--phase finetune` needs prune's weights: refused on an empty out_dir and on one where only sparsify finished;
    `--phase prune` after sparsify, or `--phase prune --phase finetune`, is accepted."""
    empty = tmp_path / "empty"
    err = _refused([*_config_args(empty), "--phase", "finetune"], empty)
    assert err == ("error: phase: finetune starts from the weights of the prune phase, which has not finished in this "
                   "out_dir; run --phase prune first (or both, or no --phase)"), err
    assert not empty.exists()
    err = _refused([str(sparsified / "config.yaml"), "--phase", "finetune"], sparsified)
    assert err.startswith("error: phase: finetune starts from the weights of the prune phase"), err
    for phases in (["--phase", "prune"], ["--phase", "prune", "--phase", "finetune"]):
        code, out, dry_err = launch_in_process([str(sparsified / "config.yaml"), *phases, "--dry-run"])
        assert code == 0, dry_err


def _config_args(out_dir: Path) -> list[str]:
    """CONFIG of a tiny digits run into `out_dir` (the core tests' TINY settings), written next to it."""
    recipe = out_dir.parent / f"{out_dir.name}.yaml"
    save_resolved(tiny_config(out_dir, *SHORT), recipe)
    return [str(recipe)]


def test_a_dry_run_warns_about_data_missing_here(tmp_path: Path) -> None:
    """The dry run plans from the config when the data is not here, and says so as a `warning:` line (a plain line
    before)."""
    missing = tmp_path / "on-the-nodes"
    code, out, err = launch_in_process([*_config_args(tmp_path / "run"), "data.source=idx", f"data.path={missing}",
                                        "--cluster", "slurm", "--dry-run"])
    assert code == 0, err
    warning = f"warning: data not read here (data.path: IDX folder not found: {missing}); sizes from the config: "
    assert warning in out, out


@pytest.fixture
def held(slurm_cluster: None, tmp_path: Path) -> Iterator[tuple[int, str, str, Path]]:
    """A held `launch` whose data.path exists only 'on the nodes' (not here): (exit code, stdout, stderr, out_dir)."""
    out_dir = tmp_path / "run"
    code, out, err = launch_in_process([*_config_args(out_dir), "data.source=idx",
                                        f"data.path={tmp_path / 'on-the-nodes'}", "--cluster", "slurm", HELD])
    try:
        yield code, out, err, out_dir
    finally:
        _cancel_submitted(out)


@pytest.mark.slurm
def test_launch_warns_about_data_missing_here_and_submits(held: tuple[int, str, str, Path]) -> None:
    """A data.path missing here is a `warning:` line at submission, not a refusal (it may exist on the nodes only);
    a real launch printed nothing about it."""
    code, out, err, out_dir = held
    assert code == 0 and out.startswith("submitted job "), err
    assert (f"warning: data.path: {out_dir.parent / 'on-the-nodes'} does not exist on this machine; the job reads it "
            "on the compute nodes and fails at its start if it is not there either") in err.splitlines(), err


@pytest.fixture
def held_job(slurm_cluster: None, tmp_path: Path) -> Iterator[str]:
    """A real Slurm job, held (`sbatch --hold`): pending until it is cancelled, at the end at the latest."""
    job_id = subprocess.run(["sbatch", "--hold", "--parsable", f"--output={tmp_path / 'held.log'}", "--wrap=true"],
                            capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    try:
        yield job_id
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, check=False)


@pytest.mark.slurm
def test_an_out_dir_another_job_or_run_is_in_is_refused_before_submission(held_job: str, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Trial 22: two jobs ran at once in one out_dir. A launch into an out_dir whose run lock names a Slurm job that is
    still pending or running (a job requeued after a preemption continues there) is refused in one line naming it;
    so is one whose lock a run holds now. Once the job has ended and the lock is free, the launch goes through."""
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    with monkeypatch.context() as env:  # the record a run of that job wrote (the lock is free: the job is pending)
        env.setenv("SLURM_JOB_ID", held_job)
        env.delenv("SLURM_ARRAY_JOB_ID", raising=False)
        lock = RunLock.take(out_dir)
        lock.record()
        lock.release()
    argv = _config_args(out_dir)
    err = _refused(argv, out_dir)
    assert err == (f"error: out_dir: {out_dir} has Slurm job {held_job} pending in it; wait for it, scancel "
                   f"{held_job}, or use another out_dir"), err
    subprocess.run(["scancel", held_job], capture_output=True, check=True)
    deadline = time.monotonic() + 20
    while slurm_state(held_job) not in (*FINAL_STATES, "UNKNOWN") and time.monotonic() < deadline:
        time.sleep(0.2)
    holder = RunLock.take(out_dir)  # a run outside Slurm on this machine holds it now
    try:
        holder.record()
        err = _refused(argv, out_dir)
    finally:
        holder.release()
    assert err == (f"error: out_dir: {out_dir} is in use by another run (host {socket.gethostname()}, pid "
                   f"{os.getpid()}, since {read_holder(out_dir)['since']}); wait for it, stop it, or use another "
                   "out_dir"), err
    code, out, dry_err = launch_in_process([*argv, "--dry-run"])
    assert code == 0, dry_err
