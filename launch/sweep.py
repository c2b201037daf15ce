"""Grid sweeps: `key=v1,v2` overrides expand into one run per point, submitted as one job array.

Each point runs in its own `out_dir` (`<base out_dir>/<key>=<value>_...`); once all are done, their
`report.json` files are collected into `<base out_dir>/sweep.json` and an accuracy-vs-sparsity plot
`<base out_dir>/sweep_pareto.png` with the Pareto front (no other point is both sparser and more accurate).
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsetrain.config.loader import ConfigError, load_config, resolve_key
from sparsetrain.config.schema import RunConfig


@dataclass
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
        ConfigError: malformed override, empty value or a swept `out_dir` / `launch.*` key.
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
        grid[key.strip()] = values
    return fixed, grid


def point_name(assignment: dict[str, str]) -> str:
    """Directory-safe name of a grid point, e.g. `alpha0=1e-05_beta=10`."""
    parts = [f"{key.split('.')[-1]}={value}" for key, value in assignment.items()]
    return re.sub(r"[^A-Za-z0-9=._+-]", "-", "_".join(parts))


def expand(config_path: str | Path | None, overrides: list[str]) -> tuple[RunConfig, list[SweepPoint]]:
    """The base config (fixed overrides only) and one validated config per grid point.

    Raises:
        ConfigError: any point's config is invalid (the message names the field) or the grid is empty.
    """
    fixed, grid = parse_grid(overrides)
    base = load_config(config_path, fixed)
    if not grid:
        raise ConfigError("sweep: no swept key; give at least one key=v1,v2,...")
    points = []
    for values in itertools.product(*grid.values()):
        assignment = dict(zip(grid, values, strict=True))
        name = point_name(assignment)
        point_overrides = [f"{key}={value}" for key, value in assignment.items()]
        out_dir = str(Path(base.out_dir) / name)
        config = load_config(config_path, [*fixed, *point_overrides, f"out_dir={out_dir}"])
        points.append(SweepPoint(name, point_overrides, config))
    return base, points


def summarize_report(report: dict[str, Any]) -> dict[str, Any]:
    """Sparsity and the final metric of a run's report.json: the metric of the last finished phase, read from
    the report's phase sections (`sparsetrain.report.final_metric`; either report format)."""
    from sparsetrain.report import final_metric

    phase, metric = final_metric(report)
    return {"sparsity": report.get("sparsity"), "metric": metric,
            "metric_name": f"{phase}.metric" if phase else None}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points that no other point beats on both sparsity and metric (higher is better for both)."""
    front = []
    for i, (s_i, m_i) in enumerate(points):
        dominated = any(s_j >= s_i and m_j >= m_i and (s_j > s_i or m_j > m_i)
                        for j, (s_j, m_j) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def collect(base: RunConfig, points: list[SweepPoint], overrides: list[str]) -> dict[str, Any]:
    """Read every point's report.json, write `sweep.json` and `sweep_pareto.png` in the base out_dir."""
    runs = []
    for point in points:
        report_path = Path(point.config.out_dir) / "report.json"
        run = {"name": point.name, "overrides": point.overrides, "out_dir": point.config.out_dir,
               "status": point.result.get("status", "unknown")}
        if point.result.get("status") == "failed":  # a report.json there is an earlier run's, not this job's
            run["error"] = point.result.get("error")
        elif report_path.is_file():
            run.update(summarize_report(json.loads(report_path.read_text())), status="done")
        else:
            run["status"] = point.result.get("status", "missing")
            run["error"] = point.result.get("error", f"no {report_path}")
        runs.append(run)
    scored = [i for i, run in enumerate(runs) if run.get("sparsity") is not None and run.get("metric") is not None]
    front = pareto_front([(runs[i]["sparsity"], runs[i]["metric"]) for i in scored])
    for rank, i in enumerate(scored):
        runs[i]["pareto"] = rank in front
    out_dir = Path(base.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"overrides": overrides, "runs": runs, "plot": str(out_dir / "sweep_pareto.png")}
    (out_dir / "sweep.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_pareto(runs, out_dir / "sweep_pareto.png")
    return summary


def plot_pareto(runs: list[dict[str, Any]], path: Path) -> None:
    """Final metric vs sparsity for every finished run, Pareto front joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [run for run in runs if run.get("sparsity") is not None and run.get("metric") is not None]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter([r["sparsity"] for r in done], [r["metric"] for r in done], color="tab:blue", label="runs")
    for run in done:
        ax.annotate(run["name"], (run["sparsity"], run["metric"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    front = sorted((r for r in done if r.get("pareto")), key=lambda r: r["sparsity"])
    ax.plot([r["sparsity"] for r in front], [r["metric"] for r in front], color="tab:red", marker="o",
            label="Pareto front")
    metric_name = next((r["metric_name"] for r in done if r.get("metric_name")), "final metric")
    ax.set(xlabel="sparsity (fraction of prunable weights = 0)", ylabel=metric_name, title="Sweep: metric vs sparsity")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def submit_points(base: RunConfig, points: list[SweepPoint], cluster: str) -> list[Any]:
    """Submit all points at once (a Slurm job array) with the base config's resources and log folder."""
    from launch.job import PipelineJob
    from launch.submit import log_folder, make_executor, submission_errors, validate_launch
    from sparsetrain.config.loader import config_to_dict

    validate_launch(base, cluster)
    executor = make_executor(base, cluster)
    with submission_errors(log_folder(base)), executor.batch():
        jobs = [executor.submit(PipelineJob(config_to_dict(point.config))) for point in points]
    return jobs


def wait_points(points: list[SweepPoint], jobs: list[Any], timeout_s: float | None = None) -> None:
    """Wait for every job; a failed point is recorded (status, one-line error) and does not stop the others."""
    from launch.submit import job_failure, wait_result

    for point, job in zip(points, jobs, strict=True):
        try:
            wait_result(job, timeout_s=timeout_s)
            point.result = {"status": "done", "job_id": job.job_id}
        except Exception as err:  # a failed run is data for sweep.json, not the end of the sweep
            point.result = {"status": "failed", "job_id": job.job_id, "error": job_failure(err)[0]}
