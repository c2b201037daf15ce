"""Run tracking: metrics.jsonl plus Weights & Biases, on rank 0 only, W&B imported lazily.

The W&B run id is kept in `<out_dir>/wandb_run_id.txt`, so a resumed or requeued job continues the same run.

What W&B holds equals `metrics.jsonl`, one value per step, across any number of interruptions:

- every row goes to `metrics.jsonl` at once, but to W&B only once a checkpoint (or a finished phase) covers it
  (`commit`), so W&B never holds a step that a resumed run computes again (possibly with other values: after a
  non-finite stop the run resumes with a lower learning rate);
- a resumed run first sends the rows of the (cut back) `metrics.jsonl` that W&B lacks (`start`): a hard kill
  loses what W&B's service had not written yet, and SIGTERM (preemption) stops that service before the run stops.
  Offline, what W&B holds is read from the run's earlier `wandb/offline-run-*` files; online, W&B reports the
  first step it does not have (`run.starting_step`; not exercised by the tests, which run offline).

The cost: W&B shows a step up to `train.checkpoint_every` steps after `metrics.jsonl` and the progress line do.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sparsetrain.config.schema import TrackingConfig
from sparsetrain.errors import SetupError
from sparsetrain.runlock import slurm_job_id

log = logging.getLogger("sparsetrain")


def read_metrics_log(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl file, in order (none when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics_log(path: Path, keep_through_step: int) -> None:
    """Drop log lines written after the checkpoint we resume from, so the step log has no repeats."""
    if not path.exists():
        return
    kept = [row for row in read_metrics_log(path) if row.get("global_step", -1) <= keep_through_step]
    path.write_text("".join(json.dumps(row) + "\n" for row in kept))


def _numeric(metrics: dict[str, Any]) -> dict[str, int | float]:
    return {k: v for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "global_step"}


def _phase_steps(rows: list[dict[str, Any]]) -> str:
    """Which rows, per phase with its own step count as the progress log gives it: `sparsify steps 140-280 and its
    phase-end row, finetune step 10` (a row without a phase by its global step)."""
    steps: dict[str, list[int]] = {}
    ended: set[str] = set()
    for row in rows:
        phase = row.get("phase", "global")
        steps.setdefault(phase, [])
        if row.get("event") == "phase_end":
            ended.add(phase)
        else:
            steps[phase].append(row.get("step", row["global_step"]))
    return ", ".join(_span(phase, found, phase in ended) for phase, found in steps.items())


def _span(phase: str, steps: list[int], ended: bool) -> str:
    """`dense steps 5-10 and its phase-end row`, `dense step 5`, `prune's phase-end row`."""
    if not steps:
        return f"{phase}'s phase-end row"
    text = f"{phase} step {steps[0]}" if len(steps) == 1 else f"{phase} steps {steps[0]}-{steps[-1]}"
    return text + (" and its phase-end row" if ended else "")


def slurm_job(env: Mapping[str, str]) -> dict[str, str | int] | None:
    """The Slurm job this process runs in, for the W&B config: `job_id` as squeue and sacct name it (`514_1` for
    element 1 of job array 514, else SLURM_JOB_ID), the array's `array_job_id` / `array_task_id` when it is one,
    SLURM_JOB_ID itself (`raw_job_id`), `restart_count` (requeues so far, an int: 0 when the job has not been
    requeued) and `job_name`; None outside Slurm."""
    if not env.get("SLURM_JOB_ID"):
        return None
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    job: dict[str, str | int] = {"job_id": slurm_job_id(env), "raw_job_id": env["SLURM_JOB_ID"]}
    if array and task:
        job.update(array_job_id=array, array_task_id=task)
    restarts = env.get("SLURM_RESTART_COUNT", "")
    job["restart_count"] = int(restarts) if restarts.isdigit() else 0  # Slurm sets it only once a job is requeued
    if env.get("SLURM_JOB_NAME"):
        job["job_name"] = env["SLURM_JOB_NAME"]
    return job


def layer_sparsity_values(layers: list[dict[str, Any]]) -> dict[str, float]:
    """`layer_sparsity/<layer>`: the fraction of zeros in each prunable layer (report.json `layers`: name, total,
    nonzero), flat for the W&B summary, where runs compare per layer."""
    return {f"layer_sparsity/{layer['name']}": 1.0 - layer["nonzero"] / layer["total"]
            for layer in layers if layer.get("total")}


class Tracker:
    """Logs dicts of metrics; a no-op on every rank but 0. Open W&B with `start` once metrics.jsonl is final."""

    def __init__(self, cfg: TrackingConfig, out_dir: Path, config: dict[str, Any], is_main: bool) -> None:
        self.cfg, self.out_dir, self.config = cfg, out_dir, config
        self.enabled = is_main
        self.metrics_path = out_dir / "metrics.jsonl"
        self.run = None
        self._pending: list[tuple[int, dict[str, int | float]]] = []

    def start(self, fresh: bool = False) -> None:
        """Open (or continue) the W&B run and send it the rows of metrics.jsonl it lacks.

        Args:
            fresh: a new run starts in out_dir: a new W&B run, whatever an earlier run's `wandb_run_id.txt` (cleared
                next, `Pipeline.open`) says, and nothing to replay.

        Raises:
            SetupError: W&B could not start (one line, exit 5); nothing of ours is written then.
        """
        if self.enabled and self.cfg.mode != "disabled":
            self.run = self._start_wandb(fresh)
            if not fresh:
                self._replay()

    def files(self) -> tuple[str, ...]:
        """The files of out_dir this tracker has written for the current run (kept when an earlier run is cleared)."""
        return ("wandb_run_id.txt",) if self.run is not None else ()

    def _start_wandb(self, fresh: bool) -> Any:
        import wandb

        cfg, out_dir = self.cfg, self.out_dir
        id_file = out_dir / "wandb_run_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() and not fresh else uuid.uuid4().hex[:12]
        try:
            run = wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or out_dir.name, tags=cfg.tags,
                             id=run_id, resume="allow", mode=cfg.mode, dir=str(out_dir), config=self._wandb_config(),
                             settings=wandb.Settings(console="off", silent=True))
        except wandb.errors.Error as err:  # no API key, no network, a refused project: one line, exit 5
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SetupError(f"tracking.mode: W&B could not start its {cfg.mode} run ({first}); log in (`wandb "
                             "login` or WANDB_API_KEY), or set tracking.mode=offline (run files in out_dir/wandb, "
                             "`wandb sync` later) or tracking.mode=disabled") from None
        id_file.write_text(run_id)  # once the run exists: a refused start leaves an earlier run's id as it was
        return run

    def _wandb_config(self) -> dict[str, Any]:
        """The resolved config, plus `slurm` (`slurm_job`: the job id, array ids, restarts) inside a Slurm job; a
        requeued or resubmitted run updates it to the job that continues it."""
        job = slurm_job(os.environ)
        return {**self.config, "slurm": job} if job else self.config

    def _held_by_wandb(self) -> Callable[[int, set[str]], bool]:
        """Whether W&B already holds `keys` at `step`, from earlier segments of this run."""
        if self.cfg.mode == "offline":
            from sparsetrain.wandb_history import offline_steps

            steps = offline_steps(self.out_dir / "wandb", self.run.id, exclude=Path(self.run.dir).parent)
            return lambda step, keys: keys <= steps.get(step, set())
        first_missing = self.run.starting_step
        return lambda step, keys: step < first_missing

    def _replay(self) -> None:
        rows = read_metrics_log(self.metrics_path)
        if not rows:
            return
        held = self._held_by_wandb()
        missing = [row for row in rows if _numeric(row) and not held(row["global_step"], set(_numeric(row)))]
        if missing:
            log.info(f"W&B lacks {len(missing)} of the {len(rows)} rows of metrics.jsonl ({_phase_steps(missing)}); "
                     "sending them again")
        for row in missing:
            self._send(row["global_step"], _numeric(row))

    def log(self, metrics: dict[str, Any], global_step: int) -> None:
        """Append a row to metrics.jsonl now; it goes to W&B at the next `commit`."""
        if not self.enabled:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({"global_step": global_step, **metrics}) + "\n")
        if self.run is not None:
            self._pending.append((global_step, _numeric(metrics)))

    def commit(self) -> None:
        """Send the rows logged so far to W&B: call once a checkpoint or a finished phase covers them."""
        pending, self._pending = self._pending, []
        for step, values in pending:
            self._send(step, values)

    def _send(self, step: int, values: dict[str, int | float]) -> None:
        if self.run is not None:
            self._guarded(lambda: self.run.log(values, step=step))

    def _guarded(self, call: Any) -> None:
        """W&B's service process can die under us (SIGTERM on preemption): keep training, keep metrics.jsonl."""
        try:
            call()
        except Exception as err:  # wandb raises its own error types when its service is gone
            log.warning(f"W&B stopped working ({type(err).__name__}: {err}); logging to metrics.jsonl only")
            self.run = None

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self._guarded(lambda: self.run.summary.update(values))

    def report_media(self, layers: list[dict[str, Any]], plots: list[Path]) -> None:
        """Put the report's per-layer sparsity and plots in the W&B run summary (not its history, which holds exactly
        the rows of metrics.jsonl): `layer_sparsity/<layer>` numbers (`layer_sparsity_values`), the table
        `layer_sparsity_table` (layer, total, nonzero, sparsity: a bar chart in W&B) and each PNG as an image under
        `plots/<name>` (e.g. plots/layer_sparsity).

        Args:
            layers: report.json `layers` ({"name", "total", "nonzero"} per prunable layer).
            plots: PNG files the report drew (none with report.plots=false).
        """
        if self.run is None:
            return
        import wandb

        values: dict[str, Any] = layer_sparsity_values(layers)
        if values:
            rows = [[layer["name"], layer["total"], layer["nonzero"], values[f"layer_sparsity/{layer['name']}"]]
                    for layer in layers if layer.get("total")]
            values["layer_sparsity_table"] = wandb.Table(columns=["layer", "total", "nonzero", "sparsity"], data=rows)
        values.update({f"plots/{path.stem}": wandb.Image(str(path)) for path in plots})
        self.summary(values)

    def close(self) -> None:
        """Finish the W&B run; rows no checkpoint covers are not sent (a resumed run logs them again)."""
        self._pending.clear()
        if self.run is not None:
            import wandb

            run, self.run = self.run, None
            # teardown flushes the run file now (a shared W&B service may otherwise write it later). Either may
            # fail when W&B's service died (SIGTERM): metrics.jsonl has every row and a resume replays them.
            for call in (run.finish, wandb.teardown):
                try:
                    call()
                except Exception as err:  # wandb's own error types
                    log.warning(f"W&B: {call.__name__} failed ({type(err).__name__}: {err})")
