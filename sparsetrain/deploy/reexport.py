"""`sparsetrain export RUN_DIR`: rebuild a finished run's context from its saved config and write its export.

Kept apart from `run.py` (what the pipeline calls at the end of a run) because it builds a pipeline itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparsetrain.deploy.run import export_model, held_models, listed, timed_held
from sparsetrain.phases import final_phase
from sparsetrain.progress import log


def export_run(run_dir: str | Path, phase: str | None = None, overrides: list[str] | None = None) -> Path:
    """`sparsetrain export RUN_DIR [deploy.KEY=VALUE ...] [--phase P]`: re-create the run's context from its saved
    config and export its final phase (or the finished phase `phase`). state.json's `deployed` record (`deploy.run`)
    and report.json's "export" and "export_phase" then describe what export/ holds; a phase other than the final one
    is also said in one line, since report.json's other numbers still describe the final phase. Export does not
    time: when latency.json did not time what export/ now holds (other models or phase), report.json's "latency"
    and "latency_ms" are removed and one line says so (`_update_report`).

    Args:
        overrides: `deploy.*` settings for this export (e.g. `deploy.compact=true`, `deploy.formats=[onnx]`),
            validated like the run's config; config.yaml and state.json then record them. The
            `deploy.latency*` settings are refused (`check_deploy_only`).

    Raises:
        ValueError: not a run directory, or (`sparsetrain.rundir.check_finished`) its final phase, or `phase`, has
            not finished: an earlier phase is never exported in silence.
        ConfigError: an override outside `deploy.*` (the run's own settings, from its config.yaml), of a
            `deploy.latency*` setting (export does not time), or a bad value.
    """
    from sparsetrain.config import load_config
    from sparsetrain.phases import check_phases
    from sparsetrain.pipeline import Pipeline  # heavy (torch, deepspeed): only when exporting
    from sparsetrain.rundir import check_finished, check_writable

    run_dir = Path(run_dir)
    overrides = list(overrides or [])
    check_deploy_only(overrides, run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"export: {run_dir} is not a run directory (no config.yaml)")
    if phase is not None:
        check_phases([phase])
    check_finished(run_dir, "export", phase)
    check_writable(run_dir, "export", "the run directory")  # export/, report.json and config.yaml are written there
    cfg = load_config(run_dir / "config.yaml", [*overrides, f"out_dir={run_dir}", "tracking.mode=disabled",
                                                 "resume=true"])
    pipeline = Pipeline(cfg)
    try:
        pipeline.open()  # config.yaml records the deploy settings used
        manifest = export_model(pipeline, phase)
        _update_report(run_dir, manifest, phase or final_phase(pipeline.state["completed"]),
                       final_phase(pipeline.state["completed"]))
        return run_dir / "export"
    finally:
        pipeline.close()


def check_deploy_only(overrides: list[str], run_dir: str | Path = "RUN_DIR") -> None:
    """Refuse an export override outside the `deploy` section (bare leaf names are expanded first, so
    `compact=true` is deploy.compact), and one of the `deploy.latency*` settings: export does not time the model.

    Raises:
        ConfigError: one line naming the key: export only takes deploy.* overrides, and what the key is instead (an
            execution setting of the run, or one that made its weights); a latency setting points to `sparsetrain
            bench latency RUN_DIR` and to a re-run of the recipe.
    """
    from sparsetrain.config import ConfigError
    from sparsetrain.config.loader import resolve_key

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"export: {item!r} is not a key=value override (e.g. deploy.compact=true)")
        key, value = (part.strip() for part in item.split("=", 1))
        key = resolve_key(key)
        if key != "deploy" and not key.startswith("deploy."):
            raise ConfigError(f"{key}: export only takes deploy.* overrides; {key} {_what_setting(key)}")
        timing = _latency_keys(key, value)
        if timing:
            raise ConfigError(f"{timing[0]}: export does not time the model; time this export with `sparsetrain "
                              f"bench latency {run_dir}` (its own table), or set it for a re-run of the recipe "
                              "(`sparsetrain run`, which times into latency.json)")


def _what_setting(key: str) -> str:
    """What a non-deploy key is to a run, for export's refusal: an execution setting a re-run may change
    (`rundir.MUTABLE`: threads, tracking, logging, ...), or one that made the run's weights."""
    from sparsetrain.rundir import is_execution_setting

    if is_execution_setting(key):
        return "is an execution setting of the run, read from its config.yaml (a re-run with `sparsetrain run` may " \
               "change it)"
    return "made the run's weights (change it in a new run)"


def _latency_keys(key: str, value: str) -> list[str]:
    """The `deploy.latency*` settings an override sets: `key` itself, or those of a whole `deploy={...}` mapping."""
    from sparsetrain.config.loader import parse_value

    if key == "deploy":
        section = parse_value(value)
        return [f"deploy.{k}" for k in section if str(k).startswith("latency")] if isinstance(section, dict) else []
    return [key] if key.split(".")[1].startswith("latency") else []


def _update_report(run_dir: Path, manifest: dict[str, Any], phase: str, final: str) -> None:
    """report.json's "export" section from the new manifest, "export_phase" the phase exported (no report.json:
    nothing to update); one line when that is not the final phase the rest of the report describes.

    The run's latency table (latency.json, else report.json's "latency") is kept only while it timed what export/ now
    holds, as a re-run's reuse check (`run._latency_to_reuse`) tells: the same models (`run.held_models`: compact
    only when export/compact/ was written and verified) of the same phase (a table without `phase`: the final one);
    export formats do not change it. Otherwise report.json's "latency" and "latency_ms" are removed, latency.json is
    left as it is, stale, and one line says so.
    """
    from sparsetrain.engine.checkpoint import atomic_write_text

    path = run_dir / "report.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        report = None
    stale = _stale_latency(run_dir, report, manifest, phase, final)
    if report is not None:
        report.update(export=manifest["formats"], export_phase=phase)
        if stale:
            report.pop("latency", None)
            report.pop("latency_ms", None)
        atomic_write_text(path, json.dumps(report, indent=2))
    if stale:
        log.warning(f"[export] latency.json was timed on the previous export ({stale}), not on what export/ now holds "
                    f"(models {listed(held_models(manifest))}, phase {phase}): report.json's latency and "
                    f"latency_ms are removed and latency.json is left as it was; re-time with `sparsetrain bench "
                    f"latency {run_dir}` or re-run the recipe")
    if report is not None and phase != final:
        timed = (report.get("latency") or {}).get("phase", final)  # tables before `phase` was recorded: the final
        latency = f" and its latency table (latency.phase {timed})" if "latency" in report else ""
        log.info(f"[export] {run_dir / 'export'} now holds the {phase} model: report.json's export section says so, "
                 f"its other numbers{latency} describe the final phase {final} (a re-run of the run re-exports "
                 f"{final})")


def _stale_latency(run_dir: Path, report: dict[str, Any] | None, manifest: dict[str, Any], phase: str,
                   final: str) -> str | None:
    """`models ..., phase ...` of the run's latency table when it did not time export/'s models of `phase`; None
    when it did, or when there is no table (an unreadable latency.json: report.json's copy)."""
    try:
        table = json.loads((run_dir / "latency.json").read_text())
    except (OSError, ValueError):
        table = (report or {}).get("latency")
    if not isinstance(table, dict):
        return None
    models, timed_phase = timed_held(table), table.get("phase") or final
    if models == held_models(manifest) and timed_phase == phase:
        return None
    return f"models {listed(models)}, phase {timed_phase}"
