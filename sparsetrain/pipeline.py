"""The compression pipeline: dense baseline → sparsity training → prune → fine-tune, resumable at any step.

Each phase starts from weights on disk (`weights/<phase>.safetensors`) and runs on its own DeepSpeed engine.
`state.json` records finished phases with their results, so a re-run of the same out_dir skips them and
continues the interrupted phase from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sparsetrain.arguments import string_list
from sparsetrain.backend import explain_backend
from sparsetrain.collapse import chance_warning
from sparsetrain.config import RunConfig, config_to_dict, save_resolved
from sparsetrain.config.loader import as_run_config
from sparsetrain.config.schema import TrainConfig
from sparsetrain.config.strategies import L2Config, RegularizerConfig
from sparsetrain.data import DataBundle, build_data
from sparsetrain.data.base import output_record
from sparsetrain.deploy.run import DEPLOYED
from sparsetrain.engine.checkpoint import (
    Checkpointer,
    CheckpointError,
    clear_run_outputs,
    load_run_state,
    load_weights,
    save_run_state,
    save_weights,
    write_run_state,
)
from sparsetrain.engine.distributed import barrier, broadcast_object, init_distributed
from sparsetrain.engine.finite import hint, nonfinite_names, require_finite, require_finite_results
from sparsetrain.engine.loop import RunContext, evaluate, train_phase
from sparsetrain.engine.zero3 import gather_state_dict, is_partitioned
from sparsetrain.errors import InputError, NonFiniteError, SetupError, SparsetrainError, alike_on_every_rank
from sparsetrain.model_imports import META_KEY
from sparsetrain.models.factory import build_model, model_kwargs
from sparsetrain.phases import DENSE, FINETUNE, PHASES, PRUNE, SPARSIFY, TRAINING_PHASES, check_phases, final_phase
from sparsetrain.progress import format_value, log, setup_logging
from sparsetrain.pruning.masks import layer_counts, prunable_parameters, sparsity_of
from sparsetrain.regularizers import GradientRegularizer, StrategyInputs, build_regularizer
from sparsetrain.report import (
    filters_removed,
    format_kept_filters,
    kernel_setup,
    regularizer_line,
    setup_line,
    training_setup,
)
from sparsetrain.rundir import (
    check_own_out_dir,
    check_same_run,
    last_phase,
    phases_needed_first,
    prepare_out_dir,
    record_nonfinite_stop,
)
from sparsetrain.runlock import RunLock
from sparsetrain.submission import current_submission, is_rerun
from sparsetrain.tasks import build_task
from sparsetrain.tracking import Tracker, truncate_metrics_log

if TYPE_CHECKING:
    from sparsetrain.plan import DataSizes
    from sparsetrain.structural import ChannelGroup, ChannelScore


class Pipeline:
    """Owns the run: data, model factory, phases, state and the final report."""

    def __init__(self, cfg: RunConfig, data: DataBundle | None = None) -> None:
        """Check the settings and read what the run continues from; nothing is written (`open` does that, once every
        check that can refuse the run has passed: a refused run leaves out_dir as it found it)."""
        self.cfg = cfg
        self.out_dir = Path(cfg.out_dir)
        self._announced = False  # new_model has said where the initial weights come from
        self._opened = False
        check_own_out_dir(self.out_dir)  # not an export folder, not inside another run's directory
        self._out_dir_existed = self.out_dir.exists()  # before any rank can create it (init_distributed waits for all)
        self.dist = init_distributed(cfg.train.device, cfg.deepspeed.dist_backend, cfg.deepspeed.timeout_min)
        setup_logging(self.dist.is_main)
        configure_cpu(cfg.train)
        self._lock: RunLock | None = None  # rank 0's hold on out_dir (`runlock`), from here or `open` to `close`
        self._hold_out_dir(create=False)  # an existing run directory: before its state is read
        try:
            self._check_and_build(data)
        except BaseException:
            self._release_out_dir()  # a refused run frees out_dir at once, not when its traceback is collected
            raise

    def _check_and_build(self, data: DataBundle | None) -> None:
        """The rest of `__init__`: check the settings against out_dir's run, read the data and what the run continues
        from, and build the task, tracker and run context."""
        cfg = self.cfg
        if cfg.resume and (self.out_dir / "state.json").exists():  # before anything is built from the new settings
            check_same_run(self.out_dir, config_to_dict(cfg))
        self.structural = cfg.prune.rule == "filters"
        # The run's one decision, and why (the start line says it; report.json records the backend).
        self.backend, self.backend_why = explain_backend(cfg.regularizer.backend, self.dist.device)
        self.data: DataBundle = data or build_data(cfg.data, cfg.seed, cfg.model.kwargs.get("num_classes"),
                                                   cfg.train.batch_size)
        self.baseline_reports: dict[str, dict[str, Any]] = {}
        self.task = build_task(cfg.task, self.data.num_classes, cfg.data.ignore_index, self.data.classes)
        self._meta_model = self._check_plan()  # shapes only: `_check_start_weights` judges the checkpoint on it
        self._fresh = False  # rank 0: an earlier run's outputs are cleared when the run opens
        self.state = self._initial_state()
        self.tracker = Tracker(cfg.tracking, self.out_dir, {**config_to_dict(cfg), "kernels": self.state["kernels"]},
                               self.dist.is_main)
        self.ctx = RunContext(cfg, self.dist, self.data.train, self.data.test, self.task, self.tracker,
                              Checkpointer(self.out_dir, self.dist, cfg.train.keep_checkpoints), self.out_dir,
                              self.state)

    def open(self) -> None:
        """Make out_dir this run's (once): create it, start (or continue) the W&B run, clear an earlier run's outputs on
        a fresh start (metrics.jsonl cut back to the checkpoint on a resume) and write config.yaml.

        W&B starts before anything of an earlier run is cleared; when it cannot (`SetupError`, exit 5, on every rank:
        rank 0 tells the others), an out_dir this run created is removed again.

        Raises:
            InputError: out_dir cannot be created (one line, on every rank).
            SetupError: W&B could not start its run.
        """
        if self._opened:
            return
        prepare_out_dir(self.out_dir)  # every rank: a bad out_dir is one line everywhere, not a hang at the barrier
        self._hold_out_dir(create=True)  # before metrics.jsonl is cut or W&B starts
        if not self._fresh:
            self._truncate_log_on_resume()
        failure = None
        try:
            self.tracker.start(fresh=self._fresh)  # rank 0's tracker only
        except SetupError as err:
            failure = str(err)
        failure = broadcast_object(failure)  # every rank stops alike, instead of waiting for rank 0 at the barrier
        if failure is not None:
            if not self._out_dir_existed and self.dist.is_main:
                shutil.rmtree(self.out_dir, ignore_errors=True)
            raise SetupError(failure)
        if self._lock is not None:
            self._lock.record()  # rank 0 names itself the holder, once nothing can refuse the run any more
        if self._fresh and self.dist.is_main:
            clear_run_outputs(self.out_dir, keep=self.tracker.files())
        barrier()  # the other ranks write into out_dir only once an earlier run's outputs are gone
        if self.dist.is_main:
            save_resolved(self.cfg, self.out_dir / "config.yaml")
        self._opened = True

    def _sizes(self) -> DataSizes:
        """The data's input channels, classes and sample shape, as the meta model is built from them."""
        from sparsetrain.plan import DataSizes

        return DataSizes(self.data.in_chans, self.data.num_classes, tuple(self.data.input_shape))

    def _check_plan(self) -> nn.Module:
        """The model and the settings that name its layers, checked on the meta model (shapes only) before anything
        is written: an unknown `model.name`, `model.kwargs` the model does not take, outputs that do not fit the task
        (`plan.check_model`) and `prune.layer_*` names that are not prunable layers.

        Returns:
            The meta model, for `_check_start_weights`.

        Raises:
            ValueError: one line naming the setting.
        """
        from sparsetrain.plan import check_model
        from sparsetrain.pruning.criteria import check_layer_settings

        model = check_model(self.cfg, self._sizes())
        prune = self.cfg.prune
        if getattr(prune, "layer_thresholds", None) or getattr(prune, "layer_sparsity", None):
            check_layer_settings(self.cfg.prune, list(prunable_parameters(model)))
        return model

    def _check_start_weights(self, todo: list[str]) -> None:
        """Where the run reads its start weights, checked on the meta model before `open` (`plan.check_start_weights`)
        when a phase still to run reads them (`_reads_start_weights`): `model.checkpoint` exists, comes from a run or
        export of this `model.name` and its tensors' names and shapes fit; `model.pretrained_file` exists. A resumed
        run whose remaining phases start from finished phases' weights (or their own checkpoint) reads neither.

        Raises:
            ValueError: one line naming `model.checkpoint` (`model.checkpoint_ema`, `model.reset_head`) or
                `model.pretrained_file`.
        """
        from sparsetrain.plan import check_start_weights

        if self._reads_start_weights(todo):
            check_start_weights(self.cfg, self._meta_model, self.data.data_classes)

    def _reads_start_weights(self, todo: list[str]) -> bool:
        """Whether the run reads the initial weights (`model.checkpoint`, pretrained) after the phases in `todo`
        start: dense and sparsify start from them unless they continue from their own checkpoint; prune and the
        report (its "before" model and weight histogram) do unless sparsify, and dense, have finished or will."""
        current = (self.state.get("current") or {}).get("phase")
        if any(p in todo and p != current for p in (DENSE, SPARSIFY)):
            return True
        return any(p not in self.state["completed"] and p not in todo for p in (DENSE, SPARSIFY))

    def _initial_state(self) -> dict[str, Any]:
        """The saved state to continue from, or a fresh one (`open` then clears the previous run's outputs).

        `resume=false` starts fresh once: a re-run of the submission that started the run (a requeue, any attempt;
        `sparsetrain.submission`) continues from its own checkpoint.
        """
        state = None
        if self.dist.is_main:
            submission = current_submission()
            state = self._state_to_continue(submission)
            self._fresh = state is None
            if state is None:  # the earlier run's outputs are cleared by `open`, once nothing can refuse this run
                state = {"completed": {}, "current": None}
            state["submission"] = submission
            state["kernels"] = kernel_setup(self.cfg, self.backend)  # this segment's: a resume may resolve another
        return broadcast_object(state)

    def _state_to_continue(self, submission: dict[str, Any] | None) -> dict[str, Any] | None:
        if not (self.out_dir / "state.json").exists():
            return None
        if self.cfg.resume:
            return load_run_state(self.out_dir)
        try:
            saved = load_run_state(self.out_dir)
        except CheckpointError:  # starting fresh anyway
            return None
        if not is_rerun(saved.get("submission"), submission):
            return None
        log.info(f"resume=false, but this process re-runs submission {submission['id']} that started the run in "
                 f"{self.out_dir}: continuing from its state")
        return saved

    def _truncate_log_on_resume(self) -> None:
        current = self.state.get("current")
        if not self.dist.is_main:
            return
        if current is None:
            done = [p for p in TRAINING_PHASES if p in self.state["completed"]]
            last = sum(self.ctx.phase_steps(p) for p in done if getattr(self.cfg.phases, p).enabled)
            truncate_metrics_log(self.out_dir / "metrics.jsonl", last if self.state["completed"] else -1)
        else:
            truncate_metrics_log(self.out_dir / "metrics.jsonl",
                                 self.ctx.global_offset(current["phase"]) + current["step"])

    # ---- models and weights -------------------------------------------------------------------------------

    def new_model(self, initial: bool = True) -> nn.Module:
        """The model with its seeded initial weights (identical on every rank); `initial=False` skips reading
        `model.checkpoint` when phase weights will replace them (the run no longer needs the file)."""
        from sparsetrain.models.checkpoint import architecture_only

        torch.manual_seed(self.cfg.seed)
        model_cfg = self.cfg.model if initial else architecture_only(self.cfg.model)
        announce = initial and not self._announced  # where the initial weights come from: said once per run
        self._announced = self._announced or initial
        return build_model(model_cfg, self.data.in_chans, self.data.num_classes, self.data.input_shape,
                           announce=announce)

    def export_meta(self, **extra: Any) -> dict[str, Any]:
        """What `load_pruned_model` needs to rebuild the model without this run's config."""
        kwargs = model_kwargs(self.cfg.model, self.data.in_chans, self.data.num_classes, self.data.input_shape)
        output = output_record(self.cfg.task, self.data.num_classes, self.data.classes)
        imports = {META_KEY: list(self.cfg.model.imports)} if self.cfg.model.imports else {}  # load_compressed's
        return {"model_name": self.cfg.model.name, "model_kwargs": kwargs, "input_shape": list(self.data.input_shape),
                "preprocessing": self.data.preprocessing, "output": output, **imports, **extra}

    def model_from(self, phase: str | None, initial: bool = True) -> nn.Module:
        """The model at the end of `phase` (initial weights for None; `initial=False`: the architecture only, for a
        phase that continues from its own checkpoint); structurally pruned phases load the smaller architecture from
        their compressed export."""
        from sparsetrain.structural.serialize import ARCH_FILE, load_pruned_model

        folder = self.out_dir / "weights" / str(phase)
        if phase is not None and (folder / ARCH_FILE).exists():
            return load_pruned_model(folder).train().to(self.dist.device)
        model = self.new_model(initial=initial and phase is None)
        if phase is not None:
            model.load_state_dict(load_weights(self.out_dir / "weights" / f"{phase}.safetensors"))
        return model.to(self.dist.device)

    def _save_phase(self, phase: str, model: nn.Module) -> None:
        """Write the phase's end weights (fp32; the next phase's start); refuses NaN/inf, which must never be handed
        on. A ZeRO-3 model is gathered on rank 0 one parameter at a time."""
        partitioned = is_partitioned(model)
        if partitioned:
            state = gather_state_dict(model)
            bad = broadcast_object(nonfinite_names(state) if state is not None else [])
            if bad:  # every rank stops (rank 0 alone holds the gathered weights)
                require_finite({name: torch.tensor(float("nan")) for name in bad}, f"the {phase} weights to hand on",
                               f"the {phase} phase diverged: {hint(self.cfg, phase, 'weights')}")
        else:
            require_finite(model.state_dict(), f"the {phase} weights to hand on",
                           f"the {phase} phase diverged: {hint(self.cfg, phase, 'weights')}")
            state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
        if self.structural and phase in (PRUNE, FINETUNE):
            from sparsetrain.structural.serialize import load_pruned_model, save_pruned_model

            if self.dist.is_main:
                if partitioned:  # rebuild the (smaller) architecture around the gathered weights
                    model = load_pruned_model(self.out_dir / "weights" / "prune")
                    model.load_state_dict(state)
                save_pruned_model(_cpu_copy(model), self.out_dir / "weights" / phase,
                                  meta=self.export_meta(phase=phase))
            barrier()
            return
        save_weights(self.out_dir / "weights" / f"{phase}.safetensors", state or {}, self.dist)

    def _finish(self, phase: str, results: dict[str, Any]) -> None:
        require_finite_results(results, phase)
        collapsed = chance_warning(phase, results, self.cfg, self.state["completed"])  # a result: the run goes on
        if collapsed:
            results["at_chance"] = collapsed
        self.state["completed"][phase] = results
        self.state["current"] = None
        self.state.setdefault("finished_at", {})[phase] = time.strftime("%Y-%m-%d %H:%M:%S")
        self.state.pop(DEPLOYED, None)  # export/ and latency.json no longer show the run's final weights
        save_run_state(self.out_dir, self.state, self.dist)
        self.ctx.checkpointer.clear_phase(phase)
        metrics = {f"{phase}/{k}": v for k, v in results.items() if isinstance(v, int | float)}
        self.tracker.log({"phase": phase, "event": "phase_end", **metrics},
                         self.ctx.global_offset(phase) + self.ctx.phase_steps(phase) if phase != "prune"
                         else self.ctx.global_offset("finetune"))
        self.tracker.commit()  # the phase's rows are now covered by state.json
        log.info(f"[{phase}] done: " + ", ".join(f"{k} {format_value(v)}" for k, v in metrics.items()))
        if collapsed and self.dist.is_main:  # every rank finds it alike; the other ranks log warnings too
            log.warning(f"[{phase}] {collapsed}")

    def _resume_tag(self, phase: str) -> str | None:
        current = self.state.get("current")
        return current["tag"] if current and current["phase"] == phase else None

    # ---- phases ---------------------------------------------------------------------------------------------

    def _train(self, phase: str, start_from: str | None, masks_file: Path | None) -> None:
        if self.ctx.phase_steps(phase) == 0:
            self._evaluate_only(phase, start_from)
            return
        self.ctx.start_phase_clock(phase)
        resume_tag = self._resume_tag(phase)  # its checkpoint replaces the start weights: they are not read
        model = self.model_from(start_from, initial=resume_tag is None)
        regularizer = self.regularizer_for(phase, model)
        try:
            model = train_phase(self.ctx, phase, model, regularizer, masks_file, resume_tag)
        except NonFiniteError:  # every rank stops alike; rank 0 marks the checkpoint the resume continues from
            if record_nonfinite_stop(self.state, phase) and self.dist.is_main:
                write_run_state(self.out_dir, self.state)
            raise
        self._save_phase(phase, model)
        if regularizer.state_dict() and self.dist.is_main:
            torch.save(regularizer.state_dict(), self.out_dir / "weights" / f"{phase}_regularizer.pt")
        results = evaluate(self.ctx, model)
        results.update({k: v for k, v in self.ctx.phase_info.items() if v is not None})
        results["wall_time_s"] = self.ctx.phase_elapsed()  # over the attempts when it was resumed
        self._finish(phase, results)

    def regularizer_for(self, phase: str, model: nn.Module) -> GradientRegularizer:
        """The penalty of a training phase (`phase_penalty`) for this model, on the run's backend."""
        sizes = {n: p.numel() for n, p in prunable_parameters(model).items()}
        inputs = StrategyInputs(sizes, self.backend, lambda: self._filter_layouts(model))
        return build_regularizer(phase_penalty(self.cfg.regularizer, phase), inputs)

    def run_dense(self) -> None:
        self._train("dense", None, None)

    def _evaluate_only(self, phase: str, start_from: str | None) -> None:
        """`phases.<phase>.epochs=0`: the weights the phase starts from (the initial weights, e.g.
        `model.checkpoint`, or the pruned ones) measured as they are and handed on unchanged."""
        t0 = time.perf_counter()
        if phase == SPARSIFY and start_from is None and not (self.cfg.model.checkpoint or self.cfg.model.pretrained):
            log.warning("phases.sparsify.epochs=0: sparsity training starts from the initial weights (not the dense "
                        "phase's), so the untrained initial weights are handed on; give model.checkpoint (a trained "
                        "model) to compress it without sparsity training")
        model = self.model_from(start_from)
        self._save_phase(phase, model)
        results = evaluate(self.ctx, model)
        results.update(steps=0, wall_time_s=time.perf_counter() - t0)
        self._finish(phase, results)

    def run_sparsify(self) -> None:
        self._train("sparsify", None, None)

    def _filter_layouts(self, model: nn.Module) -> dict[str, tuple[int, int]]:
        from sparsetrain.pruning.filters import channel_groups, filter_layouts

        grouped_conv = getattr(self.cfg.prune, "grouped_conv", "within_groups")  # the filters rule's setting
        return filter_layouts(model, channel_groups(model, self.data.input_shape, grouped_conv))

    def _regularizer_state(self) -> dict | None:
        path = self.out_dir / "weights" / "sparsify_regularizer.pt"
        return torch.load(path, weights_only=True) if path.exists() else None

    def run_prune_filters(self) -> None:
        """Method 2: remove weak and redundant filters physically, giving a smaller dense model.

        The channel scores come from each rank's share of the weights with one all-reduce
        (`pruning.sharded_filters`; grad_count ratios are per filter already), on channel groups traced from a
        meta-device model. Rank 0 alone then loads the whole model, which the constant-output check of dead
        channels, their folding and the removal itself need, removes the chosen channels and writes the smaller
        model; every rank evaluates that. Rank 0 then logs the filters kept per channel group
        (`report.format_kept_filters`)."""
        t0 = time.perf_counter()
        source = self._prune_source()
        structure, groups = self._channel_structure()
        state = self._regularizer_state()
        score = self._channel_score(source, structure, groups, state)
        mine = self._remove_filters_on_main(groups, score, state) if self.dist.is_main else None
        outcome = broadcast_object(mine)
        if isinstance(outcome, Exception):  # rank 0's error (with its traceback there), raised on every rank
            raise mine if self.dist.is_main else outcome
        results = evaluate(self.ctx, self.model_from(PRUNE))
        results.update(outcome, wall_time_s=time.perf_counter() - t0)
        self._finish("prune", results)
        if self.dist.is_main:
            log.info(format_kept_filters(results["kept_filters"]))

    def _channel_structure(self) -> tuple[nn.Module, list[ChannelGroup]]:
        """The model's channel groups, traced from a meta-device copy (no weights), else from a freshly built model
        (the same on every rank either way)."""
        from sparsetrain.plan import meta_model
        from sparsetrain.pruning.filters import channel_groups
        from sparsetrain.structural import StructuralPruningError

        grouped_conv = self.cfg.prune.grouped_conv
        try:
            model = meta_model(self.cfg, self._sizes())
            return model, channel_groups(model, self.data.input_shape, grouped_conv)
        except (StructuralPruningError, RuntimeError, NotImplementedError):  # an op without a meta kernel
            model = self.new_model(initial=False)
            return model, channel_groups(model, self.data.input_shape, grouped_conv)

    def _channel_score(self, source: Path, structure: nn.Module, groups: list[ChannelGroup],
                       state: dict | None) -> ChannelScore:
        """`prune.channel_score` of every prunable group: from weight shards (a collective), or grad_count's ratios."""
        from sparsetrain.pruning.sharded_filters import SHARDED_SCORES, sharded_channel_scores
        from sparsetrain.structural import build_score

        name = self.cfg.prune.channel_score
        if name in SHARDED_SCORES:
            return sharded_channel_scores(source, structure, groups, name)
        return build_score(name, (state or {}).get("ratio"))

    def _remove_filters_on_main(self, groups: list[ChannelGroup], score: ChannelScore,
                                state: dict | None) -> dict[str, Any] | Exception:
        """Rank 0: choose and remove the channels of the whole model, write the smaller model; its results, or the
        error to raise on every rank (the other ranks wait for it in a broadcast)."""
        from sparsetrain.pruning.filters import remove_filters, selection_notes, why_nothing_removed
        from sparsetrain.structural.serialize import save_pruned_model

        try:
            model = self.model_from(SPARSIFY if SPARSIFY in self.state["completed"] else None)
            require_finite(model.state_dict(), "the weights to prune", "filter norms of NaN/inf cannot be ranked")
            counts: list = []
            pruned, kept, folded = remove_filters(model, self.data.input_shape, self.cfg.prune, state,
                                                  groups=groups, score=score, counts=counts)
            notes = selection_notes(groups, counts, self.cfg.prune)
            for note in notes:  # what the cap and rounding changed, said once per prune phase
                log.warning(f"[prune] {note}")
            why = None
            if not filters_removed(kept):
                why = why_nothing_removed(model, groups, self.cfg.prune, score, (state or {}).get("redundant"))
                log.warning(f"[prune] no filter removed: {why}")
            require_finite(pruned.state_dict(), "the prune weights to hand on", "the removal produced NaN/inf")
            save_pruned_model(_cpu_copy(pruned), self.out_dir / "weights" / PRUNE, meta=self.export_meta(phase=PRUNE))
        except Exception as err:  # noqa: BLE001 - every rank raises it (run_prune_filters)
            return err
        return {"kept_filters": kept, "folded_channels": folded,
                "params_before": sum(p.numel() for p in model.parameters()),
                "params_after": sum(p.numel() for p in pruned.parameters()),
                **({"why_nothing_removed": why} if why else {}), **({"selection_notes": notes} if notes else {})}

    def run_prune(self) -> None:
        """Method 1: masks from shards of the weights (each rank reads its share; exact targets through collective
        reductions, `pruning.sharded_prune`), then rank 0 writes the packed masks and the pruned weights."""
        from sparsetrain.pruning.criteria import PruneError
        from sparsetrain.pruning.sharded_prune import prune_shards, write_masks_file, write_pruned_weights

        if self.structural:
            self.run_prune_filters()
            return
        t0 = time.perf_counter()
        weights = self.out_dir / "weights"
        source = self._prune_source()
        shapes = self._prunable_shapes()
        try:
            masks = prune_shards(source, shapes, self.cfg.prune, self.dist.device)
        except PruneError as err:  # thresholds come from collective reductions: every rank refuses alike
            raise alike_on_every_rank(err) from None
        write_masks_file(masks, shapes, weights / "masks.safetensors")
        if self.dist.is_main:
            write_pruned_weights(source, weights / "masks.safetensors", weights / "prune.safetensors")
        barrier()
        model = self.model_from(PRUNE)
        results = evaluate(self.ctx, model)
        layers = layer_counts(prunable_parameters(model))
        results.update(sparsity=sparsity_of(layers), wall_time_s=time.perf_counter() - t0)
        self._finish("prune", results)

    def _prune_source(self) -> Path:
        """The weights file pruning starts from: sparsity training's, else the initial weights (written here)."""
        if SPARSIFY in self.state["completed"]:
            return self.out_dir / "weights" / f"{SPARSIFY}.safetensors"
        path = self.out_dir / "weights" / "initial.safetensors"
        state = self.new_model().state_dict() if self.dist.is_main else {}
        save_weights(path, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, self.dist)
        return path

    def _prunable_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the prunable weights, from the meta model the run's checks built (no memory)."""
        return {n: tuple(p.shape) for n, p in prunable_parameters(self._meta_model).items()}

    def run_finetune(self) -> None:
        if self.structural:
            self._train("finetune", "prune", None)
            return
        self._train("finetune", "prune", self.out_dir / "weights" / "masks.safetensors")

    # ---- driver ---------------------------------------------------------------------------------------------

    def run(self, phases: list[str] | None = None) -> dict[str, Any]:
        """Run the selected (default: all enabled) phases that are not finished yet; returns the report."""
        wanted = phases or list(PHASES)
        check_phases(wanted)
        if phases:
            phases_needed_first(phases, self.state["completed"], self.cfg.phases.sparsify.enabled)
        todo = [p for p in PHASES if p in wanted and (p == PRUNE or getattr(self.cfg.phases, p).enabled)
                and p not in self.state["completed"]]
        self._check_batch_size(todo)
        self._check_start_weights(todo)
        self.open()  # every refusal above leaves out_dir untouched
        self._say_where_it_resumes(todo, phases)
        if todo:
            setup = training_setup(self.cfg, self.dist.world_size, self.backend)
            log.info(setup_line(setup, self.dist.device.type))
            log.info(regularizer_line(setup, self.backend_why))
        for phase in todo:
            getattr(self, f"run_{phase}")()
        if phases is None and self.cfg.baselines and "prune" in self.state["completed"]:
            from sparsetrain.baselines import run_baselines

            self.baseline_reports = run_baselines(self)
        from sparsetrain.measure import write_report

        return write_report(self)

    def _check_batch_size(self, todo: list[str]) -> None:
        """`train.batch_size` against the training set (`BatchPlan`'s checks) before any phase runs, not when the
        first phase that trains starts (after loading and evaluating, and after a finished phase fixed the setting).

        Raises:
            InputError: one line naming `train.batch_size` when a phase to run trains.
        """
        training = [p for p in todo if p in TRAINING_PHASES and getattr(self.cfg.phases, p).epochs > 0]
        if training:
            try:
                self.ctx.plan(training[0])
            except InputError as err:  # the same settings, world size and data everywhere: rank 0 says it
                raise alike_on_every_rank(err) from None

    def _say_where_it_resumes(self, todo: list[str], selected: list[str] | None) -> None:
        """One line when this run continues an earlier one at a phase boundary, or has nothing left to train (a
        resume in the middle of a phase says so when it loads the checkpoint, `engine.loop.train_phase`)."""
        completed, finished_at = self.state["completed"], self.state.get("finished_at", {})
        if not completed or self.state.get("current"):
            return
        if todo:
            log.info(f"[{todo[0]}] resuming after finished phase {final_phase(completed)}")
            return
        done = selected or [last_phase(config_to_dict(self.cfg))]
        when = f" ({'run ' if selected is None else ''}finished at {finished_at[done[-1]]})" \
            if done[-1] in finished_at else ""
        log.info(f"[{', '.join(done)}] already complete{when}; nothing to train")

    def _hold_out_dir(self, create: bool) -> None:
        """Rank 0 takes out_dir's run lock (`runlock.RunLock.take`; other ranks write only while rank 0 holds it) unless
        it holds it already; `create=False` takes only an existing lock file's lock.

        Raises:
            InputError: another process holds out_dir (`out_dir: D is in use by another run (...)`), on every rank.
        """
        failure = None
        if self.dist.is_main and self._lock is None:
            try:
                self._lock = RunLock.take(self.out_dir, create=create)
            except InputError as err:
                failure = str(err)
        failure = broadcast_object(failure)  # every rank stops alike, instead of waiting for rank 0 at a collective
        if failure is not None:
            raise InputError(failure)

    def _release_out_dir(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def close(self) -> None:
        """End tracking and free out_dir's run lock (a dropped, unclosed pipeline frees it when collected)."""
        try:
            self.tracker.close()
        finally:
            self._release_out_dir()


def phase_penalty(cfg: RegularizerConfig, phase: str) -> RegularizerConfig:
    """Which penalty a training phase trains with: the configured strategy in sparsify (and in finetune when it
    keeps its penalty there, e.g. l0_exp's finetune_l0), l2 alone (same alpha2, path and backend) otherwise —
    the dense baseline and fine-tuning are plain l2 training."""
    if phase == SPARSIFY or (phase == FINETUNE and cfg.penalty_in_finetune):
        return cfg
    return L2Config(alpha2=cfg.alpha2, gradient_path=cfg.gradient_path, backend=cfg.backend)


def configure_cpu(train: TrainConfig) -> None:
    """Intra-op threads (`default_threads` unless `train.threads`) and subnormal flushing (see
    TrainConfig.flush_denormal) for this process."""
    threads = train.threads or default_threads(os.environ)
    if threads and threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    given = slurm_cpus(os.environ)
    if given:
        source = "train.threads" if train.threads else "Slurm's cpus-per-task" if threads else "OMP_NUM_THREADS"
        _say_slurm_threads(torch.get_num_threads(), given, source)
    if not torch.set_flush_denormal(train.flush_denormal) and train.flush_denormal:
        log.warning("train.flush_denormal: this CPU cannot flush subnormals (no SSE3); long runs may slow down")


@functools.cache  # once per process: a baseline sub-run configures the same threads again
def _say_slurm_threads(threads: int, given: int, source: str) -> None:
    """Inside a Slurm job: the rank's torch threads and where they come from; a warning when they outnumber the
    CPUs the task was given (the threads then wait for each other: 10-40x slower steps on a loaded node)."""
    overrides = " (train.threads overrides)" if source == "Slurm's cpus-per-task" else ""
    log.info(f"threads: {threads} per rank, {source}{overrides}")
    if threads > given:
        log.warning(f"{source}: {threads} torch threads per rank, but this Slurm job gives each task {given} CPU(s) "
                    f"(launch.cpus_per_task): the threads will wait for each other; ask for launch.cpus_per_task="
                    f"{threads} or leave train.threads unset")


def slurm_cpus(env: Mapping[str, str]) -> int | None:
    """The CPUs per task of the Slurm job this process runs in (`SLURM_CPUS_PER_TASK`); None outside a job, or for a
    job submitted without --cpus-per-task or with a per-node list (e.g. "2(x3)")."""
    cpus = env.get("SLURM_CPUS_PER_TASK", "")
    if "SLURM_JOB_ID" not in env or not cpus.isdigit() or int(cpus) < 1:
        return None
    return int(cpus)


def default_threads(env: Mapping[str, str]) -> int | None:
    """torch intra-op threads of a rank when `train.threads` is unset: Slurm's `SLURM_CPUS_PER_TASK` inside a Slurm
    job (torch's own default is every core of the node, however few the job was given: ranks sharing a node then
    oversubscribe it, and each collective waits for a descheduled thread); None (torch's default) outside Slurm,
    or when `OMP_NUM_THREADS` is set (torch reads it; torchrun sets 1 for several ranks)."""
    return None if "OMP_NUM_THREADS" in env else slurm_cpus(env)


def _cpu_copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).float().cpu()


def run_pipeline(cfg: RunConfig | Mapping[str, Any], phases: list[str] | None = None) -> dict[str, Any]:
    """Build the pipeline, run it, always close tracking; the entry point for CLI and launchers.

    Args:
        cfg: The run's config, or a mapping of a recipe's settings (validated as a recipe: `as_run_config`).
        phases: Run only these phases, in order (a list or tuple; a single string is refused); None = all enabled
            ones.

    Raises:
        InputError: bad input, from sparsetrain's own checks or a ValueError a library raises on the run's values
            (the same message, chained to it: the CLI reports both as bad input, exit 2); `cfg` neither a RunConfig
            nor a mapping; `phases` not a list of strings.
        ResumeError, NonFiniteError, SetupError: see `sparsetrain.errors`.
    """
    with _bad_values_as_input_errors():
        cfg = as_run_config(cfg)
        phases = None if phases is None else string_list(phases, "phases", "phase names")
        check_phases(phases or [])  # before the data is read
        pipeline = Pipeline(cfg)
        try:
            return pipeline.run(phases)
        finally:
            pipeline.close()


@contextlib.contextmanager
def _bad_values_as_input_errors() -> Iterator[None]:
    """A plain ValueError (a check that raises the built-in type, or a library's) raised as `InputError` with the
    same message, so `run_pipeline` raises `sparsetrain.errors` classes only (README "Python API")."""
    try:
        yield
    except SparsetrainError:
        raise
    except ValueError as err:
        raise InputError(str(err)) from err
