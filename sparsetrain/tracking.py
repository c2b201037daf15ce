"""Run tracking: metrics.jsonl plus Weights & Biases, on rank 0 only, W&B imported lazily.

The W&B run id is kept in `<out_dir>/wandb_run_id.txt`, so a resumed or requeued job continues the same run.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

from sparsetrain.config.schema import TrackingConfig

log = logging.getLogger("sparsetrain")


def truncate_metrics_log(path: Path, keep_through_step: int) -> None:
    """Drop log lines written after the checkpoint we resume from, so the step log has no repeats."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("global_step", -1) <= keep_through_step]
    path.write_text("".join(f"{line}\n" for line in kept))


class Tracker:
    """Logs dicts of metrics; a no-op on every rank but 0."""

    def __init__(self, cfg: TrackingConfig, out_dir: Path, config: dict[str, Any], is_main: bool) -> None:
        self.enabled = is_main
        self.metrics_path = out_dir / "metrics.jsonl"
        self.run = None
        if is_main and cfg.mode != "disabled":
            self.run = self._start_wandb(cfg, out_dir, config)

    @staticmethod
    def _start_wandb(cfg: TrackingConfig, out_dir: Path, config: dict[str, Any]) -> Any:
        import wandb

        id_file = out_dir / "wandb_run_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        return wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or out_dir.name, tags=cfg.tags,
                          id=run_id, resume="allow", mode=cfg.mode, dir=str(out_dir), config=config,
                          settings=wandb.Settings(console="off", silent=True))

    def log(self, metrics: dict[str, Any], global_step: int) -> None:
        if not self.enabled:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({"global_step": global_step, **metrics}) + "\n")
        if self.run is not None:
            numeric = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            self._guarded(lambda: self.run.log(numeric, step=global_step))

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

    def close(self) -> None:
        if self.run is not None:
            import wandb

            run, self.run = self.run, None
            try:
                run.finish()
            finally:
                wandb.teardown()  # flushes the run file now; a shared W&B service may otherwise write it later
