"""`sparsetrain export RUN_DIR`: rebuild a finished run's context from its saved config and write its export.

Kept apart from `run.py` (what the pipeline calls at the end of a run) because it builds a pipeline itself.
"""

from __future__ import annotations

from pathlib import Path

from sparsetrain.deploy.run import export_model


def export_run(run_dir: str | Path, phase: str | None = None) -> Path:
    """`sparsetrain export RUN_DIR [--phase P]`: re-create the run's context from its saved config and export its
    final phase (or the finished phase `phase`).

    Raises:
        ValueError: not a run directory, or (`sparsetrain.rundir.check_finished`) its final phase, or `phase`, has
            not finished: an earlier phase is never exported in silence.
    """
    from sparsetrain.config import load_config
    from sparsetrain.phases import check_phases
    from sparsetrain.pipeline import Pipeline  # heavy (torch, deepspeed): only when exporting
    from sparsetrain.rundir import check_finished

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"export: {run_dir} is not a run directory (no config.yaml)")
    if phase is not None:
        check_phases([phase])
    check_finished(run_dir, "export", phase)
    cfg = load_config(run_dir / "config.yaml", [f"out_dir={run_dir}", "tracking.mode=disabled", "resume=true"])
    pipeline = Pipeline(cfg)
    try:
        export_model(pipeline, phase)
        return run_dir / "export"
    finally:
        pipeline.close()
