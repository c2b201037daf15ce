"""Sweep points (fresh-user trial 22): equal points refused, each point validated with its own values, finished points
skipped on a re-run, `--dry-run`, `--collect` of a sweep never submitted, one number format in the table.

No job runs here but one held Slurm job, cancelled at once (a `slurm` test); the finished point is a real tiny run in
this process.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from launch.cli import sweep_main
from launch.submit import sbatch_script
from launch.sweep import expand, finished
from sparsetrain.config.loader import ConfigError
from sparsetrain.pipeline import run_pipeline
from tests.core.conftest import TINY

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
# tests.core's tiny run on the quickstart recipe (whose prune rule is kept: its section names a threshold)
SHORT = [*(item for item in TINY if not item.startswith("prune.")), "phases.sparsify.epochs=0.5",
         "phases.finetune.epochs=0.3"]


HELD = 'launch.extra_sbatch=["--hold"]'  # a job that would be submitted waits until cancelled


def _cancel_own_jobs(out: Path) -> None:
    """Cancel the jobs submitted into `out` (those with files in its log folder), if any."""
    ids = sorted({path.name.split("_")[0] for path in (out / "slurm").glob("*_submitted.pkl")})
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, check=False)


def _sweep(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = sweep_main(argv)
    got = capsys.readouterr()
    return code, got.out, got.err


@pytest.mark.slurm
@pytest.mark.parametrize(("values", "expected"), [
    ("1e-4,0.0001", "error: alpha0: 1e-4 and 0.0001 are the same setting (points alpha0=1e-4_beta=10 and "
                    "alpha0=0.0001_beta=10 would run the same run twice, at once); give each value once"),
    ("1e-4,1e-4", "error: alpha0: 1e-4 is listed twice in the sweep list '1e-4,1e-4' (its two points would run at "
                  "once in one out_dir); give each value once"),
])
def test_points_of_equal_settings_are_refused_before_submission(slurm_cluster: None, values: str, expected: str,
                                                                tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 22: `alpha0=1e-4,1e-4` ran two jobs at once in one out_dir (interleaved metrics.jsonl, two W&B runs);
    `1e-4,0.0001` ran the same run twice. Points are compared by their validated configs, not their strings."""
    out = tmp_path / "sweep"
    try:  # the old code submitted both points: held here, so that they never run
        code, _, err = _sweep([str(QUICKSTART), f"alpha0={values}", "beta=10,20", "--cluster", "slurm", HELD,
                               f"out_dir={out}"], capsys)
    finally:
        _cancel_own_jobs(out)
    assert (code, err.strip()) == (2, expected)
    assert not out.exists()


def test_a_swept_key_the_config_requires_is_validated_with_each_points_value(tmp_path: Path) -> None:
    """Trial 22: `data.source=idx data.path=A,B` failed with `data.path: required for data.source='idx'`: the base
    config was validated without the swept keys. Every point loads with its own values; a bad one is named."""
    folders = [str(tmp_path / "fm-a"), str(tmp_path / "fm-b")]
    base, points = expand(QUICKSTART, ["data.source=idx", f"data.path={','.join(folders)}", f"out_dir={tmp_path}"])
    assert [point.config.data.path for point in points] == folders and base.out_dir == str(tmp_path)
    with pytest.raises(ConfigError, match=r"^sweep point path=.*fm-a_alpha0=-1: regularizer\.alpha0: "):
        expand(QUICKSTART, ["data.source=idx", f"data.path={','.join(folders)}", "alpha0=1e-4,-1",
                            f"out_dir={tmp_path}"])


@pytest.fixture(scope="module")
def half_done(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A sweep of two points, `alpha0=2e-4` of which finished (a real tiny run), and its arguments."""
    out = tmp_path_factory.mktemp("rerun") / "sweep"
    argv = [str(QUICKSTART), "alpha0=2e-4,3e-4", *SHORT, f"out_dir={out}", "--cluster", "slurm"]
    _, points = expand(QUICKSTART, argv[1:-2])
    run_pipeline(points[0].config)
    return argv


@pytest.mark.slurm
def test_a_rerun_sweep_skips_finished_points(slurm_cluster: None, half_done: list[str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 22: re-running a sweep resubmitted its finished points (each took an allocation to say `already
    complete`). Only the others are submitted; `--resubmit-finished` submits all; a finished run with other
    settings is not the point's."""
    out = Path(half_done[-3].split("=", 1)[1])
    _, points = expand(QUICKSTART, half_done[1:-2])
    assert [finished(point) for point in points] == [True, False]
    assert not finished(expand(QUICKSTART, [*half_done[1:-2], "seed=1"])[1][0])  # its job refuses other settings
    skipped = "1 finished point skipped: alpha0=2e-4 (--resubmit-finished submits it again)"
    code, out_text, err = _sweep([*half_done, "--dry-run"], capsys)
    assert code == 0, err
    assert out_text.splitlines()[:4] == ["# 1 point to submit (cluster=slurm)", "point        out_dir",
                                         f"alpha0=3e-4  {out / 'alpha0=3e-4'}", skipped], out_text
    code, out_text, _ = _sweep([*half_done, "--dry-run", "--resubmit-finished"], capsys)
    assert out_text.splitlines()[0] == "# 2 points to submit (cluster=slurm)" and "skipped" not in out_text
    try:
        code, out_text, err = _sweep([*half_done, HELD], capsys)
    finally:
        _cancel_own_jobs(out)
    assert code == 0, err
    lines = out_text.splitlines()
    assert lines[0] == skipped and lines[1].startswith(f"submitted 1 run (name {out.name}-sparsetrain, "), out_text
    jobs = json.loads((out / "sweep_jobs.json").read_text())["jobs"]
    assert list(jobs) == ["alpha0=3e-4"], jobs


def test_sweep_dry_run_prints_points_out_dirs_and_the_array_script(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 22: `sweep --dry-run` was an unrecognized option; there was no way to see the points, their out_dirs
    or the job array's sbatch script before submitting. Nothing is submitted nor written."""
    out = tmp_path / "sweep"
    argv = [str(QUICKSTART), "alpha0=1e-4,3e-4", "beta=10,20", f"out_dir={out}", "--cluster", "slurm", "--dry-run"]
    code, text, err = _sweep(argv, capsys)
    assert code == 0, err
    base, points = expand(QUICKSTART, argv[1:4])
    lines = text.splitlines()
    assert lines[0] == "# 4 points to submit (cluster=slurm)" and lines[1].split() == ["point", "out_dir"], text
    assert [line.split() for line in lines[2:6]] == [[p.name, p.config.out_dir] for p in points], text
    assert lines[7] == "# sbatch script (one job array: element i runs the i-th point listed, from 0)", text
    script = sbatch_script(base, array_size=4).rstrip()
    assert "\n".join(lines[8:8 + len(script.splitlines())]) == script, text
    assert "#SBATCH --array=0-3%4" in script and f"#SBATCH --error={out}/slurm/%A_%a_0_log.err" in script
    assert lines[-1].endswith("nothing submitted (--dry-run)"), text
    assert not out.exists()


def test_collect_of_a_sweep_never_submitted_creates_nothing(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 22: `--collect` on a sweep never submitted created its folder, sweep.json and sweep_pareto.png with
    every point `missing`. It says there is nothing to collect (one line, exit 1: no point is done)."""
    out = tmp_path / "never"
    code, text, err = _sweep([str(QUICKSTART), "alpha0=1e-4,3e-4", f"out_dir={out}", "--collect"], capsys)
    assert (code, text) == (1, "")
    assert err == (f"error: nothing to collect: the sweep in {out} was never submitted (no {out / 'sweep_jobs.json'}, "
                   "no point has a report.json); submit it without --collect\n")
    assert not out.exists()


def test_the_tables_metric_column_has_one_number_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 22: the metric column mixed `88.3` and `93.04`: two decimals for every run."""
    for value, metric in (("1e-4", 88.3), ("3e-4", 93.04)):
        (tmp_path / f"alpha0={value}").mkdir()
        (tmp_path / f"alpha0={value}" / "report.json").write_text(json.dumps(
            {"format_version": 2, "sparsity": 0.5, "phases": {"finetune": {"metric": metric}}}))
    code, text, err = _sweep([str(QUICKSTART), "alpha0=1e-4,3e-4", f"out_dir={tmp_path}", "--collect",
                              "report.plots=false"], capsys)
    assert code == 0, err
    assert [line.split()[6] for line in text.splitlines()[1:3]] == ["88.30", "93.04"], text  # after `50.0 %`


@pytest.mark.slurm
def test_a_rerun_sweep_skips_points_whose_job_is_still_queued(slurm_cluster: None, half_done: list[str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 22: a re-run of a sweep submitted a second job for a point whose job was still queued (re-runs skipped
    finished points only), and two jobs then ran in one out_dir. A point whose recorded job is pending (held here) is
    skipped with its job, also by `--dry-run` and `--resubmit-finished`; nothing is submitted again."""
    out = Path(half_done[-3].split("=", 1)[1])
    try:
        code, out_text, err = _sweep([*half_done, HELD], capsys)  # the unfinished point's job, held
        assert code == 0, err
        job = json.loads((out / "sweep_jobs.json").read_text())["jobs"]["alpha0=3e-4"]
        going = (f"1 point still queued or running skipped: alpha0=3e-4 (job {job}, queued (PENDING)) (a second job "
                 "in the same out_dir would mix their files; wait for it, or cancel it to submit again)")
        code, out_text, err = _sweep([*half_done, HELD], capsys)
        assert code == 0, err
        assert out_text.splitlines()[:2] == ["1 finished point skipped: alpha0=2e-4 (--resubmit-finished submits it "
                                             "again)", going], out_text
        assert out_text.splitlines()[2].startswith("nothing submitted: every point is finished or still queued or "
                                                   "running; the table: "), out_text
        code, out_text, err = _sweep([*half_done, HELD, "--resubmit-finished", "--dry-run"], capsys)
        assert code == 0 and out_text.splitlines()[:4] == [
            "# 1 point to submit (cluster=slurm)", "point        out_dir", f"alpha0=2e-4  {out / 'alpha0=2e-4'}",
            going], out_text
        assert json.loads((out / "sweep_jobs.json").read_text())["jobs"] == {"alpha0=3e-4": job}
    finally:
        _cancel_own_jobs(out)


def _jobs_file(out: Path) -> str | None:
    path = out / "sweep_jobs.json"
    return path.read_text() if path.is_file() else None


@pytest.mark.slurm
def test_a_point_its_job_would_refuse_is_refused_before_anything_is_submitted(
        slurm_cluster: None, half_done: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 23: `seed=5` over a finished sweep submitted both points; their jobs failed (`holds a run with other
    settings`) and their ids replaced the finished ones in sweep_jobs.json, so `--collect` of the original sweep showed
    finished points as failed. launch's checks run on every point first: one line naming the point, exit 2, nothing
    submitted, sweep_jobs.json untouched (also in the dry run)."""
    out = Path(half_done[-3].split("=", 1)[1])
    before = _jobs_file(out)
    submitted = set((out / "slurm").glob("*_submitted.pkl")) if (out / "slurm").is_dir() else set()
    for extra in (["--dry-run"], [HELD]):
        try:
            code, text, err = _sweep([*half_done, "seed=5", *extra], capsys)
        finally:
            if extra == [HELD]:
                new = {p.name.split("_")[0] for p in (out / "slurm").glob("*_submitted.pkl")} - {
                    p.name.split("_")[0] for p in submitted}
                if new:
                    subprocess.run(["scancel", *new], capture_output=True, check=False)
        assert (code, text) == (2, ""), (text, err)
        assert err.startswith(f"error: sweep point alpha0=2e-4: out_dir: {out / 'alpha0=2e-4'} holds a run with other "
                              "settings: seed 0 -> 5 "), err
        assert len(err.strip().splitlines()) == 1, err
    assert _jobs_file(out) == before
    assert (set((out / "slurm").glob("*_submitted.pkl")) if (out / "slurm").is_dir() else set()) == submitted


@pytest.mark.slurm
def test_resume_false_submits_finished_points_and_says_they_start_over(
        slurm_cluster: None, half_done: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 23: with `resume=false` a finished point was still skipped as finished, though resume=false starts it
    over; the submitted line said `1 runs` and named neither the job nor the log folder, as `launch` does."""
    out = Path(half_done[-3].split("=", 1)[1])
    argv = [half_done[0], "alpha0=2e-4,2.5e-4", *half_done[2:], "resume=false", HELD]
    try:
        code, text, err = _sweep([*argv, "--dry-run"], capsys)
        assert code == 0, err
        assert text.splitlines()[0] == "# 2 points to submit (cluster=slurm)" and "skipped" not in text, text
        assert "resume=false: alpha0=2e-4 starts over (a finished run in the out_dir is replaced)" in text, text
        code, text, err = _sweep(argv, capsys)
        assert code == 0, err
    finally:
        _cancel_own_jobs(out)
    jobs = json.loads((out / "sweep_jobs.json").read_text())["jobs"]
    assert text.splitlines()[0] == (
        f"submitted 2 runs (name {out.name}-sparsetrain, 1 rank each, cluster=slurm): {jobs['alpha0=2e-4']}, "
        f"{jobs['alpha0=2.5e-4']}; resume=false: alpha0=2e-4 starts over (its finished run is replaced); logs in "
        f"{out / 'slurm'}"), text


def test_one_submitted_run_is_one_run(tmp_path: Path) -> None:
    """Trial 23: `submitted 1 runs`."""
    import submitit

    from launch.sweep import submitted_line

    base, points = expand(QUICKSTART, ["alpha0=1e-4,3e-4", f"out_dir={tmp_path}"])
    assert submitted_line(base, points[:1], [submitit.SlurmJob(tmp_path / "slurm", "641")], "slurm") == (
        f"submitted 1 run (name {tmp_path.name}-sparsetrain, 1 rank each, cluster=slurm): 641; logs in "
        f"{tmp_path / 'slurm'}")


def test_resubmit_finished_with_collect_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 23: `--resubmit-finished --collect` was accepted silently; the flag does nothing there."""
    code, text, err = _sweep([str(QUICKSTART), "alpha0=1e-4,3e-4", f"out_dir={tmp_path}", "--collect",
                              "--resubmit-finished"], capsys)
    assert (code, text, err) == (2, "", "error: --resubmit-finished submits finished points again and --collect "
                                        "submits nothing: give one of them\n")


def test_points_sharing_an_out_dir_are_refused_in_a_whole_sentence(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 23: the refusal ended `...; sweep values that differ in letters or digits` (no verb)."""
    code, _, err = _sweep([str(QUICKSTART), "tracking.project=a/b,a-b", f"out_dir={tmp_path}", "--dry-run"], capsys)
    assert (code, err) == (2, "error: sweep: points tracking.project=a/b and tracking.project=a-b would share the "
                              f"out_dir {tmp_path / 'project=a-b'} (a folder name keeps letters, digits and =._+- "
                              "only); use sweep values that differ in those characters\n")


def test_sweep_warns_of_a_data_path_missing_here_once_per_path(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Trial 23: a sweep gave no `warning:` for a data.path missing on this machine, where `launch` does
    (`submission_warnings`); each message once, in the dry run too."""
    missing = tmp_path / "nonexistent" / "fm"
    code, text, err = _sweep([str(QUICKSTART), "alpha0=1e-4,3e-4", "data.source=idx", f"data.path={missing}",
                              f"out_dir={tmp_path / 'sweep'}", "--cluster", "slurm", "--dry-run"], capsys)
    assert code == 0, err
    warnings = [line for line in text.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: data.path: {missing} does not exist on this machine; the job reads it on the "
                        "compute nodes and fails at its start if it is not there either"], text


@pytest.mark.parametrize("field", ["model.checkpoint", "model.pretrained_file"])
def test_sweep_warns_of_start_weights_missing_here(field: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Stop 12 tail: a `model.checkpoint` / `model.pretrained_file` missing on this machine got no `warning:` before a
    submission (only data.path did); the same line now, naming the field (`submission_warnings`)."""
    missing = tmp_path / "on-the-nodes" / "weights.safetensors"
    extra = ["model.pretrained=true"] if field == "model.pretrained_file" else []
    code, text, err = _sweep([str(QUICKSTART), "alpha0=1e-4,3e-4", *extra, f"{field}={missing}",
                              f"out_dir={tmp_path / 'sweep'}", "--cluster", "slurm", "--dry-run"], capsys)
    assert code == 0, err
    warnings = [line for line in text.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: {field}: {missing} does not exist on this machine; the job reads it on the "
                        "compute nodes and fails at its start if it is not there either"], text


def test_a_resubmission_keeps_where_the_other_points_jobs_are(tmp_path: Path) -> None:
    """Trial 23: a re-submission must never lose the record of the jobs of points it did not resubmit, also when it
    uses another log folder (where --collect reads an earlier job's result)."""
    import submitit

    from launch.sweep import _recorded_job, record_jobs

    base, points = expand(QUICKSTART, ["alpha0=1e-4,3e-4", f"out_dir={tmp_path}"])
    first = tmp_path / "slurm"
    record_jobs(base, points, [submitit.SlurmJob(first, "7_0"), submitit.SlurmJob(first, "7_1")], "slurm")
    logs = tmp_path / "logs2"
    other, again = expand(QUICKSTART, ["alpha0=1e-4,3e-4", f"out_dir={tmp_path}", f"launch.log_folder={logs}"])
    record_jobs(other, again[:1], [submitit.SlurmJob(logs, "9")], "slurm")
    recorded = json.loads((tmp_path / "sweep_jobs.json").read_text())
    assert recorded["jobs"] == {"alpha0=1e-4": "9", "alpha0=3e-4": "7_1"}
    assert _recorded_job(recorded, "alpha0=1e-4") == ("slurm", str(logs), "9")
    assert _recorded_job(recorded, "alpha0=3e-4") == ("slurm", str(first), "7_1")


def _ended_local_sweep(tmp_path: Path, *overrides: str) -> tuple[Path, list[str]]:
    """A sweep of two points whose recorded local jobs have ended without a result (their pid is gone); the first
    point's out_dir holds a checkpoint at sparsify step 40 (state.json), the second nothing. Returns the base out_dir
    and the `--collect` arguments."""
    out = tmp_path / "sw"
    argv = [str(QUICKSTART), "alpha0=1e-4,3e-4", f"out_dir={out}", *overrides, "--cluster", "local",
            "report.plots=false"]
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid now names no process: the job ended without writing a result
    (out / "alpha0=1e-4").mkdir(parents=True)
    (out / "alpha0=1e-4" / "state.json").write_text(json.dumps(
        {"completed": {}, "current": {"phase": "sparsify", "tag": "sparsify-step0000040", "step": 40}}))
    (out / "sweep_jobs.json").write_text(json.dumps({"cluster": "local", "log_folder": str(out / "slurm"), "jobs": {
        "alpha0=1e-4": str(gone.pid), "alpha0=3e-4": str(gone.pid)}}))
    return out, [*argv, "--collect"]


def test_collect_gives_a_cancelled_point_with_a_checkpoint_the_command_that_resumes_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Stop 12 tail: `launch` says where a job that ended without a result stopped and the command that resumes it;
    a sweep's row of such a point said only `job N ended without a result`. Now the same hint, with the sweep's own
    command (less --collect: a re-run skips finished points and resubmits this one); a point without a checkpoint
    gets none."""
    out, argv = _ended_local_sweep(tmp_path)
    code, text, err = _sweep(argv, capsys)
    assert code == 1, err
    errors = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in text.splitlines()
              if line.startswith("alpha0=") and ": job " in line}
    resubmit = shlex.join(["sparsetrain", "sweep", *argv[:-1]])
    assert errors["alpha0=1e-4"].endswith("; the run has a checkpoint at sparsify step 40: resubmitting resumes from "
                                          f"it: `{resubmit}`"), text
    assert "checkpoint" not in errors["alpha0=3e-4"], text
    stored = {run["name"]: run["error"] for run in json.loads((out / "sweep.json").read_text())["runs"]}
    assert stored["alpha0=1e-4"] == errors["alpha0=1e-4"], stored


def test_collect_names_the_srun_args_item_srun_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Stop 12 tail: `launch --wait` names the launch.srun_args item srun refused in a job's log; `sweep --collect`
    quoted srun's line alone. Now both: `srun: unrecognized option '--bogus' (from launch.srun_args: --bogus)`."""
    out, argv = _ended_local_sweep(tmp_path, "launch.srun_args=[--bogus]")
    job_id = json.loads((out / "sweep_jobs.json").read_text())["jobs"]["alpha0=3e-4"]
    (out / "slurm").mkdir()
    (out / "slurm" / f"{job_id}_0_log.err").write_text("srun: unrecognized option '--bogus'\nTry \"srun --help\"\n")
    code, text, err = _sweep(argv, capsys)
    assert code == 1, err
    assert (f"alpha0=3e-4: job {job_id} ended without a result: srun: unrecognized option '--bogus' (from "
            f"launch.srun_args: --bogus); see {out / 'slurm' / job_id}_0_log.err") in text.splitlines(), text


@pytest.mark.parametrize("command", ["sweep", "launch"])
def test_an_override_in_place_of_the_recipe_is_one_line_naming_config(command: str, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # before: `sweep prune.sparsity=0.5,0.9` took the override for the recipe and said `no swept key`; `launch`
    # said `config: file not found: /cwd/prune.sparsity=0.5`
    from launch.cli import launch_main

    main = sweep_main if command == "sweep" else launch_main
    with pytest.raises(SystemExit) as stop:
        main(["prune.sparsity=0.5,0.9", f"out_dir={tmp_path / 'x'}", "--dry-run"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1, err
    assert f"sparsetrain {command}: error: config: expected a YAML recipe first" in err, err
    assert "'prune.sparsity=0.5,0.9'" in err and not (tmp_path / "x").exists(), err
