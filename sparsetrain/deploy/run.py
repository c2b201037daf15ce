"""A run's export folder (`out_dir/export/`) and speed table, written at the end of `sparsetrain run` and by
`sparsetrain export RUN_DIR`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch

from sparsetrain.engine.distributed import barrier, broadcast_object
from sparsetrain.engine.finite import require_finite
from sparsetrain.phases import final_phase
from sparsetrain.progress import log

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from sparsetrain.pipeline import Pipeline

__all__ = ["DEPLOYED", "deploy_run", "example_batch", "export_model", "final_phase"]

DEPLOYED = "deployed"  # state.json: {"phase", "deploy"} that export/ and latency.json were last written for


def example_batch(test_set: Dataset, size: int = 2) -> torch.Tensor:
    """The first `size` test inputs as one batch: what exports are traced and verified on."""
    return torch.stack([test_set[i][0] for i in range(min(size, len(test_set)))]).float()


def export_model(pipeline: Pipeline, phase: str | None = None) -> dict[str, Any]:
    """Write `<out_dir>/export/` from `phase` (default: the last finished phase) on rank 0; returns its manifest
    (empty elsewhere)."""
    from sparsetrain.config import config_to_dict
    from sparsetrain.deploy.folder import write_export

    phase = phase or final_phase(pipeline.state["completed"])
    if phase is None:
        raise ValueError(f"export: {pipeline.out_dir} has no finished phase to export")
    manifest: dict[str, Any] = {}
    if pipeline.dist.is_main:
        cfg = pipeline.cfg
        metric = pipeline.state["completed"][phase].get("metric")
        meta = pipeline.export_meta(phase=phase, metric=metric, task=cfg.task, data=config_to_dict(cfg)["data"])
        model = pipeline.model_from(phase)
        require_finite(model.state_dict(), f"the {phase} weights to export", "this run's weights diverged; "
                       "re-run the phase after fixing the training settings")
        manifest = write_export(model, pipeline.out_dir / "export", meta=meta,
                                example=example_batch(pipeline.data.test), formats=cfg.deploy.formats,
                                opset=cfg.deploy.opset, tolerance=cfg.deploy.tolerance)
    barrier()
    return manifest


def deploy_run(pipeline: Pipeline) -> dict[str, Any]:
    """Export, then (rank 0, `deploy.latency`) time dense vs compressed; the report's "export" and "latency".

    Outputs that are already up to date (`_outputs_to_reuse`: a re-run of a finished run) are read back instead
    of written again; state.json's `deployed` records what the outputs were written for.
    """
    reused = broadcast_object(_outputs_to_reuse(pipeline) if pipeline.dist.is_main else None)
    if reused is not None:
        return reused if pipeline.dist.is_main else {}
    manifest = export_model(pipeline)
    if not pipeline.dist.is_main:
        return {}
    out: dict[str, Any] = {"export": manifest["formats"]}
    deploy = pipeline.cfg.deploy
    if deploy.latency:
        from sparsetrain.deploy.latency import latency_table
        from sparsetrain.deploy.latency_report import format_latency, write_latency

        table = latency_table(pipeline.out_dir / "export", batches=(1, deploy.latency_batch),
                              repeats=deploy.latency_repeats, threads=deploy.latency_threads)
        write_latency(table, pipeline.out_dir)
        out["latency"] = table
        log.info("\n" + format_latency(table))
    _record_outputs(pipeline)
    return _with_headline(pipeline, out)


def _with_headline(pipeline: Pipeline, out: dict[str, Any]) -> dict[str, Any]:
    if pipeline.structural and "latency" in out:
        out["latency_ms"] = _headline(out["latency"])
    return out


def _deploy_key(pipeline: Pipeline) -> dict[str, Any]:
    """What the export and latency outputs depend on besides the run's fixed settings: the exported phase and the
    deploy settings (which may change between re-runs of a finished run, `rundir.MUTABLE`)."""
    from sparsetrain.config import config_to_dict

    return {"phase": final_phase(pipeline.state["completed"]), "deploy": config_to_dict(pipeline.cfg)["deploy"]}


def _record_outputs(pipeline: Pipeline) -> None:
    """Rank 0: note in state.json what export/ and latency.json now hold (no barrier: the other ranks are done)."""
    from sparsetrain.engine.checkpoint import atomic_write_text

    pipeline.state[DEPLOYED] = _deploy_key(pipeline)
    atomic_write_text(pipeline.out_dir / "state.json", json.dumps(pipeline.state, indent=2))


def _outputs_to_reuse(pipeline: Pipeline) -> dict[str, Any] | None:
    """Rank 0: the report's "export" (and "latency") read back from disk when state.json records them for the same
    phase and deploy settings, export/ still holds that phase with every file its manifest lists, and latency.json
    exists (when `deploy.latency`); None when they must be written (again)."""
    from sparsetrain.deploy.folder import MANIFEST_FILE
    from sparsetrain.structural.serialize import ARCH_FILE

    key, folder = _deploy_key(pipeline), pipeline.out_dir / "export"
    if pipeline.state.get(DEPLOYED) != key:
        return None
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        exported = json.loads((folder / ARCH_FILE).read_text()).get("meta", {}).get("phase")
        files = {name for entry in manifest["formats"].values() for name in entry.get("files", [])}
        latency = json.loads((pipeline.out_dir / "latency.json").read_text()) if pipeline.cfg.deploy.latency else None
    except (OSError, ValueError, KeyError, AttributeError):
        return None
    if exported != key["phase"] or not all((folder / name).is_file() for name in files):
        return None
    log.info(f"[deploy] {folder}{' and latency.json' if latency else ''} already hold the {key['phase']} model for "
             f"these deploy settings: not exported or timed again (`sparsetrain export {pipeline.out_dir}` re-exports)")
    out = {"export": manifest["formats"], **({"latency": latency} if latency is not None else {})}
    return _with_headline(pipeline, out)


def _headline(table: dict[str, Any]) -> dict[str, Any]:
    """The report's `latency_ms` from the interleaved torch eager batch-1 row: the 20th percentiles dense and
    compressed and their ratio, the table's speed-up (`deploy.latency`)."""
    row = next(r for r in table["rows"] if (r["runtime"], r["device"], r["batch"]) == ("torch", "cpu", 1))
    return {"dense": row["dense_ms"]["p20"], "pruned": row["compressed_ms"]["p20"], "speedup": row["speedup"],
            "measured": "p20 of interleaved rounds, torch eager, CPU, batch 1; latency.json"}
