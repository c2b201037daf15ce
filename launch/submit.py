"""Build submitit executors from the `launch:` config section, validate, submit and wait.

Clusters:
    slurm  sbatch + srun through `submitit.SlurmExecutor` (one task per rank, nodes × tasks_per_node ranks).
    local  `submitit.LocalExecutor`: tasks_per_node subprocesses on this machine (nodes must be 1).
    debug  `submitit.DebugExecutor`: in this process, one rank (for debugging with pdb).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.slurm import slurm as submitit_slurm

from launch.job import PipelineJob
from sparsetrain.config.launch import LaunchConfig
from sparsetrain.config.loader import config_to_dict
from sparsetrain.config.schema import RunConfig
from sparsetrain.errors import InputError, SparsetrainError

CLUSTERS = ("slurm", "local", "debug")
# One failed rank ends the step at once instead of leaving the others blocked in a collective until timeout.
SRUN_DEFAULT_ARGS = ("--kill-on-bad-exit=1",)
# Slurm job states after which the job will not run again (REQUEUED / PENDING / RUNNING are not final).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED", "SPECIAL_EXIT"}
# Slurm job states of a job waiting to (re)start; other states that are not final (RUNNING, COMPLETING, SUSPENDED,
# ...) count as running
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}


class LaunchError(InputError, RuntimeError):
    """A launch problem as one line naming the field or the scheduler's message."""


class WaitTimeout(SparsetrainError, TimeoutError):
    """`--timeout` passed while the job still runs: the job has not failed, the launcher stopped waiting."""

    exit_code = 1


def log_folder(config: RunConfig) -> Path:
    """submitit's folder for scripts, pickles and logs: `launch.log_folder` or `<out_dir>/slurm` (absolute)."""
    return Path(config.launch.log_folder or Path(config.out_dir) / "slurm").expanduser().absolute()


def job_name(config: RunConfig) -> str:
    """Slurm job name: `launch.job_name` or `<out_dir name>-sparsetrain`, the distinguishing part first (squeue's
    NAME column shows 8 characters: `sparsetrain-<name>` read `sparsetr` for every job)."""
    return config.launch.job_name or f"{Path(config.out_dir).name}-sparsetrain"


def slurm_parameters(config: RunConfig) -> dict[str, Any]:
    """Parameters of `SlurmExecutor.update_parameters` (submitit's names; `mem` in GB as submitit expects)."""
    launch = config.launch
    params: dict[str, Any] = {
        "job_name": job_name(config),
        "nodes": launch.nodes,
        "ntasks_per_node": launch.tasks_per_node,
        "cpus_per_task": launch.cpus_per_task,
        "time": launch.time_min,
        "signal_delay_s": launch.signal_delay_s,
        "array_parallelism": launch.array_parallelism,
    }
    optional = {"gpus_per_node": launch.gpus_per_node or None, "mem": launch.mem_gb, "partition": launch.partition,
                "account": launch.account, "qos": launch.qos, "constraint": launch.constraint,
                "setup": list(launch.setup) or None, "srun_args": [*SRUN_DEFAULT_ARGS, *launch.srun_args],
                "additional_parameters": launch.extra_sbatch_parameters() or None}
    params.update({key: value for key, value in optional.items() if value is not None})
    return params


def submitit_command(folder: Path, python: str | None = None) -> str:
    """The command each task runs, exactly as `SlurmExecutor._submitit_command_str` builds it."""
    return " ".join([python or shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))])


def sbatch_script(config: RunConfig, array_size: int | None = None) -> str:
    """The sbatch script submitit would submit for this config (no Slurm needed); `array_size` > 1: the script of a
    job array of that many elements (a sweep's), as submitit's `executor.batch()` submits it."""
    params = slurm_parameters(config)
    if array_size is not None and array_size > 1:
        params["map_count"] = array_size
    if "mem" in params:
        params["mem"] = submitit_slurm._convert_mem(params["mem"])
    folder = log_folder(config)
    return submitit_slurm._make_sbatch_string(command=submitit_command(folder), folder=folder, **params)


@dataclass(frozen=True)
class Partition:
    """One Slurm partition as `sinfo` lists it: its node count, the most CPUs, memory (MB, Slurm's RealMemory) and
    GPUs (GRES `gpu`) any of its nodes has, whether it is the default. `most_mem_mb` None: sinfo gave no memory."""

    nodes: int
    most_cpus: int
    default: bool
    most_mem_mb: int | None = None
    most_gpus: int = 0


# `sinfo -N -o "%P %c %m %G"`: partition (`*` on the default), CPUs, memory in MB (`+` when nodes of one line differ),
# GRES such as `gpu:4`, `gpu:a100:4(S:0-1)`, `gpu:a100:2,gpu:v100:2` or `(null)`
_SINFO_FORMAT = "%P %c %m %G"
_GRES_GPU = re.compile(r"(?:^|,)gpu(?::[\w.-]+)?:(\d+)")


def _number(text: str) -> int | None:
    """An sinfo count such as `2`, `21694` or `21694+`; None for anything else (`N/A`)."""
    digits = text.rstrip("+")
    return int(digits) if digits.isdigit() else None


def gres_gpus(gres: str) -> int:
    """GPUs in one node's sinfo GRES field (`gpu:a100:4(S:0-1),gpu:v100:2` -> 6; `(null)` -> 0)."""
    return sum(int(count) for count in _GRES_GPU.findall(gres))


def slurm_partitions() -> dict[str, Partition] | None:
    """The partitions known to Slurm (`sinfo -N`: one line per node and partition, `*` on the default), or None
    when sinfo is missing or fails."""
    if shutil.which("sinfo") is None:
        return None
    result = subprocess.run(["sinfo", "-N", "-h", "-o", _SINFO_FORMAT], capture_output=True, text=True, timeout=30,
                            check=False)
    if result.returncode != 0:
        return None
    found: dict[str, Partition] = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if not fields:
            continue
        name, cpus, mem, gres = (fields + ["", "", ""])[:4]
        seen = found.get(name.rstrip("*"), Partition(0, 0, name.endswith("*")))
        mems = [m for m in (seen.most_mem_mb, _number(mem)) if m is not None]
        found[name.rstrip("*")] = Partition(seen.nodes + 1, max(seen.most_cpus, _number(cpus) or 0), seen.default,
                                            max(mems) if mems else None, max(seen.most_gpus, gres_gpus(gres)))
    return found


def validate_launch(config: RunConfig, cluster: str, *, fit: bool = True) -> None:
    """Checks that need the cluster choice or the scheduler; the schema checked the rest at load time.

    Args:
        fit: Also check that this Slurm cluster can ever run the job (`cluster_fit_problems`); a dry run plans for
            any cluster and prints those problems as warnings instead.

    Raises:
        LaunchError: one line naming the field and every factor involved.
    """
    launch = config.launch
    if cluster not in CLUSTERS:
        raise LaunchError(f"--cluster: unknown cluster {cluster!r} (choose from {', '.join(CLUSTERS)})")
    if launch.gpus_per_node and launch.gpus_per_node % launch.tasks_per_node:
        raise LaunchError(f"launch.gpus_per_node: {launch.gpus_per_node} GPUs cannot be split over "
                          f"tasks_per_node={launch.tasks_per_node} (nodes={launch.nodes})")
    if cluster == "local" and launch.nodes != 1:
        raise LaunchError(f"launch.nodes: the local cluster has one node (got nodes={launch.nodes})")
    if cluster == "debug" and launch.world_size != 1:
        raise LaunchError(f"launch.tasks_per_node: the debug cluster runs one rank in-process "
                          f"(got nodes={launch.nodes} × tasks_per_node={launch.tasks_per_node})")
    problems = cluster_fit_problems(config) if cluster == "slurm" and fit else []
    if problems:
        raise LaunchError(problems[0])


def cluster_fit_problems(config: RunConfig) -> list[str]:
    """What this Slurm cluster (`sinfo`) can never give the job, one line each naming the field: an unknown
    partition, more nodes than the partition has, more CPUs per node (tasks_per_node × cpus_per_task), memory per node
    (`launch.mem_gb`) or GPUs per node (`launch.gpus_per_node`) than any of its nodes has. Slurm refuses some such
    jobs (`Requested node configuration is not available`, naming no setting) and queues others forever (reason
    PartitionConfig). Empty without sinfo."""
    launch = config.launch
    known = slurm_partitions()
    if known is None:
        return []
    if launch.partition is not None and launch.partition not in known:
        return [f"launch.partition: unknown partition {launch.partition!r} (Slurm has: {', '.join(sorted(known))})"]
    name = launch.partition or next((n for n, part in known.items() if part.default), None)
    if name not in known:
        return []
    part, problems, per_node = known[name], [], launch.tasks_per_node * launch.cpus_per_task
    if launch.nodes > part.nodes:
        problems.append(f"launch.nodes: {launch.nodes} nodes requested but partition {name!r} has {part.nodes}")
    if part.most_cpus and per_node > part.most_cpus:
        problems.append(f"launch.cpus_per_task: tasks_per_node {launch.tasks_per_node} × cpus_per_task "
                        f"{launch.cpus_per_task} = {per_node} CPUs per node, but the nodes of partition {name!r} have "
                        f"at most {part.most_cpus} (sinfo); lower launch.cpus_per_task or launch.tasks_per_node")
    problems += _memory_and_gpu_problems(launch, name, part)
    return problems


def _memory_and_gpu_problems(launch: LaunchConfig, name: str, part: Partition) -> list[str]:
    """`launch.mem_gb` (GB as sbatch reads `--mem=NGB`: 1024 MB) and `launch.gpus_per_node` against the most any node
    of partition `name` has."""
    problems = []
    if launch.mem_gb is not None and part.most_mem_mb and launch.mem_gb * 1024 > part.most_mem_mb:
        problems.append(f"launch.mem_gb: {launch.mem_gb:g} GB per node requested, but the nodes of partition {name!r} "
                        f"have at most {part.most_mem_mb / 1024:.1f} GB ({part.most_mem_mb} MB, sinfo); lower "
                        "launch.mem_gb or leave it unset (the cluster's default)")
    if launch.gpus_per_node > part.most_gpus:
        have = f"at most {part.most_gpus}" if part.most_gpus else "none"
        problems.append(f"launch.gpus_per_node: {launch.gpus_per_node} GPUs per node requested, but the nodes of "
                        f"partition {name!r} have {have} (sinfo GRES); choose a GPU partition (launch.partition) or "
                        "launch.gpus_per_node=0 for a CPU job")
    return problems


def launch_warnings(config: RunConfig, cluster: str) -> list[str]:
    """What a job of this config would run, but badly, one line each naming the fields: an explicit `train.threads`
    above `launch.cpus_per_task` on Slurm (the ranks' threads outnumber the CPUs Slurm gives them, and each step waits
    for descheduled threads; the job's log warns too, once it runs). Not refused: the run's results do not change and
    the setting is deliberate (unset, the threads follow Slurm's cpus-per-task)."""
    threads, cpus = config.train.threads, config.launch.cpus_per_task
    if cluster != "slurm" or threads is None or threads <= cpus:
        return []
    return [f"train.threads={threads} torch threads per rank but launch.cpus_per_task={cpus}: each rank would "
            f"oversubscribe its {cpus} CPU(s) (steps wait for descheduled threads); ask for launch.cpus_per_task="
            f"{threads} or leave train.threads unset (Slurm's cpus-per-task then sets the threads)"]


def make_executor(config: RunConfig, cluster: str) -> submitit.Executor:
    """An executor for `cluster` with the config's resources; logs under `log_folder(config)`."""
    folder = log_folder(config)
    launch = config.launch
    if cluster == "slurm":
        if shutil.which("sbatch") is None:
            raise LaunchError("--cluster slurm: sbatch not found (is Slurm installed? see launch/local_slurm.sh)")
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=launch.max_num_timeout)
        executor.update_parameters(**slurm_parameters(config))
        return executor
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    if cluster == "local":
        executor.update_parameters(timeout_min=launch.time_min, tasks_per_node=launch.tasks_per_node, nodes=1,
                                   gpus_per_node=launch.gpus_per_node, name=job_name(config))
    return executor


def one_line(error: BaseException) -> str:
    """The most useful single line of a submission error (Slurm's own `sbatch: error: ...` when present)."""
    text = str(error)
    errors = [line.strip() for line in text.splitlines() if re.search(r"(sbatch|srun|slurm).*error", line, re.I)]
    lines = errors or [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


_RAISED = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): (.+)$")


def job_failure(error: BaseException) -> tuple[str, int]:
    """What a failed job raised, as the one line and exit code a local `sparsetrain run` gives it.

    A job's exception reaches the launcher as submitit's FailedJobError, whose message is the job's traceback
    followed by its log paths; its last `module.Class: message` line is what the job raised. A sparsetrain error
    (`sparsetrain.errors`: bad input, resume problem, non-finite, set-up) gives its message and the class's exit
    code, with the log path; anything else `Class: message` and 1. Other errors (a job that ended without a
    result) their own text and 1.
    """
    import importlib

    text = str(error)
    raised = [m for m in map(_RAISED.match, (line.strip() for line in text.splitlines())) if m]
    if not isinstance(error, submitit.core.utils.FailedJobError) or not raised:
        return one_line(error), 1
    name, message = raised[-1].groups()
    logs = re.findall(r"^\s*- (\S+\.err)\s*$", text, re.M)
    where = f" (the job's log: {logs[0]})" if logs else ""
    module, _, cls = name.rpartition(".")
    try:
        kind = getattr(importlib.import_module(module), cls) if module else None
    except ImportError:
        kind = None
    if isinstance(kind, type) and issubclass(kind, SparsetrainError):
        return f"{message}{where}", kind.exit_code
    return f"{cls}: {message}{where}", 1


def submit(config: RunConfig, cluster: str, phases: list[str] | None = None) -> submitit.Job:
    """Validate and submit the pipeline as one job of `world_size` tasks.

    Raises:
        LaunchError: invalid launch settings, or the scheduler refused the job (its message, one line).
    """
    validate_launch(config, cluster)
    executor = make_executor(config, cluster)
    with submission_errors(log_folder(config)):
        return executor.submit(PipelineJob(config_to_dict(config), phases))


# what submitit writes into the log folder before calling sbatch (renamed after the job id once sbatch accepts it)
_SUBMISSION_TEMPORARIES = re.compile(r"[0-9a-f]{32}\.pkl|\.submission_file_[0-9a-f]{32}\.sh")


@contextlib.contextmanager
def submission_errors(folder: Path | None = None) -> Iterator[None]:
    """Turn a refused submission into one LaunchError line (submitit also prints sbatch's stderr: muted here).

    A refused submission leaves nothing behind in the log folder `folder`: the temporaries submitit wrote for it
    (its pickles and sbatch script) are deleted, then `folder` and the parents this submission created (e.g.
    `OUT/slurm/` and `OUT/`) when nothing else is in them.
    """
    created = _missing_folders(folder) if folder is not None else []
    before = set(folder.iterdir()) if folder is not None and folder.is_dir() else set()
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError,
            subprocess.CalledProcessError) as err:
        if folder is not None:
            _remove_refused(folder, before, created)
        raise LaunchError(f"submission failed: {one_line(err)}") from None


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and its parents that do not exist yet, deepest first."""
    return [path for path in (folder, *folder.parents) if not path.exists()]


def _remove_refused(folder: Path, before: set[Path], created: list[Path]) -> None:
    """Delete the submission temporaries that appeared in `folder` (not `before`), then the folders in `created`
    (deepest first) that are left empty."""
    if folder.is_dir():
        for path in set(folder.iterdir()) - before:
            if path.is_file() and _SUBMISSION_TEMPORARIES.fullmatch(path.name):
                path.unlink()
    for path in created:
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def slurm_state(job_id: str) -> str:
    """Job state from `scontrol show job` (no accounting database needed); UNKNOWN once Slurm forgot it."""
    result = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                            timeout=30, check=False)
    match = re.search(r"JobState=(\S+)", result.stdout)
    return match.group(1) if match else "UNKNOWN"


def live_slurm_state(job_id: str) -> str | None:
    """Slurm's state of `job_id` while the job is pending or running (it will still run: not in `FINAL_STATES`);
    None once it has ended, when Slurm no longer knows it, or on a machine without Slurm's commands."""
    try:
        state = slurm_state(job_id)
    except (OSError, subprocess.SubprocessError):  # no scontrol here, or it did not answer
        return None
    return None if state in FINAL_STATES or state == "UNKNOWN" else state


def rank0_job(job: submitit.Job) -> submitit.Job:
    """The task of `job` that is rank 0: the one whose result file the launcher reads and whose log holds the run's
    log lines (a job of one task is its own)."""
    return job.task(0) if job.num_tasks > 1 else job


def no_result(job: submitit.Job, state: str | None = None, note: str = "") -> str:
    """`job N ended (STATE) without a result<note>; see <rank 0's log>`: a job that ended without rank 0's result."""
    ended = f"ended ({state})" if state else "ended"
    return f"job {job.job_id} {ended} without a result{note}; see {rank0_job(job).paths.stderr}"


def wait_result(job: submitit.Job, timeout_s: float | None = None, poll_s: float = 2.0) -> Any:
    """Wait for rank 0's result, through requeues, without relying on `sacct`.

    Raises:
        LaunchError: the job ended without a result; WaitTimeout: `timeout_s` passed (the job goes on).
        submitit.core.utils.FailedJobError: the job raised; the message holds its traceback.
    """
    if not isinstance(job, submitit.SlurmJob):
        return job.results()[0]
    rank0 = rank0_job(job)
    start = time.monotonic()
    while not rank0.paths.result_pickle.exists():
        state = slurm_state(job.job_id)
        if state in FINAL_STATES or state == "UNKNOWN":
            time.sleep(3 * poll_s)  # the result file may still be landing on a shared file system
            if not rank0.paths.result_pickle.exists():
                raise LaunchError(no_result(job, state))
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise WaitTimeout(f"stopped waiting after --timeout {timeout_s:g} s: job {job.job_id} is still {state} "
                              f"and goes on (`scancel {job.job_id}` stops it); rank 0's log: {rank0.paths.stderr}")
        time.sleep(poll_s)
    return rank0.result()
