"""A run's export folder (`out_dir/export/`) and speed table, written at the end of `sparsetrain run` and by
`sparsetrain export RUN_DIR`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch

from sparsetrain.deploy.loading import verified_compact
from sparsetrain.engine.distributed import barrier, broadcast_object
from sparsetrain.engine.finite import require_finite
from sparsetrain.errors import InputError
from sparsetrain.phases import PHASES, PRUNE, final_phase
from sparsetrain.progress import log
from sparsetrain.report import filters_removed

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from sparsetrain.pipeline import Pipeline

__all__ = ["DEPLOYED", "deploy_run", "example_batch", "export_model", "final_phase", "held_models", "listed",
           "timed_held"]

DEPLOYED = "deployed"  # state.json: {"phase", "deploy"} that export/ and latency.json were last written for


def example_batch(test_set: Dataset, size: int = 2) -> torch.Tensor:
    """The first `size` test inputs as one batch: what exports are traced and verified on."""
    return torch.stack([test_set[i][0] for i in range(min(size, len(test_set)))]).float()


def export_model(pipeline: Pipeline, phase: str | None = None) -> dict[str, Any]:
    """Write `<out_dir>/export/` from `phase` (default: the last finished phase) on rank 0; returns its manifest
    (empty elsewhere).

    Raises:
        InputError: no phase has finished, or `phase` has not.
    """
    from sparsetrain.config import config_to_dict
    from sparsetrain.data import data_record
    from sparsetrain.deploy.folder import write_export

    completed = pipeline.state["completed"]
    if not completed:
        raise InputError(f"export: {pipeline.out_dir} has no finished phase to export")
    phase = phase or final_phase(completed)
    if phase not in completed:
        raise InputError(f"export: phase {phase} of {pipeline.out_dir} has not finished (finished: "
                         f"{', '.join(p for p in PHASES if p in completed)})")
    manifest: dict[str, Any] = {}
    if pipeline.dist.is_main:
        cfg = pipeline.cfg
        metric = completed[phase].get("metric")
        data = data_record(config_to_dict(cfg)["data"], cfg.data.source, len(pipeline.data.train),
                           len(pipeline.data.test))
        meta = pipeline.export_meta(phase=phase, metric=metric, task=cfg.task, data=data)
        model = pipeline.model_from(phase)
        require_finite(model.state_dict(), f"the {phase} weights to export", "this run's weights diverged; "
                       "re-run the phase after fixing the training settings")
        manifest = write_export(model, pipeline.out_dir / "export", meta=meta,
                                example=example_batch(pipeline.data.test), formats=cfg.deploy.formats,
                                opset=cfg.deploy.opset, tolerance=cfg.deploy.tolerance,
                                compact=cfg.deploy.compact and not pipeline.structural)
        _record_outputs(pipeline, phase)
    barrier()
    return manifest


def deploy_run(pipeline: Pipeline) -> dict[str, Any]:
    """Export, then (rank 0, `deploy.latency`) time dense vs compressed (and vs compact, when the export wrote a
    verified `export/compact/`); the report's "export", "latency" and, for Method 2 or a table with the compact
    model, the headline "latency_ms" (`_headline`). A Method 2 run that removed no filter times nothing (one line
    says why, `_why_not_timed`): its report has no latency.

    Outputs that are already up to date (a re-run of a finished run) are read back instead of written again:
    export/ when state.json's `deployed` records it for the same final phase and export settings and every file its
    manifest lists is there (`_export_to_reuse`); latency.json when export/ was kept and the settings the table
    records are the run's (`_latency_to_reuse`). Otherwise one line says why it is written again.
    """
    manifest = broadcast_object(_export_to_reuse(pipeline) if pipeline.dist.is_main else None)
    kept = manifest is not None
    if not kept:
        manifest = export_model(pipeline)
    if not pipeline.dist.is_main:
        return {}
    out: dict[str, Any] = {"export": manifest["formats"], "export_phase": final_phase(pipeline.state["completed"])}
    deploy = pipeline.cfg.deploy
    table = None
    if kept:
        final = final_phase(pipeline.state["completed"])
        log.info(f"[deploy] {pipeline.out_dir / 'export'} already holds the {final} model for these deploy settings: "
                 f"not exported again (`sparsetrain export {pipeline.out_dir}` re-exports)")
    untimed = _why_not_timed(pipeline)
    if untimed and (deploy.latency or PRUNE in pipeline.state["completed"]):  # what would have been timed
        log.info(f"[deploy] latency not timed: {untimed}; report.json has no latency")
    timing = deploy.latency and not untimed
    if timing and (table := _latency_to_reuse(pipeline, manifest, exported=not kept)) is not None:
        log.info("[deploy] latency.json was timed with these deploy settings on this export: not timed again")
        if pipeline.cfg.report.plots and not (pipeline.out_dir / "latency.png").is_file():  # timed with plots off
            from sparsetrain.deploy.latency_report import plot_latency

            plot_latency(table, pipeline.out_dir / "latency.png")
    if timing and table is None:
        from sparsetrain.deploy.latency import latency_table
        from sparsetrain.deploy.latency_report import format_latency, write_latency

        table = latency_table(pipeline.out_dir / "export", batches=(1, deploy.latency_batch),
                              repeats=deploy.latency_repeats, threads=deploy.latency_threads,
                              memory=deploy.latency_memory)
        write_latency(table, pipeline.out_dir, plot=pipeline.cfg.report.plots)
        log.info("\n" + format_latency(table))
    if table is not None:
        out["latency"] = table
    if table is None:
        _point_to_compact(pipeline, manifest)
        _name_earlier_table(pipeline, untimed is not None)
    return _with_headline(pipeline, out)


def _why_not_timed(pipeline: Pipeline) -> str | None:
    """Why a Method 2 run times no latency: no filter was removed (or the prune phase has not run), so the compressed
    model is the dense architecture and any timed difference would be noise (the summary says "not compared");
    None when there is a smaller model to time, and for Method 1."""
    completed = pipeline.state["completed"]
    if not pipeline.structural or filters_removed(completed.get(PRUNE, {}).get("kept_filters", [])):
        return None
    if PRUNE not in completed:
        return "the prune phase has not run, so no filter was removed yet and the model is the dense architecture"
    return "no filter was removed, so the compressed model is the dense architecture"


def _name_earlier_table(pipeline: Pipeline, untimed: bool) -> None:
    """With no latency table (`deploy.latency=false`, or `untimed`: nothing to compare, `_why_not_timed`),
    report.json has no latency; a latency.json / latency.png an earlier run of this folder wrote stay on disk (a
    measurement is not deleted by a setting that skips measuring), and one line names them as no longer part of the
    report."""
    left = [name for name in ("latency.json", "latency.png") if (pipeline.out_dir / name).is_file()]
    if left:
        files, verb = " and ".join(left), "are" if len(left) > 1 else "is"
        why, redo = ("latency not timed", "") if untimed else \
            ("deploy.latency=false", " (deploy.latency=true times the model again, or reuses them when they match "
                                     "this export)")
        log.info(f"[deploy] {why}: report.json has no latency table; {files} {verb} kept from an earlier run, not "
                 f"part of this report{redo}")


def _point_to_compact(pipeline: Pipeline, manifest: dict[str, Any]) -> None:
    """With no latency table (`deploy.latency=false`), say where the smaller, faster model is and how to time it
    (a table with it times it in the run)."""
    if compact := verified_compact(manifest):
        log.info(f"[deploy] export/compact/ holds the model without its dead units, a smaller dense graph "
                 f"({compact['params']:,} parameters instead of {compact['masked_params']:,}); time it beside the "
                 f"dense and masked models with `sparsetrain bench latency {pipeline.out_dir}`")


def _with_headline(pipeline: Pipeline, out: dict[str, Any]) -> dict[str, Any]:
    """The report's `latency_ms`: Method 2's speed-up, or Method 1's compact model's (the masked model runs as a
    dense graph: no headline without compact)."""
    if "latency" in out and (pipeline.structural or "compact" in out["latency"].get("timed", {})):
        out["latency_ms"] = _headline(out["latency"])
    return out


def _deploy_key(pipeline: Pipeline, phase: str | None) -> dict[str, Any]:
    """What export/ depends on besides the run's fixed settings: the exported phase and the deploy settings (which
    may change between re-runs of a finished run, `rundir.MUTABLE`)."""
    from sparsetrain.config import config_to_dict

    return {"phase": phase, "deploy": config_to_dict(pipeline.cfg)["deploy"]}


def _record_outputs(pipeline: Pipeline, phase: str | None) -> None:
    """Rank 0: note in state.json which phase and deploy settings export/ now holds (no barrier)."""
    from sparsetrain.engine.checkpoint import write_run_state

    pipeline.state[DEPLOYED] = _deploy_key(pipeline, phase)
    write_run_state(pipeline.out_dir, pipeline.state)


def _export_to_reuse(pipeline: Pipeline) -> dict[str, Any] | None:
    """Rank 0: export/'s manifest when export/ already holds the final phase for these export settings; None (after
    one line saying why, when there is an export/ to replace) when it must be written (again)."""
    reason, manifest = _why_not_kept(pipeline)
    if reason:
        log.info(f"[deploy] re-exporting: {reason}")
    return manifest


def _why_not_kept(pipeline: Pipeline) -> tuple[str | None, dict[str, Any] | None]:
    from sparsetrain.deploy.folder import MANIFEST_FILE
    from sparsetrain.structural.serialize import ARCH_FILE

    final, folder = final_phase(pipeline.state["completed"]), pipeline.out_dir / "export"
    if not (folder / MANIFEST_FILE).is_file():
        return (f"export/{MANIFEST_FILE} is missing" if folder.is_dir() else None), None
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        files = sorted({name for entry in manifest["formats"].values() for name in entry.get("files", [])})
        exported = json.loads((folder / ARCH_FILE).read_text()).get("meta", {}).get("phase")
    except (OSError, ValueError, KeyError, AttributeError) as err:
        return f"export/ is unreadable ({type(err).__name__})", None
    if exported != final:
        return f"export/ holds the {exported} model, not the final phase {final}", None
    missing = next((name for name in files if not (folder / name).is_file()), None)
    if missing:
        return f"export/{missing} is missing", None
    recorded = pipeline.state.get(DEPLOYED) or {}
    if recorded.get("phase") != final:
        return "state.json does not record the deploy settings export/ was written with", None
    changed = _changed(recorded.get("deploy", {}), _deploy_key(pipeline, final)["deploy"], latency=False)
    return (f"deploy settings changed ({changed})" if changed else None), (None if changed else manifest)


def _changed(old: dict[str, Any], new: dict[str, Any], *, latency: bool) -> str:
    """`deploy.KEY old -> new` for the export settings (latency=False) or the latency ones that differ."""
    return "; ".join(f"deploy.{k} {old.get(k)} -> {v}" for k, v in new.items()
                     if k.startswith("latency") == latency and old.get(k) != v)


def _latency_to_reuse(pipeline: Pipeline, manifest: dict[str, Any], *, exported: bool) -> dict[str, Any] | None:
    """Rank 0: latency.json when it was timed with the run's deploy settings (what the table records: batches,
    repeats, threads, peak memory measured) and models (compact too when `manifest`, export/'s, lists a verified
    one), on the export/ kept; None after one line saying why not. `exported`: export/ was just written (anew), so
    an existing latency.json timed an earlier export and is never reused (no line when there is none: nothing is
    timed again)."""
    path = pipeline.out_dir / "latency.json"
    try:
        table = json.loads(path.read_text())
        timed = _timed_with(table)
    except FileNotFoundError:
        if exported:
            return None
        table, timed, reason = None, None, "latency.json is missing"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        table, timed, reason = None, None, f"latency.json is unreadable ({type(err).__name__})"
    if timed is not None:
        deploy = pipeline.cfg.deploy
        wanted = {"batches": [1, deploy.latency_batch], "repeats": deploy.latency_repeats,
                  "threads": deploy.latency_threads, "memory": deploy.latency_memory, "models": held_models(manifest)}
        diff = [f"models {listed(timed[k])} (export/ holds: {listed(v)})" if k == "models" else
                f"{k} {timed[k]} (deploy: {v})" for k, v in wanted.items() if timed[k] != v]
        if not diff and not exported:
            return table
        reason = f"latency.json was timed with {', '.join(diff)}" if diff else \
            "latency.json timed the export before it"
    log.info(f"[deploy] re-timing: {'export/ was written anew; ' * exported}{reason}")
    return None


def held_models(manifest: dict[str, Any]) -> list[str]:
    """The models the export with manifest `manifest` holds, those its latency table times besides dense
    (`latency.latency_table`), in round order: compressed, and compact when the manifest lists a verified
    `export/compact/` (`loading.verified_compact`)."""
    return ["compressed", *(["compact"] if verified_compact(manifest) else [])]


def timed_held(table: dict[str, Any]) -> list[str]:
    """The models latency table `table` timed on the basis `held_models` uses: without dense (timm's unpruned
    architecture, in every table, never a file of export/), so a table and an export compare and print alike."""
    from sparsetrain.deploy.latency_report import timed_models

    return [name for name in timed_models(table) if name != "dense"]


def listed(models: list[str]) -> str:
    """`compressed, compact`: models as the re-timing and stale-table lines print them."""
    return ", ".join(models)


def _timed_with(table: dict[str, Any]) -> dict[str, Any]:
    """The settings a latency table was measured with, read from the table itself (so a table timed with other
    deploy.latency_* settings, or written by an older `sparsetrain bench latency` with other arguments, is told
    apart): batches, repeats, threads, whether peak memory was measured (`--no-memory` leaves it out), and the
    models timed besides dense (`timed_held`; tables from before the compact model was timed: compressed)."""
    rows = table["rows"]
    memory = any(v is not None for r in rows if r["device"] == "cpu" for v in r["peak_memory_bytes"].values())
    return {"batches": sorted({r["batch"] for r in rows}), "repeats": table["repeats"], "threads": table["threads"],
            "memory": memory, "models": timed_held(table)}


def _headline(table: dict[str, Any]) -> dict[str, Any]:
    """The report's `latency_ms` from the interleaved torch eager batch-1 row: the 20th percentiles `dense` and
    `pruned` (the compressed model: Method 2's, filters removed) and their ratio, the table's `speedup`
    (`deploy.latency`); when the table timed the compact model, `compact` (its p20) instead of `pruned` and
    `speedup` = `speedup_compact`; `speedup_median` and `speedup_paired` the same model's other two ratios (the
    summary line says when they disagree, `latency_report.noise_range`); `model` names which, `measured` says how."""
    from sparsetrain.deploy.latency_report import speedup_key

    row = next(r for r in table["rows"] if (r["runtime"], r["device"], r["batch"]) == ("torch", "cpu", 1))
    how = "p20 of interleaved rounds, torch eager, CPU, batch 1; latency.json"
    model = "compact" if "compact_ms" in row else "compressed"
    key = speedup_key(model)
    ratios = {"speedup": row[key], "speedup_median": row.get(f"{key}_median"),
              "speedup_paired": row.get(f"{key}_paired"), "speedup_paired_p20": row.get(f"{key}_paired_p20"),
              "speedup_paired_p80": row.get(f"{key}_paired_p80")}
    if model == "compact":
        return {"dense": row["dense_ms"]["p20"], "compact": row["compact_ms"]["p20"], **ratios, "model": "compact",
                "measured": f"compact model: export/compact/, dead units removed; {how}"}
    return {"dense": row["dense_ms"]["p20"], "pruned": row["compressed_ms"]["p20"], **ratios,
            "model": "compressed", "measured": how}
