"""Export the final model of a run as architecture + safetensors, loadable by `sparsetrain.load_compressed`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sparsetrain.engine.distributed import barrier

if TYPE_CHECKING:
    from sparsetrain.pipeline import Pipeline

FINAL_PHASE_ORDER = ("finetune", "prune", "sparsify", "dense")


def final_phase(completed: dict) -> str | None:
    return next((p for p in FINAL_PHASE_ORDER if p in completed), None)


def export_model(pipeline: Pipeline) -> Path:
    """Write `<out_dir>/export/` (rank 0) from the last finished phase; returns the folder."""
    import copy

    from sparsetrain.structural.export import save_compressed

    phase = final_phase(pipeline.state["completed"])
    if phase is None:
        raise ValueError(f"export: {pipeline.out_dir} has no finished phase to export")
    folder = pipeline.out_dir / "export"
    if pipeline.dist.is_main:
        model = copy.deepcopy(pipeline.model_from(phase)).float().cpu()
        metric = pipeline.state["completed"][phase].get("metric")
        save_compressed(model, folder, meta=pipeline.export_meta(phase=phase, metric=metric, task=pipeline.cfg.task))
    barrier()
    return folder


def export_run(run_dir: str | Path) -> Path:
    """`sparsetrain export RUN_DIR`: re-create the run's context from its saved config and export."""
    from sparsetrain.config import load_config
    from sparsetrain.pipeline import Pipeline

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"export: {run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml", [f"out_dir={run_dir}", "tracking.mode=disabled", "resume=true"])
    pipeline = Pipeline(cfg)
    try:
        return export_model(pipeline)
    finally:
        pipeline.close()
