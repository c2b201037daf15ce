"""The submitit callable that runs the pipeline as one data-parallel rank, and survives preemption.

Preemption / time limit, end to end (Slurm):

1. Slurm (or `SlurmJob._interrupt()`, or `scancel --signal`) sends SIGUSR2 to every task: at the time limit
   minus `launch.signal_delay_s`, or on preemption (submitit's model of preemption is SIGTERM, then SIGUSR2).
2. submitit installed its own handler in every task before calling us (`JobEnvironment._handle_signals`): on
   USR2, global rank 0 calls `checkpoint()`, dumps the returned `DelayedSubmission`, runs `scontrol requeue`
   and `sys.exit`s *from inside the signal handler*, i.e. wherever the training loop happened to be; other
   ranks only log. `PipelineJob.__call__` therefore moves that handler aside and installs `_StopOnSignal`:
   USR2 and SIGTERM only call `sparsetrain.engine.preemption.request_stop()` (async-signal-safe flag) on every
   task; USR2 also marks "requeue wanted".
3. The training loop checks the flag at every optimizer step, agrees on it across ranks, saves a checkpoint
   at that exact step (all ranks take part, rank 0 writes) and raises `Preempted` on every rank.
4. `__call__` catches `Preempted`. Rank 0 calls submitit's original handler itself, now at a safe point:
   it calls `checkpoint()` (which returns only the resolved config, never a live model), writes the new
   submission pickle, requeues the job (`scontrol requeue`; under the local executor, exit code 144) and
   exits. Other ranks exit at once with status 0 (SystemExit, so submitit writes no result file for them;
   status 0 so that `srun --kill-on-bad-exit` leaves rank 0 alone while it requeues).
   SIGTERM alone (scancel, Slurm-driven preemption) also stops at a step boundary with a checkpoint; rank 0
   then waits a few seconds for a USR2 (submitit's `_interrupt` sends it right after SIGTERM) and otherwise
   exits without requeueing: Slurm decides (cancelled, or requeued by the cluster's preemption policy). Its log
   line (`stopped_by_sigterm`) names the checkpoint's step and the `sparsetrain launch` command that resumes a
   cancelled job, once `squeue -j JOB` no longer lists it. When submitit will not requeue after USR2 (its timeout
   countdown, launch.max_num_timeout, is spent: `requeue_refusal`), the line says so and gives that command too.
5. The requeued job starts fresh processes, unpickles `PipelineJob(config)` and calls `run_pipeline` again,
   which resumes from the last checkpoint in `out_dir` (same step, same data order, `metrics.jsonl` cut back
   to the checkpoint step) and reuses `out_dir/wandb_run_id.txt`, so W&B continues the same run.
   A requeue that the cluster makes (SIGTERM preemption, a node failure, `scontrol requeue`) re-runs the
   original submission, whose config may say `resume=false`: every `PipelineJob` carries a submission token
   (exported as SPARSETRAIN_SUBMISSION), and a run re-started by the submission that started it continues from
   its own checkpoint (`sparsetrain.submission`); only a new submission starts over.

Slurm signals every process of the step, helpers included. W&B's service process (wandb-core) ignores USR2 but
exits on SIGTERM; the tracker then keeps only `metrics.jsonl` until the requeue, and the requeued job sends W&B
the rows it missed before continuing (`sparsetrain.tracking`). An error raised while unwinding from `Preempted`
(e.g. closing the dead W&B run) is still treated as preemption (`_preempted`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

import submitit

from sparsetrain import warning_output
from sparsetrain.cli import saved_point
from sparsetrain.config.loader import validate
from sparsetrain.engine import preemption
from sparsetrain.submission import ENV as submission_env

log = logging.getLogger(__name__)

PREEMPT_SIGNAL = signal.SIGUSR2  # submitit's default preemption/time-out signal (SUBMITIT_PREEMPT_SIGNAL)
PORT_RANGE = (20000, 32768)  # MASTER_PORT candidates: below the Linux ephemeral port range
USR2_GRACE_S = 10.0  # after SIGTERM only: how long rank 0 waits for submitit's USR2 before giving up requeueing


class _StopOnSignal:
    """Signal handler that only asks the training loop to stop; remembers whether a requeue was asked for."""

    def __init__(self) -> None:
        self.requeue_wanted = threading.Event()
        self.original_usr2: Any = None
        self.original_term: Any = None
        self.exiting = False

    def install(self) -> None:
        self.original_usr2 = signal.getsignal(PREEMPT_SIGNAL)
        self.original_term = signal.getsignal(signal.SIGTERM)
        signal.signal(PREEMPT_SIGNAL, self._on_usr2)
        signal.signal(signal.SIGTERM, self._on_term)

    def uninstall(self) -> None:
        """Put submitit's handlers back (matters for the in-process debug executor), unless exiting."""
        if not self.exiting:
            signal.signal(PREEMPT_SIGNAL, self.original_usr2)
            signal.signal(signal.SIGTERM, self.original_term)

    def ignore_until_exit(self) -> None:
        """The state is saved and the task is leaving: late USR2/TERM (the requeue's kill) must not kill it
        mid-exit (Python resets its own handlers to the default, fatal action during interpreter shutdown)."""
        self.exiting = True
        signal.signal(PREEMPT_SIGNAL, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def _on_usr2(self, signum: int, frame: FrameType | None) -> None:
        self.requeue_wanted.set()
        preemption.request_stop()

    def _on_term(self, signum: int, frame: FrameType | None) -> None:
        preemption.request_stop()


def master_port(job_id: str, restarts: int) -> int:
    """The rendezvous port: the same on every task of one job attempt, computed without communication.

    It lies below Linux's ephemeral range (32768-60999), so no outgoing connection on the node can hold it
    (submitit's own choice, 20000-60000 from the job id, sometimes hit EADDRINUSE on a busy node), and it
    changes with each requeue so a socket of the previous attempt in TIME_WAIT cannot block it.
    """
    digest = hashlib.sha256(f"{job_id}:{restarts}".encode()).digest()
    return PORT_RANGE[0] + int.from_bytes(digest[:4], "big") % (PORT_RANGE[1] - PORT_RANGE[0])


def export_distributed_env(gpus_per_node: int) -> dict[str, int]:
    """Export RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* from the submitit job environment; give each rank its GPUs.

    Returns:
        {"rank", "world_size", "local_rank"} of this task.
    """
    job_id = submitit.JobEnvironment().job_id
    os.environ["MASTER_PORT"] = str(master_port(job_id, int(os.environ.get("SLURM_RESTART_COUNT", "0"))))
    dist_env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    if gpus_per_node > 0:
        per_task = max(1, gpus_per_node // dist_env.local_world_size)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in range(gpus_per_node))).split(",")
        mine = visible[dist_env.local_rank * per_task:(dist_env.local_rank + 1) * per_task]
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
    return {"rank": dist_env.rank, "world_size": dist_env.world_size, "local_rank": dist_env.local_rank}


def _preempted(err: BaseException) -> bool:
    """Whether `err` is, or was raised while handling, a `Preempted`.

    Slurm signals every process of the job step, so helper processes (the W&B service) may die with the
    preemption signal, and their errors during clean-up can mask the `Preempted` that started it.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, preemption.Preempted):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def launch_resume_command(config: dict[str, Any], phases: list[str] | None) -> str:
    """`sparsetrain launch OUT/config.yaml --cluster slurm [--phase P]`: a new submission of the run's stored
    settings, which continues from its checkpoint (`resume=true` added when the run was started with resume=false,
    which would start it over)."""
    import shlex

    words = ["sparsetrain", "launch", str(Path(config["out_dir"]) / "config.yaml"), "--cluster", "slurm"]
    words += [arg for phase in phases or [] for arg in ("--phase", phase)]
    return shlex.join(words + ([] if config.get("resume", True) else ["resume=true"]))


def stopped_by_sigterm(point: str, command: str, job_id: str) -> str:
    """Rank 0's line when SIGTERM came without USR2 (scancel, a cluster ending or preempting the job, `scontrol
    requeue`): `point` is where the checkpoint is (`sparsify step 223`, as `sparsetrain run` says it). Rank 0 cannot
    tell which it was: a job Slurm requeues continues from the checkpoint by itself, and a new submission while it is
    queued again is refused (its run lock), so the command that resumes a cancelled job comes with the check first
    (`squeue -j JOB`: a requeued job is listed, a cancelled one is not)."""
    return (f"preempted: stopped by SIGTERM (scancel, `scontrol requeue`, or the cluster stopping the job) with a "
            f"checkpoint at {point}; a job Slurm requeues continues from it by itself, a cancelled one is not "
            f"requeued: if `squeue -j {job_id}` no longer lists it, resume with `{command}`")


def requeue_refusal(handler: Any) -> str | None:
    """Why submitit's USR2 handler will not requeue this job, in its words (`timed-out too many times`), or None when
    it will (or `handler` is not submitit's).

    submitit decides in `SignalHandler.checkpoint_and_try_requeue`: countdown = the submission's timeout countdown
    (launch.max_num_timeout, less the time-outs of earlier attempts) minus 1 when `has_timed_out()` (the attempt ran
    past min(80 % of its time limit, the limit less 10 min), i.e. at every signal of a job under 50 min); below 0 it
    raises `UncompletedJobError('Job not requeued because: timed-out too many times.')` instead of requeueing.
    """
    signal_handler = getattr(handler, "__self__", None)
    delayed = getattr(signal_handler, "_delayed", None)
    if delayed is None or not hasattr(signal_handler, "has_timed_out"):
        return None
    countdown = delayed._timeout_countdown - int(signal_handler.has_timed_out())
    return "timed-out too many times" if countdown < 0 else None


def not_requeued(point: str, reason: str, max_num_timeout: int | None, command: str) -> str:
    """Rank 0's line when submitit will not requeue the job (`requeue_refusal`): `point` is where the checkpoint is
    (`sparsify step 223`); the line gives the command that resumes, as `stopped_by_sigterm` does."""
    limit = "" if max_num_timeout is None else f" (launch.max_num_timeout={max_num_timeout} reached)"
    return (f"preempted: stopped with a checkpoint at {point}; not requeued: submitit says {reason}{limit}; "
            f"resume with `{command}`")


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


class PipelineJob(submitit.helpers.Checkpointable):
    """Run `sparsetrain.pipeline.run_pipeline` in a submitit task; requeue itself on preemption.

    Only the resolved config (plain data) and a submission token are pickled, in the first submission and in
    every requeue.

    Args:
        config: resolved RunConfig as plain data (`config_to_dict`).
        phases: phases to run (None = all enabled phases).
        submission: identity of the submission, kept by requeues (default: a new random token).
    """

    def __init__(self, config: dict[str, Any], phases: list[str] | None = None, submission: str | None = None) -> None:
        self.config = config
        self.phases = phases
        self.submission = submission or f"launch:{uuid.uuid4().hex}"

    def __call__(self) -> dict[str, Any]:
        from sparsetrain.pipeline import run_pipeline  # heavy (torch, deepspeed): imported in the task only

        config = validate(self.config)
        previous = os.environ.get(submission_env)
        if getattr(self, "submission", None):  # jobs pickled by sparsetrain versions before the token have none
            os.environ[submission_env] = self.submission
        ranks = export_distributed_env(config.launch.gpus_per_node)
        warning_output.install()  # after RANK is set: deprecations on rank 0 only
        preemption.clear()  # the debug executor runs in the caller's process: start from a clean flag
        stopper = _StopOnSignal()
        stopper.install()
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        log.info("rank %d/%d starting in %s", ranks["rank"], ranks["world_size"], config.out_dir)
        try:
            return run_pipeline(config, self.phases)
        except Exception as err:
            if not _preempted(err):
                raise
            if not isinstance(err, preemption.Preempted):
                log.warning("error while closing after preemption (ignored, state is saved): %s", err)
            self._stop_after_preemption(stopper, ranks["rank"])
            raise  # only reached without a submitit handler (debug executor): the caller sees the error
        finally:
            stopper.uninstall()
            _restore_env(submission_env, previous)  # the debug executor runs in the caller's process

    def _stop_after_preemption(self, stopper: _StopOnSignal, rank: int) -> None:
        """Step 4 of the module docstring: rank 0 requeues through submitit's handler, everyone exits."""
        handler = stopper.original_usr2
        if not callable(handler):
            return
        deadline = time.monotonic() + USR2_GRACE_S
        while rank == 0 and not stopper.requeue_wanted.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)  # signal handlers run between these sleeps
        stopper.ignore_until_exit()
        if rank != 0:
            log.info("rank %d: preempted, state saved; exiting", rank)
            sys.exit(0)  # not a failure: srun --kill-on-bad-exit must not kill rank 0 while it requeues
        point = saved_point(Path(self.config["out_dir"]))
        command = launch_resume_command(self.config, self.phases)
        if not stopper.requeue_wanted.is_set():
            log.info("%s", stopped_by_sigterm(point, command, submitit.JobEnvironment().job_id))
            sys.exit(-1)
        refused = requeue_refusal(handler)
        if refused:
            limit = self.config.get("launch", {}).get("max_num_timeout")
            log.info("%s", not_requeued(point, refused, limit, command))
        else:
            log.info("preempted: stopped with a checkpoint at %s; requeueing the job, which continues from it", point)
        handler(PREEMPT_SIGNAL, None)  # calls self.checkpoint(), then requeues and sys.exits, or raises (refused)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """The resubmission: same config with `resume=True`; the model state is already on disk.

        The training loop wrote the checkpoint at the step where it stopped (step 3), so nothing is saved here
        and nothing but the config is pickled.
        """
        config = dict(self.config, resume=True)  # submitit calls this also when it then refuses to requeue: no log
        return submitit.helpers.DelayedSubmission(type(self)(config, self.phases, getattr(self, "submission", None)))
