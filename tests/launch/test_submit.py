"""Launch settings without a cluster: sbatch golden file, one-line validation errors, dry run, sweep grids."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from launch.cli import launch_main, sweep_main
from launch.dry_run import dry_run_report
from launch.job import PORT_RANGE, master_port
from launch.submit import (
    LaunchError,
    Partition,
    job_failure,
    job_standing,
    sbatch_script,
    scontrol_fields,
    submission_errors,
    validate_launch,
)
from launch.sweep import SweepPoint, collect, expand, pareto_front, parse_grid, split_values, summarize_report
from sparsetrain.config.loader import ConfigError, load_config
from tests.usage_errors import one_line

GOLDEN = Path(__file__).parent / "golden"

SBATCH_2X8 = [
    "launch.nodes=2", "launch.tasks_per_node=8", "launch.gpus_per_node=8", "launch.cpus_per_task=12",
    "launch.mem_gb=480", "launch.time_min=240", "launch.partition=gpu", "launch.account=sparse",
    "launch.qos=high", "launch.constraint=h100", "launch.log_folder=/shared/runs/big/slurm",
    'launch.extra_sbatch=["--exclusive", "#SBATCH --mail-type=END"]',
    'launch.setup=["module load cuda/12.4", "source .venv/bin/activate"]', "out_dir=/shared/runs/big",
]


def _normalized_sbatch(overrides: list[str]) -> str:
    return sbatch_script(load_config(None, overrides)).replace(sys.executable, "<PYTHON>")


def test_sbatch_golden_2_nodes_8_gpus() -> None:
    text = _normalized_sbatch(SBATCH_2X8)
    golden = GOLDEN / "sbatch_2x8.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"sbatch script differs from {golden} (UPDATE_GOLDEN=1 rewrites it)"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["launch.nodes=0"], "launch.nodes"),
        (["launch.tasks_per_node=0"], "launch.tasks_per_node"),
        (["launch.gpus_per_node=8", "launch.tasks_per_node=3"], "launch.gpus_per_node"),
        (["launch.extra_sbatch=[exclusive]"], "launch.extra_sbatch"),
        (["launch.time_min=0"], "launch.time_min"),
        (["launch.colour=red"], "launch.colour"),
    ],
)
def test_bad_launch_config_is_one_line_naming_the_field(overrides: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert message.startswith(f"{field}:"), f"error should name {field}: {message!r}"
    assert "\n" not in message, f"error should be one line: {message!r}"


@pytest.mark.parametrize(("override", "expected"), [
    ("launch.time_min=1000000000000", "launch.time_min: expected an int in 1..525600, got "
     "1000000000000"),
    ("launch.mem_gb=1e12", "launch.mem_gb: expected a number > 0 and <= 65536 or null, got 1e12"),
])
def test_launch_time_and_memory_are_bounded_at_load(override: str, expected: str) -> None:
    """Were accepted unbounded (1e12 minutes, 1e12 GB per node) into the sbatch script; the bounds are a year, as
    deepspeed.timeout_min, and 64 TiB per node, above any node built. The largest values still make a script."""
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == expected
    script = sbatch_script(load_config(None, ["launch.time_min=525600", "launch.mem_gb=65536"]))
    assert "#SBATCH --time=525600" in script and "#SBATCH --mem=65536GB" in script, script


def test_launch_gpu_mem_gb_is_bounded_at_load() -> None:
    """Was accepted unbounded (1e12 GiB per device) into the dry run's memory plan, as launch.time_min and
    launch.mem_gb were; the bound is 1024 GiB, over 3x the largest GPU memory sold. 1024 itself still loads."""
    with pytest.raises(ConfigError) as info:
        load_config(None, ["launch.gpu_mem_gb=1e12"])
    assert str(info.value) == "launch.gpu_mem_gb: expected a number > 0 and <= 1024 or null, got 1e12"
    assert load_config(None, ["launch.gpu_mem_gb=1024"]).launch.gpu_mem_gb == 1024


@pytest.mark.parametrize(
    ("cluster", "overrides", "field"),
    [
        ("local", ["launch.nodes=2"], "launch.nodes"),
        ("debug", ["launch.tasks_per_node=2"], "launch.tasks_per_node"),
    ],
)
def test_cluster_specific_checks(cluster: str, overrides: list[str], field: str) -> None:
    with pytest.raises(LaunchError, match=rf"^{field}:"):
        validate_launch(load_config(None, overrides), cluster)


def test_cli_reports_bad_config_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"out_dir: {tmp_path / 'run'}\n")
    code = launch_main([str(config), "launch.nodes=0", "--cluster", "local", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: launch.nodes:") and "\n" not in err, err


def test_dry_run_shows_script_world_size_and_pruning_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a cluster of two 2-CPU nodes, as the local test cluster: the plan for 4 tasks per node is still printed, with a
    # warning that a submission here would be refused (sbatch queued such a job forever)
    monkeypatch.setattr("launch.submit.slurm_partitions", lambda: {"debug": Partition(nodes=2, most_cpus=2,
                                                                                      default=True)})
    config = load_config(None, [f"out_dir={tmp_path / 'run'}", "launch.nodes=2", "launch.tasks_per_node=4",
                                "launch.gpus_per_node=4"])
    text = dry_run_report(config, "slurm")
    assert "#SBATCH --ntasks-per-node=4" in text and "#SBATCH --nodes=2" in text
    assert "world size: 8 (nodes=2 × tasks_per_node=4" in text
    assert ("warning: this cluster cannot run it as it is (a submission here is refused): launch.cpus_per_task: "
            "tasks_per_node 4 × cpus_per_task 1 = 4 CPUs per node, but the nodes of partition 'debug' have at most 2"
            in text), text
    with pytest.raises(LaunchError, match=r"^launch.cpus_per_task: tasks_per_node 4 × cpus_per_task 1 = 4 CPUs"):
        validate_launch(config, "slurm")
    for layer, size in (("fc1.weight", "19,200"), ("fc2.weight", "30,000"), ("head.weight", "1,000")):
        assert any(line.startswith(layer) and line.endswith(size) for line in text.splitlines()), (layer, text)
    assert not (tmp_path / "run").exists(), "a dry run must not create the run directory"


def test_dry_run_refuses_a_pruning_setting_for_a_missing_layer(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"out_dir: {tmp_path / 'run'}\n")
    code = launch_main([str(config), "prune={rule: layer_sparsity, layer_sparsity: {fc9.weight: 0.5}}", "--cluster",
                        "local", "--dry-run"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == ("error: prune.layer_sparsity.fc9.weight: not a prunable layer of this model (prunable: "
                   "fc1.weight, fc2.weight, head.weight)"), err


def test_sweep_grid_expands_to_distinct_out_dirs(tmp_path: Path) -> None:
    fixed, grid = parse_grid(["alpha0=1e-5,3e-5", "beta=10,20", "seed=3"])
    assert fixed == ["seed=3"] and grid == {"alpha0": ["1e-5", "3e-5"], "beta": ["10", "20"]}
    base, points = expand(None, [f"out_dir={tmp_path}", "alpha0=1e-5,3e-5", "beta=10,20", "seed=3"])
    assert [p.name for p in points] == ["alpha0=1e-5_beta=10", "alpha0=1e-5_beta=20", "alpha0=3e-5_beta=10",
                                        "alpha0=3e-5_beta=20"]
    assert len({p.config.out_dir for p in points}) == 4
    assert all(Path(p.config.out_dir).parent == tmp_path and p.config.seed == 3 for p in points)
    assert points[3].config.regularizer.alpha0 == 3e-5 and points[3].config.regularizer.beta == 20


def test_sweep_rejects_swept_resources() -> None:
    with pytest.raises(ConfigError, match=r"^launch.tasks_per_node: cannot be swept"):
        parse_grid(["launch.tasks_per_node=1,2"])
    assert split_values("[1,2],[3,4],5") == ["[1,2]", "[3,4]", "5"]


def test_pareto_front_and_report_summary() -> None:
    points = [(0.5, 0.9), (0.9, 0.8), (0.8, 0.7), (0.95, 0.5), (0.5, 0.85)]
    assert pareto_front(points) == [0, 1, 3]
    phases = {"dense": {"metric": 95.0, "accuracy": 95.0}, "prune": {"metric": 93.0, "sparsity": 0.72},
              "finetune": {"metric": 94.5, "test_accuracy": 12.0}}
    summary = summarize_report({"format_version": 2, "world_size": 2, "sparsity": 0.72, "phases": phases})
    assert summary == {"sparsity": 0.72, "metric": 94.5, "metric_name": "finetune.metric"}
    no_finetune = {"format_version": 2, "sparsity": 0.5, "phases": {k: phases[k] for k in ("dense", "prune")}}
    assert summarize_report(no_finetune)["metric_name"] == "prune.metric"
    old = summarize_report({"world_size": 2, "sparsity": 0.72, "dense": {"metric": 95.0},  # report format 1
                            "pruned": {"metric": 93.0, "sparsity": 0.72}, "finetuned": {"metric": 94.5}})
    assert old == {"sparsity": 0.72, "metric": 94.5, "metric_name": "finetune.metric"}


def test_master_port_is_shared_by_all_tasks_outside_ephemeral_ports_and_new_per_attempt() -> None:
    ports = {master_port("1234", 0) for _ in range(3)}
    assert len(ports) == 1, "every task of one attempt must compute the same port"
    attempts = [master_port("1234", restarts) for restarts in range(4)]
    assert len(set(attempts)) == 4, f"a requeued attempt must not reuse the previous port: {attempts}"
    assert all(PORT_RANGE[0] <= port < PORT_RANGE[1] < 32769 for port in attempts + [master_port("77_3", 0)])


@pytest.mark.slow
def test_local_cluster_runs_two_ranks_through_submitit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same PipelineJob outside Slurm (submitit's LocalExecutor): works on machines without a cluster."""
    quickstart = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    out_dir = tmp_path / "run"
    code = launch_main([str(quickstart), "--cluster", "local", "--wait", "--timeout", "600", "launch.tasks_per_node=2",
                        "phases.dense.epochs=0.25", "phases.sparsify.epochs=0.5", "phases.finetune.epochs=0.25",
                        "tracking.mode=disabled", "deploy.formats=[]", "deploy.latency=false",
                        "report.accuracy_curve=false", "report.plots=false", f"out_dir={out_dir}"])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert json.loads((out_dir / "report.json").read_text())["world_size"] == 2
    assert "world size 2" in capsys.readouterr().out


def _failed_job(raised: str) -> Exception:
    """submitit's FailedJobError as a launcher receives it: the job's traceback, then its log paths (the message
    format of submitit.core.core.Job._get_outcome_and_result)."""
    from submitit.core.utils import FailedJobError

    trace = ("Traceback (most recent call last):\n  File \"/x/launch/job.py\", line 80, in __call__\n"
             f"    return run_pipeline(config)\n{raised}\n")
    return FailedJobError(f"Job (task=0) failed during processing with trace:\n----------------------\n{trace}\n"
                          "----------------------\nYou can check full logs with 'job.stderr(0)' and 'job.stdout(0)'"
                          "or at paths:\n  - /runs/a/slurm/581_0_log.err\n  - /runs/a/slurm/581_0_log.out")


def test_a_failed_jobs_own_error_is_the_line_and_exit_code_a_local_run_gives() -> None:
    """Fresh-user trial: `launch --wait` printed only the job's .out path (`job 581 failed: - .../581_0_log.out`,
    exit 1), where a local run of the same settings prints the refusal in one line and exits 2."""
    refused = ("sparsetrain.errors.InputError: out_dir: /runs/a holds a run with other settings: seed 0 -> 1; use a "
               "new out_dir, or resume=false to start over")
    assert job_failure(_failed_job(refused)) == (
        "out_dir: /runs/a holds a run with other settings: seed 0 -> 1; use a new out_dir, or resume=false to start "
        "over (the job's log: /runs/a/slurm/581_0_log.err)", 2)
    assert job_failure(_failed_job("sparsetrain.errors.NonFiniteError: loss is nan at sparsify step 3"))[1] == 4
    assert job_failure(_failed_job("KeyError: 'fc1'")) == ("KeyError: 'fc1' (the job's log: "
                                                            "/runs/a/slurm/581_0_log.err)", 1)
    assert job_failure(LaunchError("job 7 ended (FAILED) without a result; see x.err")) == (
        "job 7 ended (FAILED) without a result; see x.err", 1)


def _captured_failure(name: str) -> Exception:
    """submitit's FailedJobError with the text a real Slurm job gave (`job.result()` of trial 22's jobs, kept in
    tests/launch/golden/submitit_failure_<name>.txt)."""
    from submitit.core.utils import FailedJobError

    return FailedJobError((GOLDEN / f"submitit_failure_{name}.txt").read_text())


def test_a_job_error_is_found_whatever_its_class_is_called() -> None:
    """Fresh-user trial 22: a job that raised `sparsetrain.data.base.DataNotFound` (an InputError whose name does not
    end in Error) printed `job 504 failed: - /tmp/t22/dp2/slurm/504_0_log.out` and exited 1; the text is the real
    FailedJobError of that job."""
    assert job_failure(_captured_failure("data_not_found")) == (
        "data.path: IDX folder not found: /nonexistent/fm (the job's log: /tmp/t22/dp2/slurm/504_0_log.err)", 2)
    assert job_failure(_captured_failure("timed_out")) == (
        "UncompletedJobError: Job not requeued because: timed-out too many times. (the job's log: "
        "/tmp/t22/tl/slurm/503_0_log.err)", 1)
    assert job_failure(_failed_job("mypackage.Stop")) == ("Stop (the job's log: /runs/a/slurm/581_0_log.err)", 1)
    multi = _failed_job("pydantic_core.ValidationError: 1 validation error\n  x\n    Field required")
    assert job_failure(multi)[0] == "ValidationError: 1 validation error (the job's log: /runs/a/slurm/581_0_log.err)"


@pytest.mark.parametrize(("stderr", "overrides", "expected"), [
    ("sbatch: unrecognized option '--bogus-flag'\nTry \"sbatch --help\" for more information",
     ["launch.extra_sbatch=[--bogus-flag]"],
     "sbatch: unrecognized option '--bogus-flag' (from launch.extra_sbatch: --bogus-flag)"),
    ("sbatch: error: Batch job submission failed: Invalid feature specification", ["launch.constraint=bigmem"],
     "sbatch: error: Batch job submission failed: Invalid feature specification (from launch.constraint='bigmem')"),
    ("sbatch: error: invalid partition specified: nope\nsbatch: error: Batch job submission failed: Invalid "
     "partition name specified", ["launch.partition=nope"], "sbatch: error: Batch job submission failed: Invalid "
     "partition name specified (from launch.partition='nope')"),
    ("sbatch: error: Invalid --mail-type specification", ["launch.extra_sbatch=[--mail-type=BOGUS]"],
     "sbatch: error: Invalid --mail-type specification (from launch.extra_sbatch: --mail-type=BOGUS)"),
    ("Invalid time specification (pos=0): garbage\nsbatch: error: Invalid --begin specification", [],
     "sbatch: error: Invalid --begin specification"),
])
def test_a_refused_submission_is_sbatchs_line_naming_the_setting(stderr: str, overrides: list[str],
                                                                 expected: str) -> None:
    """Fresh-user trial 22: sbatch's stderr (captured from this cluster's sbatch) as submitit raises it. The line
    shown was `Try "sbatch --help" for more information` for an unknown option, and no setting was named."""
    from submitit.core.utils import FailedJobError

    with pytest.raises(LaunchError) as info, submission_errors(None, load_config(None, overrides).launch):
        raise FailedJobError(stderr)
    assert str(info.value) == f"submission failed: {expected}"


@pytest.mark.parametrize(("overrides", "expected"), [
    (["launch.time_min=1"], "launch.time_min: 1 min leaves no time before the requeue signal, which Slurm sends "
     "launch.signal_delay_s=120 s before the limit; each attempt needs at least 60 s to start and train: set "
     "launch.time_min=3 or more"),
    (["launch.time_min=5", "launch.signal_delay_s=300"], "launch.time_min: 5 min leaves no time before the requeue "
     "signal, which Slurm sends launch.signal_delay_s=300 s before the limit; each attempt needs at least 60 s to "
     "start and train: set launch.time_min=6 or more, or lower launch.signal_delay_s to 240 or less"),
])
def test_a_time_limit_within_the_signal_lead_is_refused_before_submission(
        overrides: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Fresh-user trial 22: `launch.time_min=1` with the default signal_delay_s=120 was submitted (and dry-run)
    silently; each attempt got USR2 ~20 s in, checkpointed, requeued, and the job failed after 4 attempts. Refused
    at submission, in the dry run and for a sweep, before anything is written; 3 minutes (60 s of work) is taken."""
    out = [f"out_dir={tmp_path / 'run'}", *overrides]
    for argv in (["--dry-run", *out], out):
        assert launch_main(["configs/quickstart.yaml", "--cluster", "slurm", *argv]) == 2
        assert capsys.readouterr().err.strip() == f"error: {expected}"
    assert sweep_main(["configs/quickstart.yaml", "alpha0=1e-5,3e-5", "--cluster", "slurm", *out]) == 2
    assert capsys.readouterr().err.strip() == f"error: {expected}"
    assert not any(tmp_path.iterdir())
    assert launch_main(["configs/quickstart.yaml", "--cluster", "slurm", "--dry-run", f"out_dir={tmp_path / 'run'}",
                        "launch.time_min=3"]) == 0
    assert "#SBATCH --time=3" in capsys.readouterr().out


def test_a_requeued_job_is_not_called_still_pending() -> None:
    """Fresh-user trial 22: `--timeout` said `job 503 is still PENDING and goes on` for a job that had run and hit its
    time limit twice (Restarts=2, Reason=BeginTime). The fields are a real `scontrol show job -o` line of a job just
    requeued (Reason is still None then)."""
    fields = scontrol_fields((GOLDEN / "scontrol_requeued.txt").read_text())
    assert job_standing("527", fields) == (
        "job 527 is PENDING again after 1 restart (Restarts=1: requeued by a time limit, a preemption or `scontrol "
        "requeue`; eligible at 2026-12-01T12:03:24; `scontrol update JobId=527 StartTime=now` starts it sooner)")
    fields.update(Restarts="2", Reason="BeginTime")
    assert "after 2 restarts (Restarts=2: requeued by a time limit, a preemption or `scontrol requeue`; Reason=" \
           "BeginTime; eligible at" in job_standing("527", fields)
    assert job_standing("8", {"JobState": "PENDING", "Reason": "Priority", "Restarts": "0"}) == (
        "job 8 is still PENDING (Reason=Priority)")
    assert job_standing("8", {"JobState": "RUNNING", "Reason": "None", "Restarts": "0"}) == "job 8 is still RUNNING"


def test_a_cancelled_job_says_where_it_stopped_and_how_to_resume(tmp_path: Path) -> None:
    """Fresh-user trial 22: after `scancel` the job's log said `stopped by SIGTERM without USR2; state saved, leaving
    requeueing to Slurm` (a cancelled job is never requeued) and `launch --wait` said `job 511 failed: job 511 ended
    (CANCELLED) without a result`, neither naming the checkpoint or the command that resumes. The state.json is the
    real one of trial 22's cancelled run (checkpoint at sparsify step 534)."""
    from launch.cli import resume_hint
    from launch.job import launch_resume_command, stopped_by_sigterm
    from sparsetrain.cli import saved_point

    out = tmp_path / "c1"
    out.mkdir()
    (out / "state.json").write_text((GOLDEN / "state_cancelled_mid_sparsify.json").read_text())
    config = {"out_dir": str(out), "resume": False}
    # trial 23: after `scontrol requeue` the line said `resume with ...`; run while the job was queued again, the
    # command started a second job in the out_dir. The line says to check squeue first.
    assert stopped_by_sigterm(saved_point(out), launch_resume_command(config, ["sparsify", "prune"]), "653") == (
        "preempted: stopped by SIGTERM (scancel, `scontrol requeue`, or the cluster stopping the job) with a "
        "checkpoint at sparsify step 534; a job Slurm requeues continues from it by itself, a cancelled one is not "
        "requeued: if `squeue -j 653` no longer lists it, resume with `sparsetrain "
        f"launch {out}/config.yaml --cluster slurm --phase sparsify --phase prune resume=true`")
    assert launch_resume_command({"out_dir": str(out), "resume": True}, None) == (
        f"sparsetrain launch {out}/config.yaml --cluster slurm")
    argv = ["configs/quickstart.yaml", "--cluster", "slurm", "--wait", f"out_dir={out}", "resume=false"]
    assert resume_hint(out, argv) == (
        "; the run has a checkpoint at sparsify step 534: resubmitting resumes from it: `sparsetrain launch "
        f"configs/quickstart.yaml --cluster slurm --wait out_dir={out}`")
    assert resume_hint(tmp_path / "empty", argv) == ""


def test_a_job_that_timed_out_too_often_says_how_to_resume(tmp_path: Path) -> None:
    """Fresh-user trial 22: the job that hit its time limit 4 times ended `FAILED` with `UncompletedJobError: Job not
    requeued because: timed-out too many times.`, its checkpoint intact, and `launch --wait` did not say that a new
    submission continues from it. The FailedJobError text and the state.json are real ones of trial 22."""
    from launch.cli import failure_line

    out = tmp_path / "tl"
    out.mkdir()
    (out / "state.json").write_text((GOLDEN / "state_cancelled_mid_sparsify.json").read_text())
    argv = ["configs/lenet5_fashion.yaml", "--cluster", "slurm", "--wait", f"out_dir={out}"]
    assert failure_line("503", _captured_failure("timed_out"), out, argv) == (
        "job 503 failed: UncompletedJobError: Job not requeued because: timed-out too many times. (the job's log: "
        "/tmp/t22/tl/slurm/503_0_log.err); the run has a checkpoint at sparsify step 534: resubmitting resumes from "
        f"it: `sparsetrain launch configs/lenet5_fashion.yaml --cluster slurm --wait out_dir={out}`", 1)
    assert failure_line("504", _captured_failure("data_not_found"), out, argv) == (
        "job 504 failed: data.path: IDX folder not found: /nonexistent/fm (the job's log: "
        "/tmp/t22/dp2/slurm/504_0_log.err)", 2)


def test_a_sweep_point_whose_job_failed_is_failed_even_with_an_earlier_report(tmp_path: Path) -> None:
    """Fresh-user trial: re-running a sweep with `seed=1` into the same out_dir was refused in every job, yet the
    sweep printed the seed-0 reports as `done` and exited 0."""
    base = load_config(None, [f"out_dir={tmp_path}"])
    point = SweepPoint("alpha0=1e-5", ["alpha0=1e-5"], load_config(None, [f"out_dir={tmp_path / 'p'}"]))
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "report.json").write_text(json.dumps({"phases": {"finetune": {"metric": 91.4}},
                                                            "sparsity": 0.2}))
    point.result = {"status": "failed", "job_id": "577_0", "error": "out_dir: ... holds a run with other settings"}
    run = collect(base, [point], ["alpha0=1e-5", "seed=1"])["runs"][0]
    assert run["status"] == "failed" and run["error"].startswith("out_dir:") and run.get("metric") is None, run
    point.result = {"status": "done", "job_id": "577_0"}
    assert collect(base, [point], ["alpha0=1e-5"])["runs"][0]["status"] == "done"


def test_an_unknown_option_is_named_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Fresh-user trial: `sweep ... --wait out_dir=D` (when sweep had no --wait) said `unrecognized arguments: --wait
    phases.dense.epochs=1 ... out_dir=D`, calling the valid overrides unrecognized too."""
    with pytest.raises(SystemExit) as stop:
        sweep_main(["configs/quickstart.yaml", "alpha0=1e-5,3e-5", "--follow", f"out_dir={tmp_path}", "seed=1"])
    err = one_line(capsys.readouterr().err)
    assert stop.value.code == 2 and err.startswith("sparsetrain sweep: error: unrecognized option --follow;"), err
    assert "out_dir=" not in err and "seed=1" not in err, err


@pytest.mark.parametrize("value", ["nan", "-5", "0", "soon"])
def test_a_timeout_that_is_not_a_positive_number_is_one_line(value: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`--timeout nan` waited forever (no elapsed time is > nan) and `--timeout -5` stopped waiting at once; both
    were accepted as floats. Nothing is submitted."""
    for main in (launch_main, sweep_main):
        sweep = ["alpha0=1e-5,3e-5"] if main is sweep_main else []
        with pytest.raises(SystemExit) as stop:
            main(["configs/quickstart.yaml", *sweep, f"out_dir={tmp_path}", "--cluster", "local", "--timeout", value])
        err = one_line(capsys.readouterr().err)
        assert stop.value.code == 2 and err.endswith(f"error: argument --timeout: expected a number > 0, got '{value}'")
    assert not any(tmp_path.iterdir())


def test_sweep_table_heads_the_metric_column_with_the_key_sweep_json_uses(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The table headed the column `finetune.metric` once runs were done (`metric` before, or when runs ended in
    different phases), where sweep.json holds those values under `metric` (and the phase in `metric_name`)."""
    quickstart = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    argv = [str(quickstart), "alpha0=1e-5,3e-5", "--collect", f"out_dir={tmp_path}"]
    header = ["point", "state", "job", "sparsity", "compression", "metric", "pareto"]  # padded to the widest cell
    (tmp_path / "alpha0=1e-5").mkdir()
    (tmp_path / "alpha0=1e-5" / "report.json").write_text(json.dumps(
        {"format_version": 2, "sparsity": 0.5, "phases": {"prune": {"metric": 90.0}, "finetune": {"metric": 91.4}}}))
    for phases in ({"prune": {"metric": 88.0}, "finetune": {"metric": 89.0}}, {"prune": {"metric": 88.0}}):
        (tmp_path / "alpha0=3e-5").mkdir(exist_ok=True)
        (tmp_path / "alpha0=3e-5" / "report.json").write_text(json.dumps(
            {"format_version": 2, "sparsity": 0.7, "phases": phases}))
        assert sweep_main(argv) == 0
        lines = capsys.readouterr().out.splitlines()
        runs = json.loads((tmp_path / "sweep.json").read_text())["runs"]
        assert lines[0].split() == header, lines
        assert lines[1].split()[3:6] == ["50.0", "%", "2.00x"], lines  # no compression_ratio: 1 / (1 - sparsity)
        assert lines[1].split()[6] == f"{runs[0]['metric']:.2f}", lines
        assert runs[0]["metric_name"] == "finetune.metric" and lines[0].split()[5] in runs[0], runs
        assert lines[0].split()[4] in runs[0], runs  # the compression column: sweep.json's `compression`


def test_sweep_table_names_what_sparsity_and_compression_count(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The run's report table says sparsity is `of prunable weights (conv/linear)` and compression over `all
    parameters`; the sweep table printed both columns without their scope. One line under its rows names them."""
    quickstart = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    (tmp_path / "alpha0=1e-5").mkdir()
    (tmp_path / "alpha0=1e-5" / "report.json").write_text(json.dumps(
        {"format_version": 2, "sparsity": 0.9, "compression_ratio": 7.5, "phases": {"finetune": {"metric": 91.4}}}))
    assert sweep_main([str(quickstart), "alpha0=1e-5,3e-5", "--collect", f"out_dir={tmp_path}"]) == 1  # one missing
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:6] == ["alpha0=1e-5", "done", "-", "90.0", "%", "7.50x"], lines
    assert lines[3] == ("sparsity of prunable weights (conv/linear); compression over all parameters (dense count / "
                        "non-zero; removed filters count)"), lines
    assert lines[4].startswith("alpha0=3e-5: no job recorded"), lines


def _method2_report(dense: int, pruned: int, metric: float) -> dict:
    """A finished Method 2 run's report.json, keyed as `sparsetrain.measure` writes it: no weight of the smaller model
    is zero (sparsity 0), so its compression is the parameters removed."""
    return {"format_version": 2, "world_size": 1, "sparsity": 0.0, "phases": {"finetune": {"metric": metric}},
            "params": {"total": pruned, "nonzero": pruned, "dense": dense, "pruned": pruned},
            "param_reduction": dense / pruned, "compression_ratio": dense / pruned}


def test_a_sweep_of_filter_removal_runs_compares_the_compression_they_achieved(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Fresh-user trial 15: two filter_fraction points (param_reduction 1.68 vs 3.51) sat on top of each other at
    sparsity 0 in the table, sweep.json and sweep_pareto.png, and the less accurate but 2x smaller run was not on the
    Pareto front. The front is taken over the compression the runs achieved (zeroed and removed parameters alike),
    with a Method 1 run on the same axis; Method 1's sparsity stays as it was."""
    recipe = Path(__file__).resolve().parents[2] / "configs" / "unet_synthetic.yaml"
    argv = [str(recipe), "prune.filter_fraction=0.3,0.6", "--collect", f"out_dir={tmp_path}"]
    for name, report in (("filter_fraction=0.3", _method2_report(488_001, 290_477, 33.33)),
                         ("filter_fraction=0.6", _method2_report(488_001, 139_033, 30.0))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(report))
    assert sweep_main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["point", "state", "job", "sparsity", "compression", "metric", "pareto"], lines
    assert lines[1].split()[3:] == ["0.0", "%", "1.68x", "filters", "removed", "33.33", "yes"], lines
    assert lines[2].split()[3:] == ["0.0", "%", "3.51x", "filters", "removed", "30.00", "yes"], lines
    runs = json.loads((tmp_path / "sweep.json").read_text())["runs"]
    assert [round(run["param_reduction"], 2) for run in runs] == [1.68, 3.51], runs
    assert [round(run["compression"], 2) for run in runs] == [1.68, 3.51], runs
    assert [run["params"]["pruned"] for run in runs] == [290_477, 139_033] and all(run["pareto"] for run in runs)
    assert (tmp_path / "sweep_pareto.png").stat().st_size > 1000
    method1 = {"format_version": 2, "sparsity": 0.72, "compression_ratio": 3.2,
               "phases": {"finetune": {"metric": 31.0}},
               "params": {"total": 1000, "nonzero": 312, "dense": 1000, "pruned": 312}}
    summary = summarize_report(method1)
    assert summary["sparsity"] == 0.72 and "param_reduction" not in summary, summary
    assert pareto_front([(1.68, 33.33), (3.51, 30.0), (3.2, 31.0)]) == [0, 1, 2]


def test_a_sweep_with_report_plots_false_draws_no_pareto_plot(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`report.plots: false` (no PNG per run) also holds for the sweep's summary: sweep.json is written, its `plot` is
    None, the last line says no sweep_pareto.png was drawn, and none is on disk (it was always drawn before)."""
    recipe = Path(__file__).resolve().parents[2] / "configs" / "unet_synthetic.yaml"
    argv = [str(recipe), "prune.filter_fraction=0.3,0.6", "--collect", f"out_dir={tmp_path}", "report.plots=false"]
    for name, report in (("filter_fraction=0.3", _method2_report(488_001, 290_477, 33.33)),
                         ("filter_fraction=0.6", _method2_report(488_001, 139_033, 30.0))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(report))
    assert sweep_main(argv) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"wrote {tmp_path / 'sweep.json'} (every run, JSON) (report.plots=false: no sweep_pareto.png)", last
    assert json.loads((tmp_path / "sweep.json").read_text())["plot"] is None
    assert not (tmp_path / "sweep_pareto.png").exists()


def test_launch_wait_says_what_a_filter_removal_run_removed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Fresh-user trial 15: `launch --wait` of a Method 2 run said `done: .../report.json (world size 2, sparsity
    0.0 %, finetune.metric 33.33)`; it gives the parameters removed, as `sparsetrain eval` words them. A real tiny run
    (the debug cluster: one rank in this process)."""
    from tests.method2.test_grad_count import TINY_UNET

    overrides = [*TINY_UNET, "phases.sparsify.epochs=1", "phases.finetune.epochs=1", "prune.filter_fraction=0.5",
                 "prune.round_to=1", "regularizer.count_window=3", "deepspeed.zero_stage=0", f"out_dir={tmp_path}"]
    recipe = Path(__file__).resolve().parents[2] / "configs" / "unet_synthetic.yaml"
    assert launch_main([str(recipe), "--cluster", "debug", "--wait", *overrides]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done: ")]
    p = report["params"]
    assert done == [f"done: {tmp_path / 'report.json'} (world size 1, params {p['dense']:,} -> {p['pruned']:,} "
                    f"({report['param_reduction']:.2f}x fewer, filters removed), finetune.metric "
                    f"{report['phases']['finetune']['metric']:.4g})"], done


def test_a_sweep_point_at_chance_is_marked_and_kept_off_the_pareto_front(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A collapsed point (alpha0 so strong the model ends at chance) has the sweep's highest compression, so it sat on
    the Pareto front as a trade-off like any other. Its report.json is a real collapsed run's (`COLLAPSING`); the
    other point's is written by hand with a lower compression, so without the mark both were on the front."""
    from sparsetrain.config import load_config
    from sparsetrain.pipeline import run_pipeline
    from tests.core.test_collapse import COLLAPSING

    run_pipeline(load_config(None, [*COLLAPSING, f"out_dir={tmp_path / 'alpha0=1'}"]))
    collapsed = json.loads((tmp_path / "alpha0=1" / "report.json").read_text())
    assert collapsed["phases"]["finetune"].get("at_chance"), collapsed["phases"]["finetune"]
    learned = {"format_version": 2, "sparsity": 0.04, "compression_ratio": 1.04,
               "phases": {"finetune": {"metric": 90.0}}}
    (tmp_path / "alpha0=1e-5").mkdir()
    (tmp_path / "alpha0=1e-5" / "report.json").write_text(json.dumps(learned))
    capsys.readouterr()
    recipe = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    assert sweep_main([str(recipe), "regularizer.alpha0=1,1e-5", "--collect", f"out_dir={tmp_path}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    metric = collapsed["phases"]["finetune"]["metric"]
    assert lines[1].split()[0] == "alpha0=1" and lines[1].split()[-3:] == [f"{metric:.2f}", "at", "chance"], lines
    assert lines[2].split()[0] == "alpha0=1e-5" and lines[2].split()[-2:] == ["90.00", "yes"], lines
    runs = {run["name"]: run for run in json.loads((tmp_path / "sweep.json").read_text())["runs"]}
    assert runs["alpha0=1"]["at_chance"] is True and runs["alpha0=1"]["pareto"] is False, runs
    assert runs["alpha0=1"]["compression"] > runs["alpha0=1e-5"]["compression"], runs
    assert runs["alpha0=1e-5"]["pareto"] is True and "at_chance" not in runs["alpha0=1e-5"], runs


@pytest.mark.parametrize(("timeout_min", "max_num_timeout", "requeued"), [
    (3, 0, False),  # trial 23's job: its one time limit was already one too many
    (3, 1, True),
    (120, 0, True),  # a USR2 early in a long attempt is a preemption, not a time-out: submitit requeues
])
def test_a_job_submitit_will_not_requeue_says_so_and_how_to_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, timeout_min: int,
        max_num_timeout: int, requeued: bool) -> None:
    """Trial 23: with launch.max_num_timeout reached the log said `requeueing the job, which continues from it` and
    `requeueing OUT; it resumes from its last checkpoint`, then submitit `Job not requeued because: timed-out too
    many times`. Rank 0 asks submitit's own handler (a real `SignalHandler`, as a Slurm task has) before saying
    which; the refused job gets the resume command and submitit still writes its result (UncompletedJobError)."""
    import signal

    import submitit
    from submitit.core.job_environment import SignalHandler

    from launch.job import PipelineJob, _StopOnSignal, not_requeued, requeue_refusal

    task = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "678", "SLURM_PROCID": "0", "SLURM_NTASKS": "1",
            "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "node1"}
    for name, value in task.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "tm"
    job = PipelineJob({"out_dir": str(out), "resume": True, "launch": {"max_num_timeout": max_num_timeout}})
    delayed = submitit.helpers.DelayedSubmission(job)
    delayed.set_timeout(timeout_min, max_num_timeout)
    paths = submitit.core.utils.JobPaths(tmp_path / "slurm", job_id="678", task_id=0)
    paths.folder.mkdir()
    handler = SignalHandler(submitit.JobEnvironment(), paths, delayed)
    assert requeue_refusal(handler.checkpoint_and_try_requeue) == (None if requeued else "timed-out too many times")
    if requeued:
        return
    stopper = _StopOnSignal()
    stopper.original_usr2 = handler.checkpoint_and_try_requeue
    stopper.requeue_wanted.set()
    saved = signal.getsignal(signal.SIGUSR2), signal.getsignal(signal.SIGTERM)
    caplog.set_level("INFO")
    try:
        with pytest.raises(submitit.core.utils.UncompletedJobError, match="timed-out too many times"):
            job._stop_after_preemption(stopper, rank=0)
    finally:
        signal.signal(signal.SIGUSR2, saved[0])
        signal.signal(signal.SIGTERM, saved[1])
    said = [record.getMessage() for record in caplog.records if record.name == "launch.job"]
    assert said == [not_requeued("the start", "timed-out too many times", 0,
                                 f"sparsetrain launch {out}/config.yaml --cluster slurm")], said
    assert said[0] == (f"preempted: stopped with a checkpoint at the start; not requeued: submitit says timed-out too "
                       f"many times (launch.max_num_timeout=0 reached); resume with `sparsetrain launch "
                       f"{out}/config.yaml --cluster slurm`")


def test_one_gpu_is_one_gpu() -> None:
    """Trial 22 item 16 / trial 23: `1 GPUs`."""
    with pytest.raises(ConfigError, match=r"^launch.gpus_per_node: 1 GPU cannot be split over tasks_per_node=2 "):
        load_config(None, ["launch.gpus_per_node=1", "launch.tasks_per_node=2"])


def test_a_job_without_a_result_quotes_its_logs_cause_and_the_setting(tmp_path: Path) -> None:
    """Trial 23: `launch.srun_args=[--bogus]` gave `job 673 ended (FAILED) without a result; see LOG`, the log holding
    only srun's refusal. The line quotes it and names the setting, as extra_sbatch's refusal does. The log is the
    real one of that job (golden)."""
    import submitit

    from launch.submit import log_cause, no_result

    folder = tmp_path / "slurm"
    folder.mkdir()
    log = folder / "696_0_log.err"
    log.write_text((GOLDEN / "srun_unrecognized_option_log.err").read_text())
    launch = load_config(None, ["launch.srun_args=[--bogus]"]).launch
    assert log_cause(log, launch) == "srun: unrecognized option '--bogus' (from launch.srun_args: --bogus)"
    assert no_result(submitit.SlurmJob(folder, "696"), "FAILED", launch=launch) == (
        f"job 696 ended (FAILED) without a result: srun: unrecognized option '--bogus' (from launch.srun_args: "
        f"--bogus); see {log}")
    assert no_result(submitit.SlurmJob(folder, "697"), "FAILED") == (
        f"job 697 ended (FAILED) without a result; see {folder / '697_0_log.err'}")  # no log: as before
