"""Grid sweeps: `key=v1,v2` overrides expand into one run per point, submitted as one job array.

Each point runs in its own `out_dir` (`<base out_dir>/<key>=<value>_...`); the job of each point is recorded in
`<base out_dir>/sweep_jobs.json` at submission. Collecting reads every point's `report.json`, or where its job is
(queued, running, failed; missing when no job was recorded and there is no report), into `<base out_dir>/sweep.json`
and a metric-vs-compression plot `<base out_dir>/sweep_pareto.png` with the Pareto front (no other point is both
more compressed and more accurate); `summary_table` is the same summary for the terminal.

Every point is validated with its own values before anything is submitted, and two points of equal settings are
refused; a point whose out_dir holds its finished run is not submitted again (`finished`) unless the user asks, and
a point whose job is still queued or running is never submitted again (`still_going`).

Compression is what a run achieved, whichever way: the dense model's parameters per non-zero parameter of the final
model (report.json `compression_ratio`), so Method 1's zeroed weights and Method 2's removed filters are on one axis
(a Method 2 run has sparsity 0: its smaller model has no zeros).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsetrain.config.launch import LaunchConfig
from sparsetrain.config.loader import ConfigError, load_config, resolve_key
from sparsetrain.config.schema import RunConfig
from sparsetrain.report import COMPRESSION_SCOPE, SPARSITY_SCOPE

JOBS_FILE = "sweep_jobs.json"  # in the base out_dir: each point's job, for `--collect`
RECORDED_CLUSTERS = ("slurm", "local")  # the debug cluster runs its jobs in the caller's process: nothing to look up
NOT_DONE = ("failed", "queued", "running")
# `metric`: each run's sweep.json key; `compression`: `compression(run)`
TABLE_COLUMNS = ("point", "state", "job", "sparsity", "compression", "metric", "pareto")
# the table's footer: what its sparsity and compression count (they differ on purpose, as in the run's report table)
SCOPE_LINE = (f"sparsity {SPARSITY_SCOPE}; compression over {COMPRESSION_SCOPE} (dense count / non-zero; removed "
              "filters count)")


@dataclass(eq=False)  # a point is itself (`in` tests identity), not its settings
class SweepPoint:
    """One run of the grid."""

    name: str
    overrides: list[str]
    config: RunConfig
    result: dict[str, Any] = field(default_factory=dict)


def split_values(text: str) -> list[str]:
    """Split `v1,v2,[a,b]` on top-level commas (brackets and braces keep YAML lists and mappings whole)."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    values.append(current)
    return [value.strip() for value in values]


def parse_grid(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Separate fixed overrides from swept ones (`key=v1,v2`), keeping the order of keys.

    Raises:
        ConfigError: malformed override, empty or repeated value, or a swept `out_dir` / `launch.*` key.
    """
    fixed, grid = [], {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value or key=v1,v2,...")
        key, text = item.split("=", 1)
        values = split_values(text)
        if len(values) == 1:
            fixed.append(item)
            continue
        path = resolve_key(key.strip())
        if path == "out_dir" or path.startswith("launch."):
            raise ConfigError(f"{path}: cannot be swept (one out_dir and one resource request per sweep)")
        if any(not value for value in values):
            raise ConfigError(f"{key}: empty value in sweep list {text!r}")
        twice = next((value for i, value in enumerate(values) if value in values[:i]), None)
        if twice is not None:
            raise ConfigError(f"{key.strip()}: {twice} is listed twice in the sweep list {text!r} (its two points "
                              "would run at once in one out_dir); give each value once")
        grid[key.strip()] = values
    return fixed, grid


def point_name(assignment: dict[str, str]) -> str:
    """Directory-safe name of a grid point, e.g. `alpha0=1e-05_beta=10`."""
    parts = [f"{key.split('.')[-1]}={value}" for key, value in assignment.items()]
    return re.sub(r"[^A-Za-z0-9=._+-]", "-", "_".join(parts))


def expand(config_path: str | Path | None, overrides: list[str]) -> tuple[RunConfig, list[SweepPoint]]:
    """The base config and one validated config per grid point.

    The base is the first point's config with the sweep's own out_dir: its out_dir, `launch` section (resources and
    log folder; neither can be swept) and `report.plots` are the sweep's. It is loaded with a point's values, not the
    fixed overrides alone: a key the config requires may be the swept one (`data.source=idx data.path=A,B`).

    Raises:
        ConfigError: the grid is empty; a point's config is invalid (one line: the point, then the field); two points
            have the same settings (`refuse_duplicates`).
    """
    fixed, grid = parse_grid(overrides)
    if not grid:
        raise ConfigError("sweep: no swept key; give at least one key=v1,v2,...")
    assignments = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    base = _load_point(config_path, fixed, assignments[0])
    points = [SweepPoint(point_name(a), _overrides(a), _load_point(config_path, fixed, a, Path(base.out_dir)))
              for a in assignments]
    refuse_duplicates(points)
    return base, points


def _overrides(assignment: dict[str, str]) -> list[str]:
    """A point's swept values as overrides: `["alpha0=1e-4", "beta=10"]`."""
    return [f"{key}={value}" for key, value in assignment.items()]


def _load_point(config_path: str | Path | None, fixed: list[str], assignment: dict[str, str],
                sweep_dir: Path | None = None) -> RunConfig:
    """One point's validated config, in `<sweep_dir>/<point name>` (None: in the sweep's own out_dir, for the base).

    Raises:
        ConfigError: `sweep point alpha0=-1: regularizer.alpha0: ...`: the point, then the loader's line.
    """
    extra = [] if sweep_dir is None else [f"out_dir={sweep_dir / point_name(assignment)}"]
    try:
        return load_config(config_path, [*fixed, *_overrides(assignment), *extra])
    except ConfigError as err:
        raise ConfigError(f"sweep point {point_name(assignment)}: {err}") from None


def refuse_duplicates(points: list[SweepPoint]) -> None:
    """Refuse two points of equal settings (their validated configs but out_dir, e.g. `alpha0=1e-4,0.0001`): both
    would run the same run, at once. (A value written twice is refused by `parse_grid`: its two points would share
    one out_dir.)

    Raises:
        ConfigError: one line naming each key whose values give the same setting, and the two points.
    """
    from sparsetrain.config.loader import config_to_dict

    seen: dict[str, SweepPoint] = {}
    named: dict[str, SweepPoint] = {}
    for point in points:
        if point.name in named:  # values that differ only in characters a folder name cannot hold (`a/b`, `a-b`)
            first, second = (" ".join(p.overrides) for p in (named[point.name], point))
            raise ConfigError(f"sweep: points {first} and {second} would share the out_dir {point.config.out_dir} "
                              "(a folder name keeps letters, digits and =._+- only); use sweep values that differ in "
                              "those characters")
        named[point.name] = point
        settings = {key: value for key, value in config_to_dict(point.config).items() if key != "out_dir"}
        settings_key = json.dumps(settings, sort_keys=True, default=str)
        if settings_key in seen:
            first = seen[settings_key]
            pairs = [(a.split("=", 1), b.split("=", 1)[1]) for a, b in zip(first.overrides, point.overrides,
                                                                             strict=True) if a != b]
            same = "; ".join(f"{key}: {value} and {other}" for (key, value), other in pairs)
            raise ConfigError(f"{same} are the same setting (points {first.name} and {point.name} would run the same "
                              "run twice, at once); give each value once")
        seen[settings_key] = point


def finished(point: SweepPoint) -> bool:
    """Whether the point's out_dir holds its run, finished: a report.json, the run's final phase completed
    (state.json) and the settings it ran with equal the point's (`check_same_run`; a run with other settings is not
    this point's: `check_points` refuses it before anything is submitted). A job of a finished point would only say
    `already complete`. A point with `resume=false` is never finished: it asks to start its run over."""
    from sparsetrain.config.loader import config_to_dict
    from sparsetrain.engine.checkpoint import read_run_state
    from sparsetrain.errors import InputError
    from sparsetrain.rundir import check_same_run, last_phase

    if not point.config.resume:
        return False
    out_dir = Path(point.config.out_dir)
    settings = config_to_dict(point.config)
    state = read_run_state(out_dir)
    if not (out_dir / "report.json").is_file() or state is None or last_phase(settings) not in state["completed"]:
        return False
    try:
        check_same_run(out_dir, settings)
    except InputError:
        return False
    return True


def check_points(points: list[SweepPoint]) -> None:
    """`launch`'s checks before submission (`launch.checks.check_before_submission`) on every point to submit, so that
    a sweep submits nothing rather than jobs that would refuse their out_dir at their start (a finished run there with
    other settings, another run in it).

    Raises:
        InputError: `sweep point alpha0=1e-4: out_dir: ... holds a run with other settings: seed 0 -> 5 ...`: the
            first refused point, then launch's line.
    """
    from launch.checks import check_before_submission  # imports torch: after every config error
    from sparsetrain.errors import InputError

    for point in points:
        try:
            check_before_submission(point.config)
        except InputError as err:
            raise InputError(f"sweep point {point.name}: {err}") from None


def restarted(points: list[SweepPoint]) -> list[SweepPoint]:
    """The points to submit with `resume=false` whose out_dir holds a finished run: their jobs start over and replace
    it (`finished` does not skip them)."""
    return [point for point in points if not point.config.resume
            and (Path(point.config.out_dir) / "report.json").is_file()]


def skipped_line(skipped: list[SweepPoint]) -> str:
    """`2 finished points skipped: alpha0=1e-4, alpha0=3e-4 (--resubmit-finished submits them again)`."""
    them = "them" if len(skipped) > 1 else "it"
    return (f"{len(skipped)} finished point{'s' * (len(skipped) != 1)} skipped: "
            f"{', '.join(point.name for point in skipped)} (--resubmit-finished submits {them} again)")


def still_going(base: RunConfig, points: list[SweepPoint]) -> list[SweepPoint]:
    """The points whose job is still queued or running, so that a re-run of the sweep does not submit a second job into
    their out_dirs (the two would mix their files): the job `sweep_jobs.json` records for the point (`job_status`),
    or a Slurm job or process that holds the point's out_dir otherwise (`launch.checks.live_job`, the run lock).
    Each such point's `result` says where its job is (status queued or running, job_id, Slurm state)."""
    path = Path(base.out_dir) / JOBS_FILE
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    going = []
    for point in points:
        result = _recorded_going(recorded, point.name) or _out_dir_going(Path(point.config.out_dir))
        if result is not None:
            point.result = result
            going.append(point)
    return going


def _recorded_going(recorded: dict[str, Any], name: str) -> dict[str, Any] | None:
    """`job_status` of the job `recorded` (sweep_jobs.json) holds for point `name` when it is queued or running."""
    cluster, folder, job_id = _recorded_job(recorded, name)
    if job_id is None or cluster not in RECORDED_CLUSTERS:
        return None
    status = job_status(_job(cluster, Path(folder), job_id))
    return status if status["status"] in ("queued", "running") else None


def _out_dir_going(out_dir: Path) -> dict[str, Any] | None:
    """Where the job or process holding `out_dir` is (its run lock), or None when none holds it."""
    from launch.checks import live_job
    from launch.submit import QUEUED_STATES
    from sparsetrain.runlock import describe_holder, held_by_another

    job = live_job(out_dir)
    if job is not None:
        return {"status": "queued" if job[1] in QUEUED_STATES else "running", "job_id": job[0], "state": job[1]}
    holder = held_by_another(out_dir)
    return None if holder is None else {"status": "running", "holder": describe_holder(holder)}


def going_line(going: list[SweepPoint]) -> str:
    """`1 point still queued or running skipped: alpha0=1e-4 (job 512_0, queued (PENDING)) (...)`: the points
    `still_going` found, each with its job (or the process holding its out_dir) and where it is."""
    def where(point: SweepPoint) -> str:
        result = point.result
        who = f"job {result['job_id']}" if result.get("job_id") else result.get("holder", "")
        return f"{point.name} ({who}, {_state_text(result)})"

    them = "them" if len(going) > 1 else "it"
    return (f"{len(going)} point{'s' * (len(going) != 1)} still queued or running skipped: "
            f"{', '.join(where(point) for point in going)} (a second job in the same out_dir would mix their files; "
            f"wait for {them}, or cancel {them} to submit again)")


def nothing_to_collect(base: RunConfig, points: list[SweepPoint]) -> bool:
    """Whether the sweep was never submitted: no `sweep_jobs.json` in its out_dir and no point has a report.json."""
    return not (Path(base.out_dir) / JOBS_FILE).is_file() and not any(
        (Path(point.config.out_dir) / "report.json").is_file() for point in points)


def dry_run_report(base: RunConfig, points: list[SweepPoint], skipped: list[SweepPoint], cluster: str,
                   going: list[SweepPoint] | None = None) -> str:
    """What `sweep --dry-run` prints: each point to submit (name, out_dir, overrides), the finished points skipped,
    the points skipped because their job is still queued or running (`going`),
    the points that start over (`restarted`), the job array's sbatch script (Slurm), the warnings `launch` gives
    (`launch_warnings`, `submission_warnings`: a data.path missing here; each message once) and the world size of
    each point.

    Raises:
        LaunchError: invalid launch settings (a real submission's checks, but the cluster's fit: a warning line).
    """
    from launch.checks import submission_warnings
    from launch.submit import cluster_fit_problems, launch_warnings, sbatch_script, validate_launch

    validate_launch(base, cluster, fit=False)
    rows = [("point", "out_dir")] + [(point.name, point.config.out_dir) for point in points]
    width = max(len(name) for name, _ in rows)
    parts = [f"# {len(points)} point{'s' * (len(points) != 1)} to submit (cluster={cluster})"]
    parts += [f"{name.ljust(width)}  {out_dir}" for name, out_dir in rows] if points else []
    if skipped:
        parts.append(skipped_line(skipped))
    if going:
        parts.append(going_line(going))
    if again := restarted(points):
        parts.append(f"resume=false: {', '.join(point.name for point in again)} start{'s' * (len(again) == 1)} over "
                     "(a finished run in the out_dir is replaced)")
    if cluster == "slurm" and points:
        what = "one job array: element i runs the i-th point listed, from 0" if len(points) > 1 else "one point"
        parts += ["", f"# sbatch script ({what})", sbatch_script(base, array_size=len(points)).rstrip(), ""]
        parts += [f"warning: this cluster cannot run it as it is (a submission here is refused): {problem}"
                  for problem in cluster_fit_problems(base)]
    warnings = [warning for point in points for warning in (launch_warnings(point.config, cluster)
                                                            + submission_warnings(point.config))]
    parts += [f"warning: {warning}" for warning in dict.fromkeys(warnings)]
    launch = base.launch
    parts.append(f"world size of each point: {launch.world_size} (nodes={launch.nodes} × tasks_per_node="
                 f"{launch.tasks_per_node}, gpus_per_node={launch.gpus_per_node}); nothing submitted (--dry-run)")
    return "\n".join(parts) + "\n"


def summarize_report(report: dict[str, Any]) -> dict[str, Any]:
    """Sparsity, compression and the final metric of a run's report.json: the metric of the last finished phase, read
    from the report's phase sections (`sparsetrain.report.final_metric`; either report format). `compression_ratio`
    (dense parameters / non-zero parameters of the final model) and, for a run that removed filters (Method 2),
    `param_reduction` (dense / remaining parameters) and `params` ({dense, pruned}) are added when the report has
    them; `at_chance` (True) when the final metric's phase ended at chance level (`sparsetrain.collapse`: the model
    collapsed)."""
    from sparsetrain.report import final_metric, phase_results

    phase, metric = final_metric(report)
    summary = {"sparsity": report.get("sparsity"), "metric": metric,
               "metric_name": f"{phase}.metric" if phase else None}
    summary.update({key: report[key] for key in ("compression_ratio", "param_reduction") if key in report})
    if phase and phase_results(report)[phase].get("at_chance"):
        summary["at_chance"] = True
    if "param_reduction" in report:
        summary["params"] = {key: report["params"][key] for key in ("dense", "pruned")}
    return summary


def compression(run: dict[str, Any]) -> float | None:
    """The compression a run achieved, the Pareto front's x: its `compression_ratio` (dense parameters per non-zero
    parameter of the final model; zeroed weights and removed filters both count), or, for a report without one,
    1 / (1 - sparsity) of its prunable weights. None when neither is known."""
    if run.get("compression_ratio") is not None:
        return float(run["compression_ratio"])
    sparsity = run.get("sparsity")
    return None if sparsity is None else 1.0 / max(1.0 - sparsity, 1e-12)


def removed_filters(summary: dict[str, Any]) -> bool:
    """Whether a run (a `summarize_report` or sweep.json run) removed filters: fewer parameters than dense."""
    return summary.get("param_reduction", 1.0) > 1.0


def removal_words(summary: dict[str, Any]) -> str:
    """`params 488,001 -> 122,809 (3.97x fewer, filters removed)` for a Method 2 run (a `summarize_report` with
    `param_reduction`), as `sparsetrain eval` words it (`params 488,001 (no filter removed)` when it removed none);
    '' for other runs."""
    if "param_reduction" not in summary:
        return ""
    params = summary.get("params", {})
    if not removed_filters(summary):
        return f"params {params['dense']:,} (no filter removed)" if "dense" in params else "no filter removed"
    counts = f"{params['dense']:,} -> {params['pruned']:,} " if {"dense", "pruned"} <= set(params) else ""
    return f"params {counts}({summary['param_reduction']:.2f}x fewer, filters removed)"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points that no other point beats on both compression and metric (higher is better for both)."""
    front = []
    for i, (s_i, m_i) in enumerate(points):
        dominated = any(s_j >= s_i and m_j >= m_i and (s_j > s_i or m_j > m_i)
                        for j, (s_j, m_j) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def collect(base: RunConfig, points: list[SweepPoint], overrides: list[str]) -> dict[str, Any]:
    """Read every point's report.json, write `sweep.json` and (unless the base config sets `report.plots: false`)
    `sweep_pareto.png` in the base out_dir; sweep.json's `plot` is the PNG's path, or None when none was drawn.

    A point's `result` (`wait_points` or `recorded_status`) decides: failed, queued or running points are that, even
    when their out_dir holds an earlier run's report.json; a done point (or one with no job recorded) is done when its
    report.json exists, else missing.
    """
    runs = [_collected_run(point) for point in points]
    scored = [i for i, run in enumerate(runs) if _scored(run)]
    front = pareto_front([(compression(runs[i]), runs[i]["metric"]) for i in scored])
    for rank, i in enumerate(scored):
        runs[i]["pareto"] = rank in front
    for run in runs:
        if run.get("at_chance"):
            run["pareto"] = False
    out_dir = Path(base.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = out_dir / "sweep_pareto.png" if base.report.plots else None
    summary = {"overrides": overrides, "runs": runs, "plot": None if plot is None else str(plot)}
    (out_dir / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    if plot is not None:
        plot_pareto(runs, plot)
    return summary


def _scored(run: dict[str, Any]) -> bool:
    """Whether a run takes part in the Pareto front: it has a compression and a metric, and did not collapse (a model
    at chance level is no trade-off of accuracy for size, though its compression is the highest)."""
    return compression(run) is not None and run.get("metric") is not None and not run.get("at_chance")


def _collected_run(point: SweepPoint) -> dict[str, Any]:
    """One entry of sweep.json's `runs`: name, overrides, out_dir, status, job_id / Slurm state when known, and the
    report's sparsity, compression (`compression`) and metric (done; `summarize_report`) or an error (failed,
    missing)."""
    report_path = Path(point.config.out_dir) / "report.json"
    status = point.result.get("status")
    run = {"name": point.name, "overrides": point.overrides, "out_dir": point.config.out_dir, "status": status}
    run.update({key: point.result[key] for key in ("job_id", "state") if point.result.get(key)})
    if status in NOT_DONE:  # a report.json there is an earlier run's, not this job's
        if point.result.get("error"):
            run["error"] = point.result["error"]
    elif report_path.is_file():
        run.update(summarize_report(json.loads(report_path.read_text())), status="done")
        run["compression"] = compression(run)  # the Pareto front's x, the table's column
    else:
        run["status"] = "missing"
        run["error"] = (f"no {report_path}" if status == "done" else
                        f"no job recorded in {JOBS_FILE} and no {report_path}")
    return run


def summary_table(runs: list[dict[str, Any]]) -> str:
    """sweep.json's runs for the terminal: one row per point (point, state, Slurm job, sparsity, compression, final
    metric, Pareto), a line naming what sparsity and compression count (`SCOPE_LINE`, as the run's report table
    says), then the error of each failed or missing point on a line of its own. Compression is the run's
    `compression` (`51.30x`; `3.51x filters removed` for a Method 2 run, whose sparsity is 0: no weight of its smaller
    model is zero). The metric column is headed `metric`, the
    key its values have in sweep.json (the phase they come from is each run's `metric_name`, e.g.
    `finetune.metric`), whether or not a run has finished and whatever phase each run ended with."""
    rows = [TABLE_COLUMNS]
    for run in runs:
        sparsity, ratio = run.get("sparsity"), compression(run)
        removed = " filters removed" if removed_filters(run) else ""
        rows.append((run["name"], _state_text(run), run.get("job_id") or "-",
                     "-" if sparsity is None else f"{100 * sparsity:.1f} %",
                     "-" if ratio is None else f"{ratio:.2f}x{removed}", _metric_text(run),
                     "yes" if run.get("pareto") else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append(SCOPE_LINE)
    lines += [f"{run['name']}: {run['error']}" for run in runs if run["status"] in ("failed", "missing")
              and run.get("error")]
    return "\n".join(lines)


def _metric_text(run: dict[str, Any]) -> str:
    """`91.20`, `9.50 at chance` for a run whose model collapsed (the run's report says why), `-` without a metric:
    two decimals for every run (metrics are percentages), so the column reads alike."""
    metric = run.get("metric")
    if metric is None:
        return "-"
    return f"{metric:.2f} at chance" if run.get("at_chance") else f"{metric:.2f}"


def _state_text(run: dict[str, Any]) -> str:
    """`done`, `running`, `queued (PENDING)`, `failed (CANCELLED)`: the status, and Slurm's state if it adds to it."""
    state = run.get("state")
    return f"{run['status']} ({state})" if state and state != run["status"].upper() else run["status"]


def plot_pareto(runs: list[dict[str, Any]], path: Path) -> None:
    """Final metric vs compression (`compression`, log scale) for every finished run, Pareto front joined by a line:
    Method 1 (zeroed weights) and Method 2 (removed filters) runs on one axis; runs at chance level are grey crosses,
    off the front."""
    from matplotlib.ticker import FuncFormatter

    from sparsetrain.plots import new_axes, save

    done = [run for run in runs if compression(run) is not None and run.get("metric") is not None]
    fig, ax = new_axes(6, 4.5)
    learned = [run for run in done if not run.get("at_chance")]
    collapsed = [run for run in done if run.get("at_chance")]
    ax.scatter([compression(r) for r in learned], [r["metric"] for r in learned], color="tab:blue", label="runs")
    if collapsed:
        ax.scatter([compression(r) for r in collapsed], [r["metric"] for r in collapsed], color="tab:gray", marker="x",
                   label="at chance (collapsed; not on the front)")
    for run in done:
        ax.annotate(run["name"], (compression(run), run["metric"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    front = sorted((r for r in done if r.get("pareto")), key=compression)
    ax.plot([compression(r) for r in front], [r["metric"] for r in front], color="tab:red", marker="o",
            label="Pareto front")
    metric_name = next((r["metric_name"] for r in done if r.get("metric_name")), "final metric")
    ax.set_xscale("log")
    ratio_ticks = FuncFormatter(lambda value, _: f"{value:g}x")  # 3x, not log scale's 3×10^0
    ax.xaxis.set_major_formatter(ratio_ticks)
    ax.xaxis.set_minor_formatter(ratio_ticks)
    ax.set(xlabel="compression (dense params / non-zero params of the final model;\nzeroed weights and removed "
           "filters both count)", ylabel=metric_name, title="Sweep: metric vs compression")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, path)


def submit_points(base: RunConfig, points: list[SweepPoint], cluster: str) -> list[Any]:
    """Submit all points at once (a Slurm job array) with the base config's resources and log folder."""
    from launch.job import PipelineJob
    from launch.submit import log_folder, make_executor, submission_errors, validate_launch
    from sparsetrain.config.loader import config_to_dict

    validate_launch(base, cluster)
    executor = make_executor(base, cluster)
    with submission_errors(log_folder(base), base.launch), executor.batch():
        jobs = [executor.submit(PipelineJob(config_to_dict(point.config))) for point in points]
    if cluster in RECORDED_CLUSTERS:
        record_jobs(base, points, jobs, cluster)
    return jobs


def submitted_line(base: RunConfig, points: list[SweepPoint], jobs: list[Any], cluster: str) -> str:
    """`submitted 2 runs (name sw-sparsetrain, 1 rank each, cluster=slurm): 661_0, 661_1; logs in OUT/slurm`, as
    `launch` says a job, with the points that start over (`restarted`: resume=false on a finished run) named."""
    from launch.submit import job_name, log_folder

    ranks = base.launch.world_size
    runs = f"{len(jobs)} run{'s' * (len(jobs) != 1)}"
    line = (f"submitted {runs} (name {job_name(base)}, {ranks} rank{'s' * (ranks != 1)} each, cluster={cluster}): "
            + ", ".join(job.job_id for job in jobs))
    again = restarted(points)
    if again:
        them = "their finished runs are" if len(again) > 1 else "its finished run is"
        line += (f"; resume=false: {', '.join(point.name for point in again)} start{'s' * (len(again) == 1)} over "
                 f"({them} replaced)")
    return f"{line}; logs in {log_folder(base)}"


def record_jobs(base: RunConfig, points: list[SweepPoint], jobs: list[Any], cluster: str) -> Path:
    """Add each point's job id to `<base out_dir>/sweep_jobs.json` ({"cluster", "log_folder", "jobs": {point name:
    job id}}, and "where": {point name: {"cluster", "log_folder"}} for jobs of earlier submissions made with another
    log folder or cluster), so that `--collect` finds the jobs. The jobs of points not submitted now keep their
    record: a re-run that submits some points never loses where the others' jobs are."""
    from launch.submit import log_folder

    path = Path(base.out_dir) / JOBS_FILE
    recorded = json.loads(path.read_text()) if path.is_file() else {}
    folder = str(log_folder(base))
    earlier = {name: _recorded_job(recorded, name)[:2] for name in recorded.get("jobs", {})}
    recorded.update(cluster=cluster, log_folder=folder)
    recorded["jobs"] = {**recorded.get("jobs", {}), **{p.name: j.job_id for p, j in zip(points, jobs, strict=True)}}
    # where each earlier job is, when not where this submission's are (another launch.log_folder or cluster)
    recorded["where"] = {name: {"cluster": where[0], "log_folder": where[1]} for name, where in earlier.items()
                         if name not in {p.name for p in points} and where != (cluster, folder)}
    if not recorded["where"]:
        del recorded["where"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recorded, indent=2) + "\n")
    return path


def _recorded_job(recorded: dict[str, Any], name: str) -> tuple[str, str, str] | tuple[None, None, None]:
    """(cluster, log folder, job id) of point `name`'s job in `recorded` (sweep_jobs.json): the file's cluster and log
    folder, or the point's own under `where` (a job of an earlier submission with other ones); Nones without a job."""
    job_id = recorded.get("jobs", {}).get(name)
    if job_id is None:
        return None, None, None
    where = recorded.get("where", {}).get(name, {})
    return (where.get("cluster", recorded.get("cluster")), where.get("log_folder", recorded.get("log_folder")),
            job_id)


def recorded_status(base: RunConfig, points: list[SweepPoint]) -> None:
    """Set each point's `result` from the job `sweep_jobs.json` records for it (`job_status`); points without a
    recorded job keep an empty result."""
    path = Path(base.out_dir) / JOBS_FILE
    if not path.is_file():
        return
    recorded = json.loads(path.read_text())
    for point in points:
        cluster, folder, job_id = _recorded_job(recorded, point.name)
        if job_id is not None and cluster in RECORDED_CLUSTERS:
            point.result = job_status(_job(cluster, Path(folder), job_id), point.config.launch)


def _job(cluster: str, folder: Path, job_id: str) -> Any:
    """The submitit job `job_id` of `cluster` (rank 0's task: the task whose result the launcher reads)."""
    import submitit

    return submitit.SlurmJob(folder, job_id) if cluster == "slurm" else submitit.LocalJob(folder, job_id)


def job_status(job: Any, launch: LaunchConfig | None = None) -> dict[str, Any]:
    """Where a job is without waiting: {"status": done|failed|queued|running, "job_id", "state" (Slurm's), "error"
    (failed: what the job raised, one line, or how it ended without a result: `no_result`, which with the point's
    `launch` settings names the `launch.srun_args` item srun refused, as `launch` does), "no_result" (True when it
    ended without one: a resubmission may resume it, `launch.cli.add_resume_hints`)}.

    Rank 0's result file decides done or failed; else Slurm's state (`scontrol`; no accounting database needed):
    PENDING and requeued states are queued, RUNNING and the like running, a final state or a job Slurm no longer
    knows is failed (it ended without a result). A local job is running while its process lives.
    """
    import submitit

    from launch.submit import FINAL_STATES, QUEUED_STATES, job_failure, no_result, rank0_job, slurm_state

    rank0 = rank0_job(job)
    record: dict[str, Any] = {"job_id": job.job_id}
    if rank0.paths.result_pickle.exists():
        try:
            rank0.result()
        except Exception as err:  # the job raised: its one line, as `launch --wait` prints it
            return {**record, "status": "failed", "error": job_failure(err)[0]}
        return {**record, "status": "done"}
    if not isinstance(job, submitit.SlurmJob):
        alive = _process_alive(job.job_id)
        return {**record, "status": "running"} if alive else {**record, **_ended(no_result(job, launch=launch))}
    state = slurm_state(job.job_id)
    if state == "UNKNOWN":  # a while after it ended, or at once for a pending array element cancelled
        return {**record, **_ended(no_result(job, note=" (Slurm no longer lists it)", launch=launch))}
    if state in FINAL_STATES:
        return {**record, "state": state, **_ended(no_result(job, state, launch=launch))}
    return {**record, "status": "queued" if state in QUEUED_STATES else "running", "state": state}


def _ended(error: str) -> dict[str, Any]:
    """The result of a job that ended without one (`no_result`'s line as its error)."""
    return {"status": "failed", "error": error, "no_result": True}


def _process_alive(pid: str) -> bool:
    """Whether the local job's process (its job id is the pid) still runs."""
    import os

    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def wait_points(points: list[SweepPoint], jobs: list[Any], timeout_s: float | None = None) -> None:
    """Wait for every job; a failed point is recorded (status, one-line error) and does not stop the others; one
    still queued or running when `timeout_s` (seconds, for all the jobs together) has passed is recorded as such
    (`job_status`)."""
    from launch.submit import LaunchError, WaitTimeout, job_failure, wait_result

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    for point, job in zip(points, jobs, strict=True):
        try:
            wait_result(job, timeout_s=None if deadline is None else max(0.0, deadline - time.monotonic()),
                        launch=point.config.launch)
            point.result = {"status": "done", "job_id": job.job_id}
        except WaitTimeout:  # the job goes on: not a failure
            point.result = job_status(job, point.config.launch)
        except LaunchError as err:  # ended without a result (`no_result`): cancelled, killed, node failure
            point.result = {"job_id": job.job_id, **_ended(job_failure(err)[0])}
        except Exception as err:  # a failed run is data for sweep.json, not the end of the sweep
            point.result = {"status": "failed", "job_id": job.job_id, "error": job_failure(err)[0]}
