"""On the local Slurm cluster: 2-rank launch equals a plain 2-process run, preemption resumes exactly, sweeps.

Timeline on 2 CPU cores: a 2-process reference run, one Slurm run, one preempted Slurm run, a 4-point sweep.
Slurm delays the restart of a requeued job by two minutes (BeginTime); tests release it at once with
`scontrol update JobId=... StartTime=now` (a production cluster just waits).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from launch.cli import launch_main, sweep_main
from launch.dry_run import dry_run_report
from launch.submit import FINAL_STATES, LaunchError, slurm_state, submit, wait_result
from sparsetrain.config.loader import load_config
from tests.helpers.wandb_log import assert_wandb_matches_metrics, read_runs

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.timeout(1800)]  # may queue behind other jobs

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
# ~55 optimizer steps: long enough to interrupt mid-phase, short enough for 2 cores.
TINY = ["phases.dense.epochs=0.5", "phases.sparsify.epochs=1.5", "phases.finetune.epochs=0.5",
        "train.log_every=1", "train.checkpoint_every=10", "launch.time_min=20", "launch.cpus_per_task=1",
        "deploy.latency=false",  # the export (rank 0 while rank 1 waits) stays on; latency has its own tests
        "tracking.mode=disabled"]  # quickstart's offline W&B (~2-3 s a run): the tests that read W&B turn it on
# The runs the tests interrupt mid-sparsify (and their uninterrupted references): 330 sparsify steps, so that a
# signal sent ~0.5 s after the test sees step 5 or 15 still lands inside the phase on a machine several times
# faster than CI's 2 cores, where two 1-thread ranks make ~100 steps/s (the 33-step TINY phase ended first).
INTERRUPTED = [*TINY, "phases.sparsify.epochs=15"]
TWO_RANKS = [*INTERRUPTED, "launch.tasks_per_node=2"]
# The uninterrupted references (local_reference, slurm_run) are compared by weights, report and step log only: no
# ONNX / torch.export files, accuracy curve nor plots (~5 s of rank 0 each, while rank 1 waits); the interrupted
# 2-rank Slurm runs compared with them still export (TINY).
REFERENCE = ["deploy.formats=[]", "report.accuracy_curve=false", "report.plots=false"]
ATOL, RTOL = 1e-5, 1e-4


def _cancel_jobs_of(out_dir: Path) -> None:
    """Cancel the jobs this test submitted (those with files in its own log folder) if any still run or wait."""
    ids = {path.name.split("_submitted.pkl")[0].split("_")[0] for path in (out_dir / "slurm").glob("*_submitted.pkl")}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], capture_output=True, check=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _final_weights(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out_dir / "weights" / "finetune.safetensors"))


def _assert_same_weights(actual: Path, expected: Path) -> None:
    got, want = _final_weights(actual), _final_weights(expected)
    assert got.keys() == want.keys()
    for name in want:
        diff = (got[name] - want[name]).abs().max().item()
        assert torch.allclose(got[name], want[name], atol=ATOL, rtol=RTOL), f"{name}: max |diff| {diff:.3g}"


def _training_steps(out_dir: Path) -> list[int]:
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [line["global_step"] for line in lines if "step" in line and "event" not in line]


def _run_two_local_processes(out_dir: Path) -> None:
    """The reference: two plain processes with torch's env:// variables, no submitit, no Slurm."""
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1")  # one thread, as a Slurm rank given one CPU runs
        command = [sys.executable, "-m", "sparsetrain.cli", "run", str(QUICKSTART), *INTERRUPTED, *REFERENCE,
                   f"out_dir={out_dir}"]
        procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    for rank, (proc, output) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"local rank {rank} failed:\n{output[-3000:]}"


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("local2") / "run"
    _run_two_local_processes(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("slurm2") / "run"
    try:
        code = launch_main([str(QUICKSTART), "--cluster", "slurm", "--wait", "--timeout", "800", *TWO_RANKS,
                            *REFERENCE, f"out_dir={out_dir}"])
    finally:
        _cancel_jobs_of(out_dir)
    assert code == 0, f"launch failed; logs in {out_dir / 'slurm'}"
    return out_dir


def test_slurm_two_ranks_equals_local_two_process_run(slurm_run: Path, local_reference: Path) -> None:
    report = json.loads((slurm_run / "report.json").read_text())
    reference = json.loads((local_reference / "report.json").read_text())
    assert report["world_size"] == 2
    _assert_same_weights(slurm_run, local_reference)
    assert report["phases"]["finetune"]["metric"] == pytest.approx(reference["phases"]["finetune"]["metric"], abs=0.5)
    assert report["sparsity"] == pytest.approx(reference["sparsity"], abs=1e-3)


def _wait_for_step(out_dir: Path, job_id: str, phase: str, step: int, timeout_s: float = 300) -> None:
    """Wait until the step log shows `phase` at `step`; time spent pending behind other jobs does not count."""
    metrics = out_dir / "metrics.jsonl"
    waited, last = 0.0, time.monotonic()
    while waited < timeout_s:
        now = time.monotonic()
        if slurm_state(job_id) == "RUNNING":
            waited += now - last
        last = now
        if metrics.exists():
            lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
            if any(line.get("phase") == phase and line.get("step", 0) >= step for line in lines):
                return
        state = slurm_state(job_id)
        assert state not in FINAL_STATES, f"job {job_id} ended ({state}) before {phase} step {step}"
        time.sleep(0.2)
    pytest.fail(f"job {job_id} did not reach {phase} step {step} in {timeout_s}s of running")


def _job_info(job_id: str) -> str:
    return subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout


def _restarts(info: str) -> int:
    return int(re.search(r"\bRestarts=(\d+)", info).group(1))


def _start_requeued_now(job_id: str, restarts: int = 1, timeout_s: float = 600) -> None:
    """Start a requeued job now instead of after Slurm's 2-minute BeginTime (a production cluster just waits);
    `restarts`: the job's requeue count once this requeue is made (1 for its first).

    Release it only once it is plainly PENDING (no longer COMPLETING: its old processes are gone and the node has
    revoked the old run's credential), and only after the clock has moved past that second: a launch in the same
    second as the revocation is refused ("Job credential revoked") and the job ends FAILED. A job can stay
    COMPLETING for minutes while its processes finish a checkpoint on a loaded machine.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = _job_info(job_id)
        state = next((word.split("=", 1)[1] for word in info.split() if word.startswith("JobState=")), "UNKNOWN")
        restarted = _restarts(info) >= restarts
        if restarted and state == "RUNNING":
            return
        assert state not in FINAL_STATES, f"job {job_id} ended ({state}) instead of running again: {info}"
        if restarted and state == "PENDING":
            time.sleep(2.0)
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
            _wait_until_running(job_id, deadline)
            return
        time.sleep(0.2)
    pytest.fail(f"job {job_id} was not requeued within {timeout_s}s: {_job_info(job_id)}")


def _wait_until_running(job_id: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        state = slurm_state(job_id)
        if state == "RUNNING":
            return
        assert state not in FINAL_STATES, f"released job {job_id} ended ({state}): {_job_info(job_id)}"
        time.sleep(0.2)
    pytest.fail(f"released job {job_id} did not start: {_job_info(job_id)}")


# A job interrupted several times in sequence: each interruption after the first lands this many sparsify steps
# after the step its attempt resumed at, past the attempt's first periodic checkpoint (train.checkpoint_every=10,
# written before the next step is logged), so that a re-run which continues from its own attempt's checkpoint
# resumes later than the attempt before it. Three interruptions end by sparsify step ~200 of 330 even where a signal
# lands ~50 steps after the test saw its step (see INTERRUPTED).
AFTER_RESUME = 15
RESUMED = re.compile(r"\[sparsify\] resuming from checkpoint sparsify-step\d+ at step (\d+)")


def _resumed_steps(log: str) -> list[int]:
    """The sparsify steps at which the re-runs in rank 0's log resumed, in order."""
    return [int(step) for step in RESUMED.findall(log)]


def _wait_for_resume(log: Path, job_id: str, count: int, timeout_s: float = 600) -> int:
    """The step at which the job's `count`-th re-run resumed sparsify, once rank 0's log says so. By then that
    re-run has cut metrics.jsonl back to the step, so `_wait_for_step` sees only its own steps."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        steps = _resumed_steps(log.read_text()) if log.exists() else []
        if len(steps) >= count:
            return steps[count - 1]
        state = slurm_state(job_id)
        assert state not in FINAL_STATES, f"job {job_id} ended ({state}) before re-run {count} resumed"
        time.sleep(0.2)
    pytest.fail(f"job {job_id}: re-run {count} did not resume within {timeout_s}s: {_job_info(job_id)}")


def _interrupt_in_sequence(job: Any, out_dir: Path, interrupts: list[Callable[[], None]], first_step: int) -> list[int]:
    """Interrupt the running 2-rank `job` once per item of `interrupts` (each makes the job requeue), the first at
    sparsify step `first_step`, each later one AFTER_RESUME steps after its attempt resumed; every requeued attempt
    is started at once. Returns the sparsify steps at which the re-runs resumed, in order."""
    step, resumed = first_step, []
    for count, interrupt in enumerate(interrupts, 1):
        _wait_for_step(out_dir, job.job_id, "sparsify", step)
        interrupt()
        _start_requeued_now(job.job_id, restarts=count)
        resumed.append(_wait_for_resume(job.task(0).paths.stderr, job.job_id, count))
        step = resumed[-1] + AFTER_RESUME
    return resumed


def _assert_each_rerun_continued_from_its_own_attempt(resumed: list[int], first_step: int) -> None:
    """Every re-run resumed past the step where the attempt before it was first seen running: the first past
    `first_step`, each later one past where its predecessor resumed. None started over or continued from an earlier
    attempt's checkpoint."""
    bounds = [first_step, *resumed[:-1]]
    assert all(step > bound for step, bound in zip(resumed, bounds, strict=True)), \
        f"re-runs resumed at sparsify steps {resumed}: not each from a checkpoint of the attempt before it"


@pytest.mark.parametrize(
    "signals",
    [
        # Time limit: Slurm sends USR2 `signal_delay_s` before the end; W&B keeps running. Then preemption as
        # submitit models it: SIGTERM to every process of the step, then USR2. SIGTERM also stops W&B's service
        # process; the requeued job sends W&B the steps it missed.
        pytest.param(("USR2", "TERM+USR2"), id="time-limit-then-preemption"),
    ],
)
def test_interrupted_job_requeues_and_resumes_without_lost_or_repeated_steps(
        signals: tuple[str, ...], slurm_run: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """One job interrupted once per kind in `signals`, in sequence; every requeued attempt resumes from the
    checkpoint its predecessor saved when it stopped (at the step after the signal), the first mid-phase between two
    periodic checkpoints."""
    out_dir = tmp_path_factory.mktemp("preempt") / "run"
    config = load_config(QUICKSTART, [*TWO_RANKS, f"out_dir={out_dir}", "tracking.mode=offline"])
    job = submit(config, "slurm")
    interrupts = [lambda timeout=kind == "USR2": job._interrupt(timeout=timeout) for kind in signals]
    try:
        resumed = _interrupt_in_sequence(job, out_dir, interrupts, first_step=5)
        report = wait_result(job, timeout_s=800)
    finally:
        _cancel_jobs_of(out_dir)

    log = job.task(0).paths.stderr.read_text()
    assert log.count("Requeued job") == len(signals) and log.count("starting in") == len(signals) + 1, \
        "expected one requeue and one more start per interruption"
    assert _resumed_steps(log) == resumed and len(resumed) == len(signals), log[-3000:]
    _assert_each_rerun_continued_from_its_own_attempt(resumed, first_step=5)
    assert report["world_size"] == 2
    _assert_same_weights(out_dir, slurm_run)
    _assert_steps_as_uninterrupted(out_dir, slurm_run, segments=len(signals) + 1)


def _assert_one_wandb_run_across_requeue(out_dir: Path, segments: int = 2) -> None:
    """`segments` offline W&B segments (one per attempt: before/after each requeue) of one run id, together holding
    every step of the step log exactly once with its values.

    SIGTERM kills W&B's service before it flushes, so an interrupted segment's file may lack even its run record;
    its directory name (`offline-run-<time>-<id>`) still carries the id.
    """
    run_id = (out_dir / "wandb_run_id.txt").read_text().strip()
    folders = sorted(path.name for path in (out_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == segments and all(name.endswith(f"-{run_id}") for name in folders), (run_id, folders)
    runs = read_runs(out_dir)
    assert runs[-1]["run_id"] == run_id, f"resumed W&B run has id {runs[-1]['run_id']}, expected {run_id}"
    assert_wandb_matches_metrics(out_dir)


# ---- requeues made by the cluster re-run the original submission (resume=false): issue 10, fault 4 ----------------

def _wait_until_ended(job_id: str, timeout_s: float = 300) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = slurm_state(job_id)
        if state in FINAL_STATES:
            return state
        time.sleep(0.2)
    pytest.fail(f"job {job_id} did not end within {timeout_s}s of being signalled")


def _assert_steps_as_uninterrupted(out_dir: Path, reference: Path, segments: int = 2) -> None:
    """The step log of a requeued run has no gap or repeat, equals the uninterrupted run's, and W&B holds it
    in `segments` segments of one run (one per attempt)."""
    steps = _training_steps(out_dir)
    assert steps == list(range(1, len(steps) + 1)), "step log has repeated or skipped steps"
    assert steps == _training_steps(reference), "step log differs from the uninterrupted run"
    _assert_one_wandb_run_across_requeue(out_dir, segments)


def _requeue_by_cluster(job_id: str, how: str) -> None:
    """What a cluster does to a running job that it re-runs later from the original submission (the requeued job
    then waits for Slurm's BeginTime: `_start_requeued_now`)."""
    if how == "scontrol-requeue":  # Slurm sends SIGTERM to the job's processes, then requeues it
        subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)
    else:  # preemption (SIGTERM) or a node failure (SIGKILL of everything), then the job is requeued
        signal_name = {"sigterm": "TERM", "node-failure": "KILL"}[how]
        extra = ["--full"] if how == "node-failure" else []
        subprocess.run(["scancel", f"--signal={signal_name}", *extra, job_id], check=True, capture_output=True)
        _wait_until_ended(job_id)
        subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)


@pytest.mark.parametrize("hows", [pytest.param(("scontrol-requeue", "sigterm", "node-failure"),
                                               id="scontrol-requeue-then-sigterm-then-node-failure")])
def test_resume_false_job_requeued_by_the_cluster_continues_from_its_checkpoint(
        hows: tuple[str, ...], slurm_run: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A `resume=false` submission re-run by Slurm (same job, later attempts) must not start over: one job requeued
    once per kind in `hows`, in sequence, the first past the sparsify step-10 checkpoint; every re-run continues
    from a checkpoint of the attempt before it (SIGTERM: the one it saved at its next step; SIGKILL: its last
    periodic one)."""
    out_dir = tmp_path_factory.mktemp("requeue") / "run"
    config = load_config(QUICKSTART, [*TWO_RANKS, f"out_dir={out_dir}", "tracking.mode=offline", "resume=false"])
    job = submit(config, "slurm")
    interrupts = [lambda how=how: _requeue_by_cluster(job.job_id, how) for how in hows]
    try:
        resumed = _interrupt_in_sequence(job, out_dir, interrupts, first_step=15)
        report = wait_result(job, timeout_s=800)
    finally:
        _cancel_jobs_of(out_dir)

    log = job.task(0).paths.stderr.read_text()
    assert log.count("starting in") == len(hows) + 1, "expected one more start of the same job per requeue"
    assert log.count("re-runs submission launch:") == len(hows) and _resumed_steps(log) == resumed \
        and len(resumed) == len(hows), f"not every re-run continued from its own checkpoint:\n{log[-3000:]}"
    _assert_each_rerun_continued_from_its_own_attempt(resumed, first_step=15)
    assert report["world_size"] == 2
    _assert_same_weights(out_dir, slurm_run)
    _assert_steps_as_uninterrupted(out_dir, slurm_run, segments=len(hows) + 1)


def _planned_steps(log: str) -> int:
    """Total optimizer steps the run plans, from its progress lines (`[phase] step k/T ...`)."""
    totals = dict(re.findall(r"\[(\w+)\] step \d+/(\d+) ", log))
    assert set(totals) == {"dense", "sparsify", "finetune"}, totals
    return sum(int(total) for total in totals.values())


# The single-process sbatch job trains ~300 steps/s on a quiet machine: a sparsify phase of ~2,200 steps (~7 s)
# keeps the requeue's SIGTERM inside training however fast the machine (the 55-step TINY run can end before it).
SBATCH_RUN = [*TINY, "phases.sparsify.epochs=100", "train.checkpoint_every=50"]


def test_sbatch_cli_run_with_resume_false_continues_after_scontrol_requeue(
        slurm_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A plain `sparsetrain run ... resume=false` in a user's sbatch script: the job id tells a requeue from a new
    submission. SIGTERM makes the run checkpoint at its next step before the requeue."""
    out_dir = tmp_path_factory.mktemp("sbatch-cli") / "run"
    out_dir.mkdir(parents=True)
    command = " ".join([sys.executable, "-m", "sparsetrain", "run", str(QUICKSTART), *SBATCH_RUN,
                        f"out_dir={out_dir}", "tracking.mode=offline", "resume=false"])
    result = subprocess.run(["sbatch", "--parsable", "--requeue", "--open-mode=append", "-n", "1", "-c", "1",
                             f"--output={out_dir / 'job.log'}", f"--chdir={REPO}", "--time=20",
                             f"--wrap=srun {command}"], capture_output=True, text=True, check=True)
    job_id = result.stdout.strip().split(";")[0]
    try:
        _wait_for_step(out_dir, job_id, "sparsify", 60)  # past the sparsify step-50 checkpoint
        _requeue_by_cluster(job_id, "scontrol-requeue")
        _start_requeued_now(job_id)
        deadline = time.monotonic() + 800
        while slurm_state(job_id) not in FINAL_STATES and time.monotonic() < deadline:
            time.sleep(1)
        assert slurm_state(job_id) == "COMPLETED", (out_dir / "job.log").read_text()[-3000:]
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, check=False)
    log = (out_dir / "job.log").read_text()
    assert f"re-runs submission slurm:{job_id}" in log, log[-3000:]
    assert log.count("threads: 1 per rank, Slurm's cpus-per-task") == 2, "not one torch thread per CPU given (-c 1)"
    assert re.search(r"preempted: stopped with a checkpoint at sparsify step \d+; a requeued Slurm job continues from "
                     r"it, or resume with `", log), log[-3000:]
    assert re.search(r"\[sparsify\] resuming from checkpoint sparsify-step\d+", log), log[-3000:]
    steps = _training_steps(out_dir)
    assert steps == list(range(1, _planned_steps(log) + 1)), "step log has repeated, skipped or missing steps"
    _assert_one_wandb_run_across_requeue(out_dir)


def test_sweep_of_four_points_writes_summary_and_pareto_plot(slurm_cluster: None, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "sweep"
    # the sweep reads each point's sparsity and metric: no ONNX / torch.export files nor accuracy curve (~5 s a point;
    # a Slurm run's export is the interrupted 2-rank runs')
    unread = ["deploy.formats=[]", "report.accuracy_curve=false"]
    try:
        code = sweep_main([str(QUICKSTART), "alpha0=1e-4,4e-4", "beta=10,30", *TINY, *unread, "--cluster", "slurm",
                           "--wait", "--timeout", "800", f"out_dir={base}"])
    finally:
        _cancel_jobs_of(base)
    assert code == 0, f"sweep failed; logs in {base / 'slurm'}"
    table = capsys.readouterr().out.splitlines()[1:]  # after the `submitted 4 runs` line: a table, not JSON
    assert table[0].split() == ["point", "state", "job", "sparsity", "compression", "metric", "pareto"], table
    assert [row.split()[1] for row in table[1:5]] == ["done"] * 4, table
    assert table[5].startswith("sparsity of prunable weights (conv/linear); compression over all parameters"), table
    assert table[6] == f"wrote {base / 'sweep.json'} (every run, JSON) and {base / 'sweep_pareto.png'}", table
    summary = json.loads((base / "sweep.json").read_text())
    runs = summary["runs"]
    assert [run["status"] for run in runs] == ["done"] * 4
    assert len({run["out_dir"] for run in runs}) == 4
    assert all(0 < run["sparsity"] < 1 and run["metric"] > 50 for run in runs), runs
    assert all(run["compression"] == run["compression_ratio"] > 1 for run in runs), runs
    assert any(run["pareto"] for run in runs)
    assert (base / "sweep_pareto.png").stat().st_size > 1000


def test_unknown_partition_and_impossible_node_count_fail_before_submission(slurm_cluster: None) -> None:
    with pytest.raises(LaunchError, match=r"^launch.partition: unknown partition 'nope'"):
        submit(load_config(QUICKSTART, ["launch.partition=nope"]), "slurm")
    with pytest.raises(LaunchError, match=r"^launch.nodes: 64 nodes requested"):
        submit(load_config(QUICKSTART, ["launch.nodes=64"]), "slurm")
    # sbatch accepted 64 CPUs per task on these nodes and left the job pending forever (reason PartitionConfig)
    with pytest.raises(LaunchError, match=r"^launch.cpus_per_task: tasks_per_node 2 × cpus_per_task 64 = 128 CPUs "
                                          r"per node, but the nodes of partition '\w+' have at most \d+ \(sinfo\)"):
        submit(load_config(QUICKSTART, ["launch.tasks_per_node=2", "launch.cpus_per_task=64"]), "slurm")


def test_memory_and_gpus_beyond_every_node_fail_before_submission_naming_the_field(slurm_cluster: None) -> None:
    """sbatch refused both with a message naming no setting (`Requested node configuration is not available`,
    `Invalid generic resource (gres) specification`); the dry run shows the same lines as warnings."""
    too_much = ["launch.mem_gb=60000", "launch.gpus_per_node=64"]
    with pytest.raises(LaunchError, match=r"^launch.mem_gb: 60000 GB per node requested, but the nodes of partition "
                                          r"'\w+' have at most \d+\.\d GB \(\d+ MB, sinfo\); lower launch.mem_gb"):
        submit(load_config(QUICKSTART, too_much[:1]), "slurm")
    with pytest.raises(LaunchError, match=r"^launch.gpus_per_node: 64 GPUs per node requested, but the nodes of "
                                          r"partition '\w+' have (none|at most \d+) \(sinfo GRES\)"):
        submit(load_config(QUICKSTART, too_much[1:]), "slurm")
    report = dry_run_report(load_config(QUICKSTART, too_much), "slurm")
    warnings = [line for line in report.splitlines() if line.startswith("warning: this cluster cannot run it")]
    assert [line.split(": ")[2] for line in warnings] == ["launch.mem_gb", "launch.gpus_per_node"], report
    if not any(_gpus_per_node_of_partitions()):  # trial 23: `1 GPUs per node requested`
        with pytest.raises(LaunchError, match=r"^launch.gpus_per_node: 1 GPU per node requested, but the nodes of "):
            submit(load_config(QUICKSTART, ["launch.gpus_per_node=1"]), "slurm")


def _gpus_per_node_of_partitions() -> list[int]:
    """The most GPUs a node of each partition has (sinfo GRES)."""
    from launch.submit import gres_gpus

    result = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=30, check=False)
    return [gres_gpus(line) for line in result.stdout.split()]


def test_the_largest_launch_time_min_is_a_time_sbatch_takes(slurm_cluster: None, tmp_path: Path) -> None:
    """launch.time_min's bound (a year) is a real wall-time limit: Slurm's own check (`sbatch --test-only`, nothing
    queued) accepts the script sparsetrain writes with it."""
    from launch.submit import sbatch_script

    script = tmp_path / "job.sh"
    script.write_text(sbatch_script(load_config(QUICKSTART, ["launch.time_min=525600", f"out_dir={tmp_path / 'run'}"])))
    result = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0 and "to start at" in result.stderr, (result.stdout, result.stderr)


# Submitted held (`sbatch --hold`): the jobs wait in the queue and take no CPU until a test releases or cancels them.
HELD = ['launch.extra_sbatch=["--hold"]']


@dataclass
class Launched:
    """What a `sparsetrain launch` / `sweep` call returned and printed."""

    out_dir: Path
    code: int
    out: str
    err: str


def _call(main: Callable[[list[str]], int], argv: list[str], out_dir: Path) -> Launched:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return Launched(out_dir, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def held_launch(slurm_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    """`sparsetrain launch` of a held job with train.threads=2 on 1 CPU per task, default options."""
    out_dir = tmp_path_factory.mktemp("held-launch") / "run"
    try:
        yield _call(launch_main, [str(QUICKSTART), "--cluster", "slurm", *TINY, *HELD, "train.threads=2",
                                  f"out_dir={out_dir}"], out_dir)
    finally:
        _cancel_jobs_of(out_dir)


def test_train_threads_above_cpus_per_task_warns_at_submission(held_launch: Launched) -> None:
    """An explicit train.threads wins over Slurm's cpus-per-task inside the job: 2 threads on 1 CPU per rank
    oversubscribe it. A warning (the job still runs, with the same results), at submission and in the dry run."""
    assert held_launch.code == 0, held_launch.err
    warnings = [line for line in held_launch.err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: train.threads=2 torch threads per rank but launch.cpus_per_task=1: each rank would oversubscribe "
        "its 1 CPU(s) (steps wait for descheduled threads); ask for launch.cpus_per_task=2 or leave train.threads "
        "unset (Slurm's cpus-per-task then sets the threads)"], held_launch.err
    config = load_config(QUICKSTART, [*TINY, "train.threads=2", f"out_dir={held_launch.out_dir}"])
    assert warnings[0] in dry_run_report(config, "slurm").splitlines()
    fitting = load_config(QUICKSTART, [*TINY, "train.threads=2", "launch.cpus_per_task=2"])
    assert "warning: train.threads" not in dry_run_report(fitting, "slurm")


SWEPT = ["alpha0=1e-4,2e-4,4e-4"]


@pytest.fixture(scope="module")
def held_sweep(slurm_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launched]:
    """`sparsetrain sweep` of 3 held points (a long sparsify phase, so that a released point is still running when
    the test collects), default options."""
    out_dir = tmp_path_factory.mktemp("held-sweep") / "sweep"
    try:
        # a sweep that waited by default would block on its held jobs until pytest's timeout
        yield _call(sweep_main, [str(QUICKSTART), *SWEPT, *INTERRUPTED, *HELD, "--cluster", "slurm",
                                 f"out_dir={out_dir}"], out_dir)
    finally:
        _cancel_jobs_of(out_dir)


def _submitted_ids(output: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith("submitted "))
    return line.split(": ", 1)[1].split("; ")[0].split(", ")


def _wait_until(job_id: str, states: set[str], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while slurm_state(job_id) not in states:
        assert time.monotonic() < deadline, f"job {job_id} not {states} after {timeout_s}s: {_job_info(job_id)}"
        time.sleep(0.2)


def test_launch_and_sweep_submit_and_return_by_default_saying_how_to_follow(held_launch: Launched,
                                                                           held_sweep: Launched) -> None:
    """Fresh-user trial: `launch` returned at once but `sweep` waited for every run (`--no-wait` to return): the
    same default for both now, sbatch's."""
    assert held_launch.code == 0 and held_sweep.code == 0, held_launch.err + held_sweep.err
    job_id = re.match(r"submitted job (\d+) \(name run-sparsetrain, 1 rank, cluster=slurm\); logs in ",
                      held_launch.out).group(1)
    log = held_launch.out_dir / "slurm" / f"{job_id}_0_log"
    assert held_launch.out.splitlines()[1] == (
        f"follow it: squeue -j {job_id}; tail -f {log}.err (rank 0's progress); the final table: {log}.out; when it "
        f"ends: {held_launch.out_dir}/report.json (`--wait` waits for it; `scancel {job_id}` stops it)"
    ), held_launch.out
    ids = _submitted_ids(held_sweep.out)
    array = ids[0].split("_")[0]
    follow = held_sweep.out.splitlines()[1]
    assert follow.startswith(f"follow them: squeue -j {array}; collect the results (any time; it says which runs are "
                             "queued, running, done or failed): sparsetrain sweep "), held_sweep.out
    assert follow.endswith(" --collect (`--wait` waits for them)") and "--cluster slurm" in follow, follow
    assert len(held_sweep.out.splitlines()) == 2 and not (held_sweep.out_dir / "sweep.json").exists(), held_sweep.out
    assert {slurm_state(job) for job in ids} == {"PENDING"}, "the sweep must return with its jobs still queued"


def test_launch_timeout_names_rank_0s_log_as_the_follow_line_does(slurm_cluster: None, tmp_path: Path) -> None:
    """Fresh-user trial: `launch` said `tail -f …/N_0_log.err (rank 0's log)`, and its `--timeout` line named
    `…/N_0_log.out` (submitit's stdout, which holds no log line)."""
    out_dir = tmp_path / "run"
    try:
        got = _call(launch_main, [str(QUICKSTART), "--cluster", "slurm", *TINY, *HELD, "--timeout", "2",
                                  f"out_dir={out_dir}"], out_dir)
    finally:
        _cancel_jobs_of(out_dir)
    job_id = re.match(r"submitted job (\d+) ", got.out).group(1)
    assert got.code == 1 and got.err.splitlines()[-1] == (
        f"error: stopped waiting after --timeout 2 s: job {job_id} is still PENDING (Reason=JobHeldUser) and goes on "
        f"(`scancel {job_id}` stops it); rank 0's log: {out_dir / 'slurm' / job_id}_0_log.err"), got.err


def test_sweep_timeout_waits_and_bounds_the_whole_sweep(slurm_cluster: None, tmp_path: Path) -> None:
    """`--timeout` was ignored without `--wait`, and with it each run got the whole timeout in turn (3 held runs ×
    --timeout 6 = 18 s). Now it implies waiting, for all the runs together; with `--no-wait` it is refused."""
    base = tmp_path / "sweep"
    refused = _call(sweep_main, [str(QUICKSTART), *SWEPT, "--no-wait", "--timeout", "6", f"out_dir={base}"], base)
    assert (refused.code, refused.out) == (2, ""), refused
    assert refused.err == "error: --timeout waits for the runs and --no-wait does not: give one of them\n"
    try:
        start = time.monotonic()
        got = _call(sweep_main, [str(QUICKSTART), *SWEPT, *TINY, *HELD, "--cluster", "slurm", "--timeout", "6",
                                 f"out_dir={base}"], base)
        waited = time.monotonic() - start
    finally:
        _cancel_jobs_of(base)
    assert got.code == 1 and "queued" in got.out and "wrote " in got.out, got.out + got.err
    assert 6 <= waited < 14, f"waited {waited:.1f} s for three held runs with --timeout 6 (each run 6 s: >= 18 s)"
    runs = json.loads((base / "sweep.json").read_text())["runs"]
    assert [run["status"] for run in runs] == ["queued"] * 3, runs


def test_sweep_collect_says_per_point_queued_running_failed_or_missing(held_sweep: Launched) -> None:
    """Fresh-user trial: `sweep --collect` called points whose jobs were still queued or running `missing`, and
    printed the summary as raw JSON."""
    assert held_sweep.code == 0, held_sweep.err
    ids = _submitted_ids(held_sweep.out)
    subprocess.run(["scontrol", "release", ids[0]], check=True, capture_output=True)
    subprocess.run(["scancel", ids[2]], check=True, capture_output=True)
    _wait_until(ids[0], {"RUNNING"})
    _wait_until(ids[2], FINAL_STATES | {"UNKNOWN"})  # Slurm forgets a pending array element at once when cancelled
    base = held_sweep.out_dir
    got = _call(sweep_main, [str(QUICKSTART), "alpha0=1e-4,2e-4,4e-4,8e-4", *INTERRUPTED, "--cluster", "slurm",
                             "--collect", f"out_dir={base}"], base)
    assert got.code == 1, got.err
    lines = got.out.splitlines()
    assert lines[0].split() == ["point", "state", "job", "sparsity", "compression", "metric", "pareto"], got.out
    assert [line.split()[:4] for line in lines[1:5]] == [
        ["alpha0=1e-4", "running", ids[0], "-"], ["alpha0=2e-4", "queued", "(PENDING)", ids[1]],
        ["alpha0=4e-4", "failed", ids[2], "-"], ["alpha0=8e-4", "missing", "-", "-"]], got.out
    assert lines[5].startswith("sparsity of prunable weights (conv/linear); compression over all"), got.out
    assert lines[6].startswith(f"alpha0=4e-4: job {ids[2]} ended without a result (Slurm no longer lists it); see "
                               f"{base / 'slurm' / ids[2]}_0_log.err"), got.out
    assert lines[7] == (f"alpha0=8e-4: no job recorded in sweep_jobs.json and no {base / 'alpha0=8e-4'}"
                        "/report.json"), got.out
    assert lines[8] == f"wrote {base / 'sweep.json'} (every run, JSON) and {base / 'sweep_pareto.png'}", got.out
    assert lines[9].startswith("2 of 4 runs not finished (queued or running); collect again later: sparsetrain "
                               "sweep "), got.out
    assert lines[9].endswith(" --collect") and len(lines) == 10, got.out
    runs = json.loads((base / "sweep.json").read_text())["runs"]
    assert [(run["status"], run.get("job_id"), run.get("state")) for run in runs] == [
        ("running", ids[0], "RUNNING"), ("queued", ids[1], "PENDING"), ("failed", ids[2], None),
        ("missing", None, None)], runs


def test_sbatch_rejection_is_one_line(slurm_cluster: None, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = launch_main([str(QUICKSTART), "--cluster", "slurm", f"out_dir={tmp_path / 'run'}",
                        'launch.extra_sbatch=["--gres=gpu:4"]'])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == ("error: submission failed: sbatch: error: Invalid generic resource (gres) specification (from "
                   "launch.extra_sbatch: --gres=gpu:4)"), err
    assert not (tmp_path / "run").exists(), "a refused job left its out_dir/slurm/ (submitit's temporaries) behind"
    kept = tmp_path / "kept" / "slurm"
    kept.mkdir(parents=True)
    (kept / "earlier.out").write_text("a log of an earlier job")
    assert launch_main([str(QUICKSTART), "--cluster", "slurm", f"out_dir={tmp_path / 'kept'}",
                        'launch.extra_sbatch=["--gres=gpu:4"]']) == 2
    assert capsys.readouterr().err.startswith("error: submission failed: sbatch: error: ")
    assert sorted(path.name for path in kept.iterdir()) == ["earlier.out"], "only the refused job's files go"


@pytest.mark.parametrize(("override", "expected"), [
    ("launch.extra_sbatch=[--bogus-flag]", "sbatch: unrecognized option '--bogus-flag' (from launch.extra_sbatch: "
     "--bogus-flag)"),
    ("launch.constraint=bigmem", "sbatch: error: Batch job submission failed: Invalid feature specification (from "
     "launch.constraint='bigmem')"),
])
def test_sbatch_refusal_shows_sbatchs_line_and_the_setting(slurm_cluster: None, tmp_path: Path, override: str,
                                                           expected: str, capsys: pytest.CaptureFixture) -> None:
    """Fresh-user trial 22: `launch.extra_sbatch=[--bogus-flag]` printed `submission failed: Try "sbatch --help" for
    more information` (the line after sbatch's own), and `launch.constraint=bigmem` named no setting."""
    code = launch_main([str(QUICKSTART), "--cluster", "slurm", f"out_dir={tmp_path / 'run'}", override])
    assert (code, capsys.readouterr().err.strip()) == (2, f"error: submission failed: {expected}")
    code = sweep_main([str(QUICKSTART), "alpha0=1e-5,3e-5", "--cluster", "slurm", f"out_dir={tmp_path / 'sweep'}",
                       override])
    assert (code, capsys.readouterr().err.strip().splitlines()[-1]) == (2, f"error: submission failed: {expected}")
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep" / "slurm").exists()


def test_timeout_says_a_requeued_job_restarted(slurm_cluster: None, tmp_path: Path) -> None:
    """Fresh-user trial 22: `--timeout` said `job 503 is still PENDING` of a job that had already run and been
    requeued twice. A real job (a plain `sleep`), requeued while it runs, then waited for with a short timeout."""
    import submitit

    from launch.submit import WaitTimeout

    job_id = subprocess.run(["sbatch", "--parsable", "-o", str(tmp_path / "%j.out"), "--wrap", "sleep 60"],
                            capture_output=True, text=True, check=True).stdout.strip()
    try:
        deadline = time.monotonic() + 20
        while slurm_state(job_id) != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.2)
        subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)
        with pytest.raises(WaitTimeout) as info:
            wait_result(submitit.SlurmJob(tmp_path, job_id), timeout_s=0.1, poll_s=0.2)
        message = str(info.value)
        assert f"job {job_id} is PENDING again after 1 restart (Restarts=1: requeued by" in message, message
        assert "still" not in message and f"`scontrol update JobId={job_id} StartTime=now`" in message, message
    finally:
        subprocess.run(["scancel", job_id], capture_output=True, check=False)


def test_a_cancelled_job_says_where_it_stopped_and_how_to_resume(slurm_cluster: None, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """Fresh-user trial 22: after `scancel` the log said `leaving requeueing to Slurm` (a cancelled job is never
    requeued) with no step or command, and `launch --wait` said `job 511 failed: job 511 ended (CANCELLED) without a
    result`. A real job, cancelled once it has a checkpoint, while `launch --wait` waits for it."""
    import threading

    out_dir = tmp_path / "run"
    argv = [str(QUICKSTART), "--cluster", "slurm", "--wait", *INTERRUPTED, "tracking.mode=disabled",
            f"out_dir={out_dir}"]
    codes: list[int] = []
    waiter = threading.Thread(target=lambda: codes.append(launch_main(argv)))
    waiter.start()
    try:
        deadline = time.monotonic() + 120
        while '"current"' not in _read(out_dir / "state.json") and time.monotonic() < deadline:
            time.sleep(0.2)
        job_id = next((out_dir / "slurm").glob("*_submitted.pkl")).name.split("_")[0]
        subprocess.run(["scancel", job_id], check=True, capture_output=True)
        waiter.join(timeout=120)
    finally:
        _cancel_jobs_of(out_dir)
    point = json.loads((out_dir / "state.json").read_text())["current"]
    where = f"{point['phase']} step {point['step']}"
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert codes == [1] and err.startswith(f"error: job {job_id} ended (CANCELLED) without a result; see "), err
    assert err.endswith(f"; the run has a checkpoint at {where}: resubmitting resumes from it: `sparsetrain launch "
                        f"{' '.join(argv)}`"), err
    log = (out_dir / "slurm" / f"{job_id}_0_log.err").read_text()
    assert (f"preempted: stopped by SIGTERM (scancel, `scontrol requeue`, or the cluster stopping the job) with a "
            f"checkpoint at {where}; a job Slurm requeues continues from it by itself, a cancelled one is not "
            f"requeued: if `squeue -j {job_id}` no longer lists it, resume with `sparsetrain launch "
            f"{out_dir}/config.yaml --cluster slurm`") in log, log[-2000:]


def _read(path: Path) -> str:
    """The text of `path`, '' while it does not exist (or is being replaced)."""
    try:
        return path.read_text()
    except OSError:
        return ""


def test_srun_args_srun_refuses_are_refused_before_submission(slurm_cluster: None, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    """Trial 22 item 7d, trial 23 item 6: `launch.srun_args=[--bogus]` was found only in the job. `srun --test-only`
    (it submits nothing) refuses it first: one line naming the field, exit 2, nothing submitted or created."""
    out_dir = tmp_path / "sb"
    try:
        code = launch_main([str(QUICKSTART), "--cluster", "slurm", f"out_dir={out_dir}", "launch.srun_args=[--bogus]"])
    finally:
        _cancel_jobs_of(out_dir)
    err = capsys.readouterr().err
    assert (code, err) == (2, "error: launch.srun_args: srun --test-only refuses --bogus: srun: unrecognized option "
                              "'--bogus'\n")
    assert not out_dir.exists()
