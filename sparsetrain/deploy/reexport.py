"""`sparsetrain export RUN_DIR`: rebuild a finished run's context from its saved config and write its export.

Kept apart from `run.py` (what the pipeline calls at the end of a run) because it builds a pipeline itself.
"""

from __future__ import annotations

from pathlib import Path

from sparsetrain.deploy.run import export_model


def export_run(run_dir: str | Path) -> Path:
    """`sparsetrain export RUN_DIR`: re-create the run's context from its saved config and export."""
    from sparsetrain.config import load_config
    from sparsetrain.pipeline import Pipeline  # heavy (torch, deepspeed): only when exporting

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"export: {run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml", [f"out_dir={run_dir}", "tracking.mode=disabled", "resume=true"])
    pipeline = Pipeline(cfg)
    try:
        export_model(pipeline)
        return run_dir / "export"
    finally:
        pipeline.close()
