"""`sparsetrain launch` and `sparsetrain sweep`: argument parsing only; the work lives in submit/sweep/dry_run.

    sparsetrain launch CONFIG [key=value ...] --cluster slurm|local|debug [--phase P] [--wait] [--dry-run]
    sparsetrain sweep CONFIG alpha0=1e-5,3e-5 beta=10,20 [key=value ...] --cluster slurm [--wait] [--collect]
        [--dry-run] [--resubmit-finished]

Resources come from the config's `launch:` section (overridable like any key: `launch.tasks_per_node=2`).
Both commands submit and return, printing how to follow the jobs, unless `--wait` (as sbatch does; the debug
cluster always waits: its job runs in this process, when waited for).
Exit codes: 0 success, 1 the job failed (sweep: a point is not done: failed, missing, queued or running; `--collect`
of a sweep never submitted), 2 bad config or launch settings.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from launch.submit import CLUSTERS, LaunchError, rank0_job
from sparsetrain.argtypes import CommandParser, positive_float
from sparsetrain.cli import parse_command_line
from sparsetrain.phases import PHASES


def _common_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = CommandParser(prog=prog, description=description)
    parser.add_argument("config", help="YAML recipe, e.g. configs/quickstart.yaml")
    parser.add_argument("overrides", nargs="*", default=[], help="dotted key=value overrides")
    parser.add_argument("--cluster", choices=CLUSTERS, default="slurm", help="where to run (default: slurm)")
    parser.add_argument("--timeout", type=positive_float, default=None, help="wait at most this many seconds for the "
                        "results (implies --wait; a sweep: for all its runs together); the jobs go on after it")
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse `argv`; a first argument that is an override (`key=value`, not a file) is one line naming `config`:
    these commands submit a recipe (before: `sweep k=a,b` took the override for the recipe and said `no swept key`,
    `launch k=v` said `file not found`)."""
    args = parse_command_line(parser, argv)
    if "=" in args.config and not Path(args.config).exists():
        parser.error(f"config: expected a YAML recipe first (e.g. configs/quickstart.yaml), got the override "
                     f"{args.config!r}")
    return args


def _waits(args: argparse.Namespace) -> bool:
    """`--wait` or `--timeout`, or the debug cluster, whose job runs in this process only once it is waited for."""
    return args.wait or args.timeout is not None or args.cluster == "debug"


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _warn(warnings: list[str]) -> None:
    """Each warning once, as a `warning: ...` line on stderr."""
    for warning in dict.fromkeys(warnings):
        print(f"warning: {warning}", file=sys.stderr)


def launch_main(argv: list[str]) -> int:
    """Submit the pipeline (or one phase) as one job of nodes × tasks_per_node ranks."""
    parser = _common_parser("sparsetrain launch", "Run the pipeline through submitit (Slurm, local or debug).")
    parser.add_argument("--phase", choices=PHASES, action="append", help="run only this phase (repeatable)")
    parser.add_argument("--wait", action="store_true", help="wait for the job and print the report path (default: "
                        "submit, say how to follow the job, return)")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script, world size and pruning "
                        "plan; submit nothing")
    args = _parse(parser, argv)
    from launch.submit import WaitTimeout, job_name, launch_warnings, log_folder, submit, wait_result
    from sparsetrain.config.loader import ConfigError, load_config

    try:
        config = load_config(args.config, args.overrides)
        from launch.checks import check_before_submission, submission_warnings  # imports torch: after config errors

        check_before_submission(config, args.phase)  # what the job would refuse at its start, seen from here
        if args.dry_run:
            from launch.dry_run import dry_run_report

            print(dry_run_report(config, args.cluster), end="")
            return 0
        job = submit(config, args.cluster, args.phase)
    except (ConfigError, LaunchError, ValueError) as err:
        return _fail(str(err), 2)
    ranks = config.launch.world_size
    print(f"submitted job {job.job_id} (name {job_name(config)}, {ranks} rank{'s' * (ranks != 1)}, "
          f"cluster={args.cluster}); logs in {log_folder(config)}")
    _warn(launch_warnings(config, args.cluster) + submission_warnings(config))
    if not _waits(args):
        print(_follow_job(job, args.cluster, Path(config.out_dir) / "report.json"))
        return 0
    try:
        wait_result(job, timeout_s=args.timeout, launch=config.launch)
    except WaitTimeout as err:
        return _fail(str(err), 1)
    except LaunchError as err:  # ended without a result: cancelled, killed, node failure (the message names the job)
        return _fail(f"{err}{resume_hint(Path(config.out_dir), argv)}", 1)
    except Exception as err:  # the job's own traceback is in its log; one line here, the code a local run gives
        return _fail(*failure_line(job.job_id, err, Path(config.out_dir), argv))
    report_path = Path(config.out_dir) / "report.json"
    print(f"done: {report_path}{_report_line(report_path)}")
    return 0


def failure_line(job_id: str, error: BaseException, out_dir: Path, argv: list[str]) -> tuple[str, int]:
    """`job N failed: <what it raised>` and its exit code (`job_failure`); a job submitit gave up requeueing (`Job not
    requeued because: timed-out too many times.`, after launch.max_num_timeout time limits) also gets `resume_hint`:
    its checkpoint is intact and a new submission continues from it."""
    from launch.submit import job_failure, raised_exception

    message, code = job_failure(error)
    raised = raised_exception(str(error))
    given_up = raised is not None and raised[0].endswith("UncompletedJobError")
    return f"job {job_id} failed: {message}{resume_hint(out_dir, argv) if given_up else ''}", code


def resume_hint(out_dir: Path, argv: list[str], command: str = "launch") -> str:
    """`; the run has a checkpoint at sparsify step 223: resubmitting resumes from it: `sparsetrain launch ...``
    for a job that ended without a result after saving a checkpoint in `out_dir` (the same `command` arguments, less
    a `resume=` override, which could start it over); '' when it saved nothing."""
    from sparsetrain.cli import saved_point

    point = saved_point(out_dir)
    if point == "the start":
        return ""
    kept = [arg for arg in argv if arg.partition("=")[0].strip() != "resume"]
    return (f"; the run has a checkpoint at {point}: resubmitting resumes from it: "
            f"`{shlex.join(['sparsetrain', command, *kept])}`")


def add_resume_hints(points: list[Any], argv: list[str]) -> None:
    """Append `resume_hint` to the error of each sweep point whose job ended without a result (`no_result`: cancelled,
    killed, node failure) after saving a checkpoint, as `launch` says it for one job. The command is the sweep's
    own, which skips finished points and resubmits the others (less --collect and the flags that submit nothing or
    finished points again)."""
    drop = ("--collect", "--dry-run", "--resubmit-finished")
    resubmit = [arg for arg in argv if arg not in drop]
    for point in points:
        if point.result.get("no_result"):
            point.result["error"] += resume_hint(Path(point.config.out_dir), resubmit, "sweep")


def _follow_job(job: Any, cluster: str, report: Path) -> str:
    """`follow it: squeue -j 12; tail -f OUT/slurm/12_0_log.err (rank 0's progress); the final table: OUT/slurm/
    12_0_log.out; ...`: how to follow a submitted job. Rank 0's log lines (progress, ETA, phase ends) go to the task's
    stderr, the end-of-run table it prints to its stdout: two files."""
    paths = rank0_job(job).paths
    logs = f"tail -f {paths.stderr} (rank 0's progress); the final table: {paths.stdout}"
    if cluster == "slurm":
        return (f"follow it: squeue -j {job.job_id}; {logs}; when it ends: {report} "
                f"(`--wait` waits for it; `scancel {job.job_id}` stops it)")
    return f"follow it: {logs}; when it ends: {report} (`--wait` waits for it)"


def _report_line(path: Path) -> str:
    """` (world size 2, sparsity 72.2 %, finetune.metric 93.6)` from a report, or '' when there is none; a run that
    removed filters (Method 2, sparsity 0) gives its parameter reduction instead of its sparsity: ` (world size 2,
    params 488,001 -> 122,809 (3.97x fewer, filters removed), finetune.metric 92.8)`."""
    if not path.is_file():
        return ""
    from launch.sweep import removal_words, summarize_report

    report = json.loads(path.read_text())
    summary = summarize_report(report)
    parts = [f"world size {report.get('world_size')}"]
    if removed := removal_words(summary):
        parts.append(removed)
    elif summary["sparsity"] is not None:
        parts.append(f"sparsity {100 * summary['sparsity']:.1f} %")
    if summary["metric"] is not None:
        parts.append(f"{summary['metric_name']} {summary['metric']:.4g}")
    return f" ({', '.join(parts)})"


def sweep_main(argv: list[str]) -> int:
    """Submit a grid of runs as a job array and return (with `--wait`: wait, then write sweep.json and the Pareto
    plot); points already finished are skipped unless `--resubmit-finished`, points whose job is still queued or
    running always; `--collect`: write them from where each point is, submitting nothing; `--dry-run`: print the
    points and the array's sbatch script, submitting nothing."""
    parser = _common_parser("sparsetrain sweep", "Grid sweep: key=v1,v2 overrides, one run per point.")
    waiting = parser.add_mutually_exclusive_group()
    waiting.add_argument("--wait", action="store_true", help="wait for every run, then collect (default: submit, say "
                         "how to follow and collect, return)")
    waiting.add_argument("--no-wait", action="store_true", help="submit and return: the default (kept for scripts)")
    parser.add_argument("--collect", action="store_true", help="submit nothing: write sweep.json from where each "
                        "point is (done, failed, queued, running, missing) and print it as a table")
    parser.add_argument("--dry-run", action="store_true", help="print the points, their out_dirs and the job array's "
                        "sbatch script; submit nothing")
    parser.add_argument("--resubmit-finished", action="store_true", help="submit every point, also those whose "
                        "out_dir holds their finished run (default: skip them; their jobs would only say `already "
                        "complete`); a point whose job is still queued or running is never submitted again")
    args = _parse(parser, argv)
    if args.no_wait and args.timeout is not None:
        return _fail("--timeout waits for the runs and --no-wait does not: give one of them", 2)
    if args.collect and args.dry_run:
        return _fail("--collect submits nothing and reads the runs, --dry-run shows what would be submitted: give one "
                     "of them", 2)
    if args.collect and args.resubmit_finished:
        return _fail("--resubmit-finished submits finished points again and --collect submits nothing: give one of "
                     "them", 2)
    from launch.sweep import check_points, expand, finished, nothing_to_collect, still_going
    from sparsetrain.config.loader import ConfigError

    try:
        base, points = expand(args.config, args.overrides)
        skipped = [] if args.resubmit_finished or args.collect else [point for point in points if finished(point)]
        going = [] if args.collect else still_going(base, [point for point in points if point not in skipped])
        if not args.collect:  # what each point's job would refuse at its start: refused here, nothing submitted
            check_points([point for point in points if point not in skipped and point not in going])
        if args.dry_run:
            from launch.sweep import dry_run_report

            todo = [point for point in points if point not in skipped and point not in going]
            print(dry_run_report(base, todo, skipped, args.cluster, going), end="")
            return 0
    except (ConfigError, LaunchError, ValueError) as err:
        return _fail(str(err), 2)
    if args.collect and nothing_to_collect(base, points):
        return _fail(f"nothing to collect: the sweep in {base.out_dir} was never submitted (no "
                     f"{Path(base.out_dir) / 'sweep_jobs.json'}, no point has a report.json); submit it without "
                     "--collect", 1)
    return _submit_sweep(args, argv, base, points, skipped, going)


def _submit_sweep(args: argparse.Namespace, argv: list[str], base: Any, points: list[Any], skipped: list[Any],
                  going: list[Any]) -> int:
    """Submit the points neither `skipped` (finished) nor `going` (their job still queued or running; none with
    `--collect`), then return, or wait and collect every point."""
    from launch.checks import submission_warnings
    from launch.submit import launch_warnings
    from launch.sweep import (
        collect,
        going_line,
        recorded_status,
        skipped_line,
        submit_points,
        submitted_line,
        summary_table,
        wait_points,
    )
    from sparsetrain.config.loader import ConfigError

    todo = [point for point in points if point not in skipped and point not in going]
    if skipped:
        print(skipped_line(skipped))
    if going:
        print(going_line(going))
    try:
        jobs = [] if args.collect or not todo else submit_points(base, todo, args.cluster)
    except (ConfigError, LaunchError, ValueError) as err:
        return _fail(str(err), 2)
    if jobs:
        print(submitted_line(base, todo, jobs, args.cluster))
        _warn([warning for point in todo for warning in (launch_warnings(point.config, args.cluster)
                                                         + submission_warnings(point.config))])
    if not args.collect and not _waits(args):
        done = "finished or still queued or running" if going else "finished"
        print(_follow_sweep(jobs, args.cluster, argv) if jobs else
              f"nothing submitted: every point is {done}; the table: {_collect_command(argv)}")
        return 0
    if jobs:
        wait_points(todo, jobs, timeout_s=args.timeout)
        recorded_status(base, going)  # where the jobs not submitted now are after the wait
    else:
        recorded_status(base, points)
    add_resume_hints(points, argv)
    summary = collect(base, points, args.overrides)
    print(summary_table(summary["runs"]))
    drawn = f" and {summary['plot']}" if summary["plot"] else " (report.plots=false: no sweep_pareto.png)"
    print(f"wrote {Path(base.out_dir) / 'sweep.json'} (every run, JSON){drawn}")
    going = sum(run["status"] in ("queued", "running") for run in summary["runs"])
    if going:
        print(f"{going} of {len(points)} runs not finished (queued or running); collect again later: "
              f"{_collect_command(argv)}")
    return 0 if all(run["status"] == "done" for run in summary["runs"]) else 1


def _follow_sweep(jobs: list[Any], cluster: str, argv: list[str]) -> str:
    """`follow them: squeue -j 12; collect the results: sparsetrain sweep ... --collect (...)`."""
    arrays = ",".join(dict.fromkeys(job.job_id.split("_")[0] for job in jobs))
    queue = f"squeue -j {arrays}; " if cluster == "slurm" else ""
    return (f"follow them: {queue}collect the results (any time; it says which runs are queued, running, done or "
            f"failed): {_collect_command(argv)} (`--wait` waits for them)")


def _collect_command(argv: list[str]) -> str:
    """`sparsetrain sweep <the same arguments> --collect`, for the user to copy."""
    kept = [arg for arg in argv if arg not in ("--wait", "--no-wait", "--collect", "--dry-run", "--resubmit-finished")]
    return shlex.join(["sparsetrain", "sweep", *kept, "--collect"])


def main(argv: list[str] | None = None) -> int:
    """`python -m launch.cli launch|sweep ...` until the main CLI forwards to launch_main / sweep_main."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"launch": launch_main, "sweep": sweep_main}
    if not argv or argv[0] not in commands:
        print("usage: python -m launch.cli launch|sweep CONFIG [key=value ...] [options]", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
