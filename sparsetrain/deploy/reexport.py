"""`sparsetrain export RUN_DIR`: rebuild a finished run's context from its saved config and write its export.

Kept apart from `run.py` (what the pipeline calls at the end of a run) because it builds a pipeline itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparsetrain.deploy.run import export_model
from sparsetrain.phases import final_phase
from sparsetrain.progress import log


def export_run(run_dir: str | Path, phase: str | None = None, overrides: list[str] | None = None) -> Path:
    """`sparsetrain export RUN_DIR [deploy.KEY=VALUE ...] [--phase P]`: re-create the run's context from its saved
    config and export its final phase (or the finished phase `phase`). state.json's `deployed` record (`deploy.run`)
    and report.json's "export" and "export_phase" then describe what export/ holds; a phase other than the final one
    is also said in one line, since report.json's other numbers and latency.json still describe the final phase.

    Args:
        overrides: `deploy.*` settings for this export (e.g. `deploy.compact=true`, `deploy.formats=[onnx]`),
            validated like the run's config; config.yaml keeps the settings the run was started with.

    Raises:
        ValueError: not a run directory, or (`sparsetrain.rundir.check_finished`) its final phase, or `phase`, has
            not finished: an earlier phase is never exported in silence.
        ConfigError: an override outside `deploy.*` (the run's other settings made its weights), or a bad value.
    """
    from sparsetrain.config import load_config
    from sparsetrain.phases import check_phases
    from sparsetrain.pipeline import Pipeline  # heavy (torch, deepspeed): only when exporting
    from sparsetrain.rundir import check_finished

    run_dir = Path(run_dir)
    overrides = list(overrides or [])
    check_deploy_only(overrides)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"export: {run_dir} is not a run directory (no config.yaml)")
    if phase is not None:
        check_phases([phase])
    check_finished(run_dir, "export", phase)
    cfg = load_config(run_dir / "config.yaml", [*overrides, f"out_dir={run_dir}", "tracking.mode=disabled",
                                                 "resume=true"])
    pipeline = Pipeline(cfg)
    try:
        manifest = export_model(pipeline, phase)
        _update_report(run_dir, manifest, phase or final_phase(pipeline.state["completed"]),
                       final_phase(pipeline.state["completed"]))
        return run_dir / "export"
    finally:
        pipeline.close()


def check_deploy_only(overrides: list[str]) -> None:
    """Refuse an export override outside the `deploy` section (bare leaf names are expanded first, so
    `compact=true` is deploy.compact).

    Raises:
        ConfigError: one line naming the key: only deploy.* settings can change at export.
    """
    from sparsetrain.config import ConfigError
    from sparsetrain.config.loader import resolve_key

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"export: {item!r} is not a key=value override (e.g. deploy.compact=true)")
        key = resolve_key(item.split("=", 1)[0].strip())
        if key != "deploy" and not key.startswith("deploy."):
            raise ConfigError(f"{key}: only deploy.* settings can be changed at export (the others made the run's "
                              "weights; change them in a new run)")


def _update_report(run_dir: Path, manifest: dict[str, Any], phase: str, final: str) -> None:
    """report.json's "export" section from the new manifest, "export_phase" the phase exported (no report.json:
    nothing to update); one line when that is not the final phase the rest of the report describes."""
    from sparsetrain.engine.checkpoint import atomic_write_text

    path = run_dir / "report.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    report.update(export=manifest["formats"], export_phase=phase)
    atomic_write_text(path, json.dumps(report, indent=2))
    if phase != final:
        timed = (report.get("latency") or {}).get("phase", final)  # tables before `phase` was recorded: the final
        latency = f" and its latency table (latency.phase {timed})" if "latency" in report else ""
        log.info(f"[export] {run_dir / 'export'} now holds the {phase} model: report.json's export section says so, "
                 f"its other numbers{latency} describe the final phase {final} (a re-run of the run re-exports "
                 f"{final})")
