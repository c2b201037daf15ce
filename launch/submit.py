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
# Seconds of each attempt before USR2 below which a job only starts, checkpoints and requeues (imports, process
# group and data take tens of seconds); and the least launch.signal_delay_s the schema accepts.
MIN_WORK_S = 60
SIGNAL_DELAY_MIN_S = next(m.ge for m in LaunchConfig.model_fields["signal_delay_s"].metadata if hasattr(m, "ge"))
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
        raise LaunchError(f"launch.gpus_per_node: {_gpus(launch.gpus_per_node)} cannot be split over "
                          f"tasks_per_node={launch.tasks_per_node} (nodes={launch.nodes})")
    if cluster == "local" and launch.nodes != 1:
        raise LaunchError(f"launch.nodes: the local cluster has one node (got nodes={launch.nodes})")
    if cluster == "debug" and launch.world_size != 1:
        raise LaunchError(f"launch.tasks_per_node: the debug cluster runs one rank in-process "
                          f"(got nodes={launch.nodes} × tasks_per_node={launch.tasks_per_node})")
    if cluster == "slurm" and (short := time_limit_problem(launch)):
        raise LaunchError(short)
    problems = cluster_fit_problems(config) if cluster == "slurm" and fit else []
    if problems:
        raise LaunchError(problems[0])
    if cluster == "slurm" and fit and (refused := srun_args_problem(launch)):
        raise LaunchError(refused)


def time_limit_problem(launch: LaunchConfig) -> str | None:
    """Whether `launch.time_min` leaves each attempt less than `MIN_WORK_S` before Slurm's USR2, which comes
    `launch.signal_delay_s` before the limit: such a job checkpoints and requeues as soon as it has started, and after
    `max_num_timeout` requeues fails having done (almost) nothing. One line naming both fields, or None."""
    work_s = launch.time_min * 60 - launch.signal_delay_s
    if work_s >= MIN_WORK_S:
        return None
    least = -(-(launch.signal_delay_s + MIN_WORK_S) // 60)
    left = f"only {work_s} s" if work_s > 0 else "no time"
    lower = (f", or lower launch.signal_delay_s to {launch.time_min * 60 - MIN_WORK_S} or less"
             if launch.time_min * 60 - MIN_WORK_S >= SIGNAL_DELAY_MIN_S else "")
    return (f"launch.time_min: {launch.time_min} min leaves {left} before the requeue signal, which Slurm sends "
            f"launch.signal_delay_s={launch.signal_delay_s} s before the limit; each attempt needs at least "
            f"{MIN_WORK_S} s to start and train: set launch.time_min={least} or more{lower}")


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
        problems.append(f"launch.gpus_per_node: {_gpus(launch.gpus_per_node)} per node requested, but the nodes of "
                        f"partition {name!r} have {have} (sinfo GRES); choose a GPU partition (launch.partition) or "
                        "launch.gpus_per_node=0 for a CPU job")
    return problems


def _gpus(count: int) -> str:
    """`1 GPU`, `8 GPUs`."""
    return f"{count} GPU{'s' * (count != 1)}"


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
    """The most useful single line of a submission error: Slurm's own `sbatch: error: ...` when present, else the
    last `sbatch: ...` line (`sbatch: unrecognized option '--bogus-flag'`, not the `Try "sbatch --help"` after it),
    else the last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"(sbatch|srun|slurm).*error", line, re.I)]
    said = [line for line in lines if re.match(r"(sbatch|srun|salloc): ", line)]
    chosen = errors or said or lines
    return chosen[-1] if chosen else type(error).__name__


# the launch.* field an sbatch option comes from (extra_sbatch options are matched first), and the words of sbatch's
# refusals that name no option
_OPTION_FIELDS = {"constraint": "constraint", "partition": "partition", "account": "account", "qos": "qos",
                  "time": "time_min", "mem": "mem_gb", "gpus-per-node": "gpus_per_node", "job-name": "job_name",
                  "nodes": "nodes", "ntasks-per-node": "tasks_per_node", "cpus-per-task": "cpus_per_task"}
_REFUSAL_FIELDS = {"feature specification": "constraint", "partition": "partition", "account": "account",
                   "qos": "qos", "time limit": "time_min", "memory": "mem_gb", "gres": "gpus_per_node"}


def refused_field(line: str, launch: LaunchConfig) -> str | None:
    """Which `launch.*` setting an sbatch refusal `line` is about, as `launch.extra_sbatch: --bogus-flag` or
    `launch.constraint='bigmem'`, or None when it names none that sbatch was given (or none at all)."""
    options = re.findall(r"--([A-Za-z][\w-]*)", line)
    extra = [item for item in launch.extra_sbatch for name in options
             if re.match(rf"(#SBATCH\s+)?--{re.escape(name)}(=|$)", item.strip())]
    if extra:
        return f"launch.extra_sbatch: {extra[0]}"
    words = line.lower()
    fields = [_OPTION_FIELDS[name] for name in options if name in _OPTION_FIELDS]
    fields += [field for word, field in _REFUSAL_FIELDS.items() if word in words]
    extra_keys = launch.extra_sbatch_parameters()
    if "gpus_per_node" in fields and "gres" in extra_keys:
        return f"launch.extra_sbatch: --gres={extra_keys['gres']}"
    for field in fields:
        value = getattr(launch, field)
        if value not in (None, 0):  # unset (None) or no GPUs (0): not given to sbatch
            return f"launch.{field}={value!r}"
    return None


# the header line of a Python exception: `module.Class: message`, or `module.Class` alone (no message)
_RAISED = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)(?:: (?P<message>.*))?$")
# submitit's FailedJobError text: `...with trace:`, a dashed line, the traceback, a dashed line, the log paths
_TRACE = re.compile(r"with trace:\n-+\n(?P<trace>.*)\n-+\nYou can check full logs", re.S)


def raised_exception(text: str) -> tuple[str, str] | None:
    """`(qualified class name, first line of its message)` of the exception a traceback ends with, or None.

    The header is the first line at column 0 after the last frame (`  File ...` and its indented source and caret
    lines), whatever the class is called (`sparsetrain.data.base.DataNotFound: data.path: ...`); lines after it
    (a multi-line message, notes) are left out. A chained traceback ends with the exception that was raised last.
    """
    trace = _TRACE.search(text)
    lines = (trace.group("trace") if trace else text).rstrip().splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith('  File "')]
    after = lines[frames[-1] + 1:] if frames else lines
    header = next((line for line in after if line and not line[0].isspace()), None)
    match = _RAISED.match(header) if header is not None else None
    return (match.group("name"), match.group("message") or "") if match else None


def _error_class(name: str) -> type | None:
    """The class `module.Class` names, when its module imports (None otherwise, e.g. a builtin `KeyError`)."""
    import importlib

    module, _, cls = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), cls, None) if module else None
    except ImportError:
        return None
    return found if isinstance(found, type) else None


def job_failure(error: BaseException) -> tuple[str, int]:
    """What a failed job raised, as the one line and exit code a local `sparsetrain run` gives it.

    A job's exception reaches the launcher as submitit's FailedJobError, whose message is the job's traceback
    followed by its log paths; the traceback's last exception (`raised_exception`) is what the job raised. A
    sparsetrain error (`sparsetrain.errors`, whatever its class name: `DataNotFound` is an InputError) gives its
    message and the class's exit code, with the log path; anything else `Class: message` and 1. Other errors (a
    job that ended without a result) their own text and 1.
    """
    text = str(error)
    raised = raised_exception(text) if isinstance(error, submitit.core.utils.FailedJobError) else None
    if raised is None:
        return one_line(error), 1
    name, message = raised
    logs = re.findall(r"^\s*- (\S+\.err)\s*$", text, re.M)
    where = f" (the job's log: {logs[0]})" if logs else ""
    kind = _error_class(name)
    if kind is not None and issubclass(kind, SparsetrainError):
        return f"{message}{where}", kind.exit_code
    said = f"{name.rpartition('.')[2]}: {message}" if message else name.rpartition(".")[2]
    return f"{said}{where}", 1


def submit(config: RunConfig, cluster: str, phases: list[str] | None = None) -> submitit.Job:
    """Validate and submit the pipeline as one job of `world_size` tasks.

    Raises:
        LaunchError: invalid launch settings, or the scheduler refused the job (its message, one line).
    """
    validate_launch(config, cluster)
    executor = make_executor(config, cluster)
    with submission_errors(log_folder(config), config.launch):
        return executor.submit(PipelineJob(config_to_dict(config), phases))


# what submitit writes into the log folder before calling sbatch (renamed after the job id once sbatch accepts it)
_SUBMISSION_TEMPORARIES = re.compile(r"[0-9a-f]{32}\.pkl|\.submission_file_[0-9a-f]{32}\.sh")


@contextlib.contextmanager
def submission_errors(folder: Path | None = None, launch: LaunchConfig | None = None) -> Iterator[None]:
    """Turn a refused submission into one LaunchError line (submitit also prints sbatch's stderr: muted here):
    sbatch's own line (`one_line`), then the `launch.*` setting it refused when `launch` is given and the line
    points at one (`refused_field`): `submission failed: sbatch: unrecognized option '--bogus-flag' (from
    launch.extra_sbatch: --bogus-flag)`.

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
        line = one_line(err)
        field = refused_field(line, launch) if launch is not None else None
        raise LaunchError(f"submission failed: {line}" + (f" (from {field})" if field else "")) from None


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


def slurm_job(job_id: str) -> dict[str, str]:
    """`scontrol show job -o` as {field: value} (`JobState`, `Reason`, `Restarts`, `EligibleTime`, ...; no accounting
    database needed); empty once Slurm forgot the job."""
    result = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                            timeout=30, check=False)
    return scontrol_fields(result.stdout) if result.returncode == 0 else {}


def scontrol_fields(text: str) -> dict[str, str]:
    """The `Key=value` fields of one `scontrol show job -o` line (a value with spaces keeps its first word)."""
    return dict(re.findall(r"(?:^|\s)([A-Za-z][\w/:]*)=(\S*)", text))


def slurm_state(job_id: str) -> str:
    """Job state from `scontrol show job`; UNKNOWN once Slurm forgot it."""
    return slurm_job(job_id).get("JobState", "UNKNOWN")


def job_standing(job_id: str, fields: dict[str, str]) -> str:
    """Where a job still in Slurm stands, from `slurm_job` fields: `job 12 is still PENDING (Reason=Priority)`, or for
    a job Slurm requeued `job 12 is PENDING again after 2 restarts (Restarts=2: requeued by a time limit, a
    preemption or `scontrol requeue`; Reason=BeginTime; eligible at 2026-12-01T12:03:24; `scontrol update JobId=12
    StartTime=now` starts it sooner)` (a requeued job waits about 2 minutes; `Reason` may still be None just after
    the requeue)."""
    state, reason = fields.get("JobState", "UNKNOWN"), fields.get("Reason", "None")
    restarts = int(fields["Restarts"]) if fields.get("Restarts", "").isdigit() else 0
    said = [f"Reason={reason}"] if state == "PENDING" and reason not in ("None", "") else []
    if not restarts:
        return f"job {job_id} is still {state}" + (f" ({said[0]})" if said else "")
    if state == "PENDING" and fields.get("EligibleTime", "Unknown") not in ("Unknown", "N/A", ""):
        said.append(f"eligible at {fields['EligibleTime']}; `scontrol update JobId={job_id} StartTime=now` starts it "
                    "sooner")
    again = " again" if state in ("PENDING", "RUNNING") else ""
    times = f"{restarts} restart{'s' * (restarts != 1)}"
    return (f"job {job_id} is {state}{again} after {times} (Restarts={restarts}: requeued by a time limit, a "
            "preemption or `scontrol requeue`" + "".join(f"; {part}" for part in said) + ")")


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


def no_result(job: submitit.Job, state: str | None = None, note: str = "", launch: LaunchConfig | None = None) -> str:
    """`job N ended (STATE) without a result<note>: <its log's cause>; see <rank 0's log>`: a job that ended without
    rank 0's result, with the decisive line of rank 0's log (`log_cause`) when it has one."""
    ended = f"ended ({state})" if state else "ended"
    log = rank0_job(job).paths.stderr
    cause = log_cause(log, launch, generic=state not in _SELF_EXPLAINED)
    return f"job {job.job_id} {ended} without a result{note}{f': {cause}' if cause else ''}; see {log}"


# final states that say themselves why a job ended: their log's error lines are its consequences (W&B, teardown)
_SELF_EXPLAINED = ("CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE")
# srun's refusal of its own command line: an option or an option's value it does not take
_SRUN_REFUSAL = re.compile(r"srun: (unrecognized option|invalid option|option .* requires|error: (unrecognized|"
                           r"invalid)|fatal: Failed to parse)")


def log_cause(log: Path, launch: LaunchConfig | None = None, generic: bool = True) -> str:
    """The decisive line of the log of a job that ended without a result: srun's refusal of its command line
    (`srun: unrecognized option '--bogus'`, the first of its lines), else (`generic`) the last line naming an error
    (`slurmstepd: error: Detected 1 oom_kill event ...`); with `launch`, the `launch.srun_args` item srun refused:
    ` (from launch.srun_args: --bogus)`, as `submission_errors` names extra_sbatch's. '' without a log or such a line.
    """
    try:
        text = log.read_text(errors="replace")[-65536:]
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    srun = [line for line in lines if _SRUN_REFUSAL.match(line)]
    errors = [line for line in lines if re.search(r"\berror\b", line, re.I)] if generic else []
    if not srun:
        return errors[-1] if errors else ""
    item = srun_args_item(srun[0], launch.srun_args) if launch is not None else None
    return srun[0] + (f" (from launch.srun_args: {item})" if item else "")


def srun_args_item(line: str, srun_args: list[str]) -> str | None:
    """The item of `srun_args` whose option an srun refusal `line` names (`--bogus` for `srun: unrecognized option
    '--bogus'`, `--cpu-bind=x` for `srun: error: unrecognized --cpu-bind argument "x"`), or None."""
    for name in re.findall(r"--([A-Za-z][\w-]*)", line):
        for item in srun_args:
            if re.match(rf"--{re.escape(name)}(=|$)", item.strip()):
                return item
    return None


def srun_args_problem(launch: LaunchConfig) -> str | None:
    """srun's refusal of `launch.srun_args` before submission (`srun --test-only`, which submits nothing), as one line
    naming the field: `launch.srun_args: srun --test-only refuses --bogus: srun: unrecognized option '--bogus'`; None
    when srun takes them, without srun here, or when srun does not answer in time (the job then tells)."""
    if not launch.srun_args or shutil.which("srun") is None:
        return None
    try:
        result = subprocess.run(["srun", "--test-only", *SRUN_DEFAULT_ARGS, *launch.srun_args, "true"],
                                capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    refusal = next((line.strip() for line in result.stderr.splitlines() if _SRUN_REFUSAL.match(line.strip())), None)
    if result.returncode == 0 or refusal is None:  # a refusal of resources (a busy or small cluster) is sbatch's
        return None
    item = srun_args_item(refusal, launch.srun_args) or " ".join(launch.srun_args)
    return f"launch.srun_args: srun --test-only refuses {item}: {refusal}"


def wait_result(job: submitit.Job, timeout_s: float | None = None, poll_s: float = 2.0,
                launch: LaunchConfig | None = None) -> Any:
    """Wait for rank 0's result, through requeues, without relying on `sacct`.

    Raises:
        LaunchError: the job ended without a result (`no_result`; `launch`: the job's settings, to name the
            launch.srun_args item srun refused); WaitTimeout: `timeout_s` passed (the job goes on).
        submitit.core.utils.FailedJobError: the job raised; the message holds its traceback.
    """
    if not isinstance(job, submitit.SlurmJob):
        return job.results()[0]
    rank0 = rank0_job(job)
    start = time.monotonic()
    while not rank0.paths.result_pickle.exists():
        fields = slurm_job(job.job_id)
        state = fields.get("JobState", "UNKNOWN")
        if state in FINAL_STATES or state == "UNKNOWN":
            time.sleep(3 * poll_s)  # the result file may still be landing on a shared file system
            if not rank0.paths.result_pickle.exists():
                raise LaunchError(no_result(job, state, launch=launch))
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise WaitTimeout(f"stopped waiting after --timeout {timeout_s:g} s: {job_standing(job.job_id, fields)} "
                              f"and goes on (`scancel {job.job_id}` stops it); rank 0's log: {rank0.paths.stderr}")
        time.sleep(poll_s)
    return rank0.result()
