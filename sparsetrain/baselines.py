"""The baselines users would pick instead of ℓ0, run beside it at the same sparsity and budget (METHOD.md).

    l2_oneshot  ℓ2 training (sparsify epochs) → one-shot global magnitude pruning → masked fine-tuning
    gmp         ℓ2 training with gradual magnitude pruning (Zhu & Gupta 2017 cubic schedule, prune.gradual)
                during the sparsify epochs → masked fine-tuning

Each baseline is a sub-run of the same `Pipeline`, in `<out_dir>/baselines/<name>/` with its own state.json and
checkpoints (so it resumes exactly), configured from the main run: same model, data, seed, optimizer and phase
lengths, no dense phase, regularizer l2, and the global-sparsity target set to the sparsity the main run reached
after pruning. They run once the main run's prune phase is done; their results join the main report.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import torch

from sparsetrain.config import RunConfig, config_to_dict
from sparsetrain.config.schema import BaselineName
from sparsetrain.progress import log

if TYPE_CHECKING:
    from sparsetrain.pipeline import Pipeline

BASELINES: dict[str, dict[str, Any]] = {
    "l2_oneshot": {"schedule": "oneshot", "label": "l2 + one-shot magnitude"},
    "gmp": {"schedule": "gradual", "label": "gradual magnitude (GMP)"},
}
assert set(BASELINES) == set(get_args(BaselineName)), "baseline names differ from the config schema's"
CURVE_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998)


def baseline_config(cfg: RunConfig, name: str, sparsity: float) -> RunConfig:
    """The sub-run config of baseline `name` at the main run's achieved `sparsity`."""
    from sparsetrain.config.loader import validate

    data = config_to_dict(cfg)
    data.update(out_dir=str(Path(cfg.out_dir) / "baselines" / name), baselines=[])
    data["phases"]["dense"]["enabled"] = False
    reg = data["regularizer"]
    data["regularizer"] = {"name": "l2", **{k: reg[k] for k in ("alpha2", "gradient_path", "backend")}}
    data["prune"] = {"rule": "global_sparsity", "sparsity": sparsity, "schedule": BASELINES[name]["schedule"],
                     "gradual": data["prune"].get("gradual", {})}
    data["tracking"]["mode"] = "disabled"  # one W&B run per command; the sub-run keeps its own metrics.jsonl
    data["deploy"].update(formats=[], latency=False)  # the main run's export and latency table are the deliverable
    return validate(data)


def run_baselines(pipeline: Pipeline) -> dict[str, dict[str, Any]]:
    """Run (or resume, or just re-read) every configured baseline; returns their reports by name. Each sub-run is
    a pipeline of the main run's own class."""
    sparsity = pipeline.state["completed"]["prune"]["sparsity"]
    reports = {}
    for name in pipeline.cfg.baselines:
        sub = type(pipeline)(baseline_config(pipeline.cfg, name, sparsity), data=pipeline.data)
        log.info(f"baseline {name} ({BASELINES[name]['label']}) at sparsity {100 * sparsity:.2f} %: {sub.out_dir}")
        try:
            reports[name] = sub.run()
        finally:
            sub.close()
    return reports


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a baseline sub-run's report that the main report shows."""
    keep = ("sparsity", "compression_ratio", "bytes", "params", "wall_time_s")
    row = {phase: result["metric"] for phase, result in report["phases"].items() if phase != "dense"}
    return {**row, **{key: report[key] for key in keep if key in report}}


@torch.no_grad()
def prune_curve(pipeline: Pipeline, reports: dict[str, dict[str, Any]]) -> dict[str, list[float]]:
    """Metric right after global magnitude pruning (no fine-tuning) over a range of sparsities (and the run's own),
    for the ℓ0-trained model and the ℓ2-trained one of the same budget (the l2_oneshot baseline's, else the dense
    model). Returns {"sparsity": [...], "l0": [...], "l2": [...]}, metrics in the task's unit. |w| is ranked once
    per model; each point costs one evaluation of the test split (progress with ETA in the log)."""
    from sparsetrain.engine.loop import evaluate
    from sparsetrain.progress import Progress
    from sparsetrain.pruning.criteria import global_ranking, masks_from_ranking
    from sparsetrain.pruning.masks import apply_masks, prunable_parameters

    sources = {"l0": pipeline.model_from("sparsify")}
    if "l2_oneshot" in reports:
        sources["l2"] = _sub_pipeline_model(pipeline, "l2_oneshot", "sparsify")
    elif "dense" in pipeline.state["completed"]:
        sources["l2"] = pipeline.model_from("dense")
    achieved = round(pipeline.state["completed"]["prune"]["sparsity"], 6)
    curve: dict[str, list[float]] = {"sparsity": sorted({*CURVE_SPARSITIES, achieved})}
    points = len(curve["sparsity"]) * len(sources)
    log.info(f"[accuracy curve] global magnitude pruning of the {' and '.join(sources)}-trained model at "
             f"{len(curve['sparsity'])} sparsities, {points} evaluations on the test split, for "
             "accuracy_vs_sparsity.png (report.accuracy_curve=false skips it)")
    progress, done = Progress("accuracy curve", 0, points, every=max(1, points // 4)), 0
    for label, model in sources.items():
        params = prunable_parameters(model)
        original = {n: p.detach().clone() for n, p in params.items()}
        ranking, curve[label] = global_ranking(original), []
        for sparsity in curve["sparsity"]:
            for n, p in params.items():
                p.copy_(original[n])
            apply_masks(params, masks_from_ranking(original, ranking, sparsity))
            curve[label].append(evaluate(pipeline.ctx, model)["metric"])
            progress.update(done)
            done += 1
    return curve


def _sub_pipeline_model(pipeline: Pipeline, name: str, phase: str) -> torch.nn.Module:
    from sparsetrain.engine.checkpoint import load_weights

    model = pipeline.new_model(initial=False)
    model.load_state_dict(load_weights(pipeline.out_dir / "baselines" / name / "weights" / f"{phase}.safetensors"))
    return model.to(pipeline.dist.device)
