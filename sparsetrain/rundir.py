"""What a run directory (`out_dir`) may be used for: created safely, continued only by the run that started it,
exported or measured only once its final phase has finished.

A resumed run compares its settings with the `config.yaml` the run was started with. Settings that change how a
run executes or is observed (`MUTABLE`: tracking, threads, logging, checkpoint cadence, deploy, report, launch,
ZeRO layout) may always differ. Every other setting defines results from some phase on (`SCOPES`; model, data,
seed, batch size, optimizer, ... from the first): it is fixed once that phase or a later one has started (finished or
checkpointed), since a changed value would mix two runs' steps or (another model or data) fail on the stored
weights; before that it may change, e.g. prune settings fixed after a prune error while sparsify is finished. The
learning rates and gradient clipping (`RECOVERY`) may change while steps remain. After a stop on non-finite numbers
(state.json `current.stopped`), so may the strength of the stopped phase's penalty (what that error asks to lower,
e.g. regularizer.alpha0); after any other stop it is fixed like the rest of the regularizer, which would otherwise
mix two recipes in one phase. Settings that act only through optimizer steps (`STEP_SETTINGS`: batch size,
optimizer, regularizer) are not fixed by a phase that only evaluated its start weights (epochs 0), e.g. a dense phase
that measured `model.checkpoint`.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import yaml

from sparsetrain.engine.checkpoint import STATE_FILE, read_run_state
from sparsetrain.engine.finite import NONFINITE_STOP, nonfinite_stops_from
from sparsetrain.errors import InputError
from sparsetrain.paths import comparable
from sparsetrain.phases import DENSE, FINETUNE, PHASES, PRUNE, SPARSIFY, final_phase

# Dotted prefixes of settings that may change when a run resumes (execution, tracking, export, launch; model.imports
# only says where the code of model.name is found, e.g. a moved file: the name itself stays fixed).
MUTABLE = ("out_dir", "resume", "model.imports", "tracking", "launch", "deploy", "report", "phases.dense.enabled",
           "phases.sparsify.enabled", "phases.finetune.enabled", "data.num_workers", "train.eval_batch_size",
           "train.log_every",
           "train.checkpoint_every", "train.keep_checkpoints", "train.device", "train.threads",
           "train.grad_checkpointing", "train.flush_denormal", "deepspeed.dist_backend", "deepspeed.timeout_min",
           "deepspeed.zero_stage", "deepspeed.offload_optimizer", "deepspeed.param_persistence_threshold")
# What the non-finite error asks to change (`engine.finite.hint`) besides the penalty's strength: may change while the
# run still has steps to take (they apply from the checkpoint on); on a finished run they would change nothing, so
# they are refused there. The strength joins them only after a non-finite stop (`recovery_settings`).
RECOVERY = ("optim.lr", "phases.dense.lr", "phases.sparsify.lr", "phases.finetune.lr", "deepspeed.gradient_clipping")
# (dotted prefix, first phase whose results it changes), first match wins; unlisted settings: the first phase.
# The gradual schedule and grouped-conv layouts act during sparsity training; l2 (alpha2) and its kernels in every
# phase; baselines run after the last phase ("end").
SCOPES = (("prune.schedule", SPARSIFY), ("prune.gradual", SPARSIFY), ("prune.grouped_conv", SPARSIFY),
          ("prune", PRUNE), ("phases.sparsify", SPARSIFY), ("phases.finetune", FINETUNE),
          ("regularizer.alpha2", DENSE), ("regularizer.gradient_path", DENSE), ("regularizer.backend", DENSE),
          ("regularizer.finetune_l0", FINETUNE), ("regularizer", SPARSIFY), ("baselines", "end"))
# Settings that act only through optimizer steps (the batches, the optimizer and its step, the penalty whose gradient
# each step adds: every regularizer setting, its state included, is made by steps): a phase that took none
# (`phases.<phase>.epochs=0` evaluates its start weights, `steps` 0 in its results) does not fix them.
STEP_SETTINGS = ("train.batch_size", "optim", "deepspeed.gradient_accumulation_steps", "deepspeed.gradient_clipping",
                 "phases.dense.lr", "phases.sparsify.lr", "phases.finetune.lr", "regularizer")
_SHOWN = 3  # differing settings named in the error
_MISSING = object()


def prepare_out_dir(out_dir: Path) -> None:
    """Create `out_dir` (and its parents) if needed.

    Raises:
        InputError: one line naming `out_dir` and the OS's reason (a file, under a file, not writable, ...).
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"out_dir: cannot create the run directory {out_dir} ({err.strerror or err})") from None
    if not out_dir.is_dir():
        raise InputError(f"out_dir: {out_dir} is not a directory")
    check_writable(out_dir, "out_dir", "the run directory")


def check_writable(folder: Path, field: str, what: str) -> None:
    """Refuse a `folder` the run (or export) cannot write into, before anything is written there: a read-only mount
    or a folder without write permission ended in a traceback at the first file written (trial 17: metrics.jsonl).

    Args:
        folder: an existing directory.
        field: the setting or command the error is about (`out_dir`, `export`).
        what: what the folder is, e.g. "the run directory".

    Raises:
        InputError: one line naming `field`, the folder and the OS's reason.
    """
    if os.access(folder, os.W_OK | os.X_OK):
        return
    read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    reason = os.strerror(errno.EROFS if read_only else errno.EACCES)
    raise InputError(f"{field}: cannot write into {what} {folder} ({reason}); give a writable folder")


def check_own_out_dir(out_dir: Path) -> None:
    """Refuse an `out_dir` that is a sparsetrain export folder or lies inside another run's directory: a run there
    would mix its checkpoints, weights and report into the other run's files (trial 17: `out_dir=OTHER_RUN/export`).
    A baseline's sub-run (`<run>/baselines/<name>/`) is the one run that lives inside another.

    Raises:
        InputError: one line naming out_dir, the export folder or run directory it belongs to, and what to give.
    """
    from sparsetrain.baselines import BASELINES
    from sparsetrain.structural.serialize import ARCH_FILE

    out_dir = Path(out_dir).absolute()
    if (out_dir / ARCH_FILE).is_file():
        raise InputError(f"out_dir: {out_dir} is an export folder (it holds {ARCH_FILE}), not a run directory; give "
                         "a folder of its own for the run's outputs")
    for parent in out_dir.parents:
        if (parent / STATE_FILE).is_file():
            inside = out_dir.relative_to(parent).parts
            if len(inside) == 2 and inside[0] == "baselines" and inside[1] in BASELINES:
                return
            raise InputError(f"out_dir: {out_dir} lies inside the run directory {parent} (it holds {STATE_FILE}); "
                             f"give a folder outside it, e.g. out_dir={parent.parent / (parent.name + '-2')}")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict) or not data:
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _matches(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(f"{p}.") for p in prefixes)


def is_execution_setting(key: str) -> bool:
    """Whether dotted `key` is one of `MUTABLE`'s settings (how a run executes or is observed, not what it computes)."""
    return _matches(key, MUTABLE)


def recovery_settings(config: dict[str, Any], state: dict[str, Any]) -> tuple[str, ...]:
    """`RECOVERY`, plus the strength settings of the penalty the stopped phase trains with (e.g. regularizer.alpha0
    in sparsify, regularizer.alpha2 alone in an l2 fine-tuning) when `state` records a stop on non-finite numbers in
    the phase the run continues (`NONFINITE_STOP`)."""
    from sparsetrain.config.strategies import REGULARIZER_SETTINGS

    current = state.get("current") or {}
    if current.get("stopped") != NONFINITE_STOP:
        return RECOVERY
    section = config.get("regularizer", {})
    settings = REGULARIZER_SETTINGS.get(section.get("name"))
    if settings is None:
        return RECOVERY
    keeps_penalty = current.get("phase") == SPARSIFY or (current.get("phase") == FINETUNE and
                                                          settings.model_validate(section).penalty_in_finetune)
    strength = settings.STRENGTH if keeps_penalty else ("alpha2",)
    return RECOVERY + tuple(f"regularizer.{name}" for name in strength)


def record_nonfinite_stop(state: dict[str, Any], phase: str) -> bool:
    """Mark `state`'s checkpoint of `phase` (`current`) as the last good one before a stop on non-finite numbers, so
    that the resume may lower the penalty's strength (`recovery_settings`), and count the stops from it
    (`current.nonfinite_stops`: a second one says how to get out, `nonfinite_stops_from`); the next checkpoint
    replaces the mark. Returns whether there was such a checkpoint to mark (the caller writes state.json)."""
    current = state.get("current")
    if not current or current.get("phase") != phase:
        return False  # the phase restarts from its start weights: it has not started, its settings are free
    current["nonfinite_stops"] = nonfinite_stops_from(state, phase) + 1
    current["stopped"] = NONFINITE_STOP
    return True


def _scope(key: str) -> int:
    """Index in PHASES of the first phase whose results `key` changes (len(PHASES) for after the last one)."""
    phase = next((phase for prefix, phase in SCOPES if _matches(key, (prefix,))), DENSE)
    return PHASES.index(phase) if phase in PHASES else len(PHASES)


def _latest_started(state: dict[str, Any], finished: bool) -> int:
    """Index of the latest phase finished or checkpointed mid-way (len(PHASES) for a finished run; -1: none)."""
    if finished:
        return len(PHASES)
    started = [*state.get("completed", {}), *([state["current"]["phase"]] if state.get("current") else [])]
    return max((PHASES.index(p) for p in started if p in PHASES), default=-1)


def changed_settings(stored: dict[str, Any], new: dict[str, Any], state: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, stored value, new value) of every setting that differs and may not change at this point of
    the run (`state`: state.json's `completed` and `current`), in schema order.

    A key the stored config lacks (a setting added to sparsetrain after the run started) is not compared; a key
    only the stored config has (e.g. a setting of another regularizer) shows as `(unset)` on the new side. Path
    settings compare resolved (`paths.comparable`): a stored relative path (older runs) equals its absolute form.
    """
    finished = last_phase(new) in state.get("completed", {})
    latest = _latest_started(state, finished)
    stepped = {**state, "completed": {p: r for p, r in state.get("completed", {}).items()
                                      if not isinstance(r, dict) or r.get("steps") != 0}}
    latest_step = _latest_started(stepped, finished)  # evaluate-only phases left out, for STEP_SETTINGS
    free = MUTABLE if finished else MUTABLE + recovery_settings(new, state)
    old_flat, new_flat = _flatten(stored), _flatten(new)
    keys = list(new_flat) + [k for k in old_flat if k not in new_flat]
    return [(k, old_flat[k], new_flat.get(k, _MISSING)) for k in keys
            if k in old_flat and comparable(k, old_flat[k]) != comparable(k, new_flat.get(k, _MISSING))
            and not _matches(k, free)
            and _scope(k) <= (latest_step if _matches(k, STEP_SETTINGS) else latest)]


def _show(value: Any) -> str:
    """A setting as the user wrote it where the config kept it: epochs 2 (validated into 2.0) shows as 2."""
    if value is _MISSING:
        return "(unset)"
    return str(int(value)) if isinstance(value, float) and value.is_integer() else json.dumps(value)


def _stored_config(run_dir: Path) -> dict[str, Any] | None:
    """The `config.yaml` a run was started with, None when it is missing, unreadable or not a mapping."""
    try:
        stored = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return stored if isinstance(stored, dict) else None


def fixed_by(key: str, new: dict[str, Any], state: dict[str, Any]) -> str:
    """Why `key`, a setting `changed_settings` refuses to change, is fixed at this point of the run (`state`), in words
    that follow `fixed: `: the phase that has run (stepped, for `STEP_SETTINGS`) with it, or that every phase stepping
    with a `RECOVERY` setting has finished; for a penalty strength that a stop on NaN/inf would free (mid-phase), that
    it may change only then (`recovery_settings`)."""
    if _matches(key, RECOVERY):
        return "every phase that steps with it has finished"
    steps = _matches(key, STEP_SETTINGS)
    completed, current = state.get("completed", {}), state.get("current") or {}
    started = [p for p in PHASES[_scope(key):] if p == current.get("phase") or
               (p in completed and not (steps and isinstance(completed[p], dict) and completed[p].get("steps") == 0))]
    if not started:
        return "the run is complete"  # settings of what runs after the last phase (baselines)
    verb = "stepped" if steps else "run" if started[0] in completed else "started"
    reason = f"{started[0]} has {verb} with it"
    if current and key in recovery_settings(new, {**state, "current": {**current, "stopped": NONFINITE_STOP}}):
        reason += "; it may change only after a NaN/inf stop"
    return reason


def check_same_run(out_dir: Path, config: dict[str, Any]) -> None:
    """Refuse to continue the run in `out_dir` with settings that would change its results.

    Args:
        out_dir: a run directory holding `state.json` (a run to continue) and the `config.yaml` it was started with.
        config: the new resolved config (`config_to_dict`).

    Raises:
        InputError: one line naming the first differing settings (stored → new), why each is fixed now (`fixed_by`)
            and the ways out: for a complete run, that `sparsetrain run OUT_DIR/config.yaml` (its stored settings)
            reports it again, and a new out_dir for these settings (resume=false would replace the finished run).
    """
    stored = _stored_config(out_dir)
    if stored is None:
        return  # no readable record of the old settings: nothing to compare with (older runs)
    state = read_run_state(out_dir)
    if state is None:
        return  # the pipeline's own state check (`load_run_state`) reports a corrupt state.json
    changed = changed_settings(stored, config, state)
    if not changed:
        return
    shown = "; ".join(f"{k} {_show(old)} -> {_show(new)} (fixed: {fixed_by(k, config, state)})"
                      for k, old, new in changed[:_SHOWN])
    more = f"; and {len(changed) - _SHOWN} more" if len(changed) > _SHOWN else ""
    way_out = "use a new out_dir, or resume=false to start over"
    if last_phase(config) in state.get("completed", {}):
        stored_config = out_dir / "config.yaml"
        way_out = (f"the run is complete: `sparsetrain run {stored_config}` reports it again (its stored settings, "
                   f"shown by `sparsetrain config {stored_config}`); for these settings use a new out_dir "
                   "(resume=false would start over and replace the finished run)")
    raise InputError(f"out_dir: {out_dir} holds a run with other settings: {shown}{more}; {way_out}")


def last_phase(config: dict[str, Any]) -> str:
    """The phase whose weights are a finished run's result: finetune, or prune when finetuning is disabled."""
    enabled = config.get("phases", {}).get(FINETUNE, {}).get("enabled", True)
    return FINETUNE if enabled else PRUNE


def unfinished_phases(run_dir: Path, state: dict[str, Any] | None = None) -> tuple[str | None, str] | None:
    """(last finished phase, or None when none has, and the run's final phase `last_phase`) when `run_dir` is a run
    directory whose final phase has not finished; None for a finished run or a folder without a readable
    `state.json` and `config.yaml`. `state`: its state.json when the caller has read it already."""
    state, config = state if state is not None else read_run_state(run_dir), _stored_config(run_dir)
    if state is None or config is None or last_phase(config) in state["completed"]:
        return None
    return final_phase(state["completed"]), last_phase(config)


def check_finished(run_dir: Path, action: str, phase: str | None = None) -> None:
    """Refuse `action` (export, eval, bench latency) on a run whose final phase has not finished.

    `phase` names the finished phase the caller wants explicitly (`sparsetrain export --phase`): then only that
    phase must have finished.

    Raises:
        InputError: one line naming the last completed phase and how to finish the run (or export that phase).
    """
    if phase is not None:
        _check_phase_finished(run_dir, action, phase)
        return
    unfinished = unfinished_phases(run_dir)
    if unfinished is None:
        return  # finished, or not a run directory with state: the caller's own checks apply
    last, wanted = unfinished
    finish = f"finish it with `sparsetrain run {run_dir / 'config.yaml'}`"
    if last is None:
        raise InputError(f"{action}: {run_dir} has no finished phase yet; {finish}")
    explicit = f"`sparsetrain export {run_dir} --phase {last}`"
    if action != "export":
        explicit += f" and give {run_dir / 'export'}"
    raise InputError(f"{action}: {run_dir} is unfinished: the last completed phase is {last}, not {wanted}; {finish}"
                     f", or export the {last} phase explicitly with {explicit}")


def _check_phase_finished(run_dir: Path, action: str, phase: str) -> None:
    """Refuse `action` on the phase `phase` of a run directory where it has not finished (one line)."""
    state = read_run_state(run_dir)
    if state is None or _stored_config(run_dir) is None or phase in state["completed"]:
        return  # finished, or not a run directory with state: the caller's own checks apply
    done = ", ".join(p for p in PHASES if p in state["completed"]) or "none"
    raise InputError(f"{action}: phase {phase} of {run_dir} has not finished (finished: {done})")


def phases_needed_first(selected: list[str], completed: dict[str, Any], sparsify_enabled: bool) -> None:
    """Refuse `--phase P` when P starts from the weights of an earlier phase that has neither finished nor is
    selected: prune starts from sparsify's (when enabled), finetune from prune's.

    Raises:
        InputError: one line naming the phase that must run first.
    """
    needs = {PRUNE: SPARSIFY if sparsify_enabled else None, FINETUNE: PRUNE}
    for phase in selected:
        before = needs.get(phase)
        if before and before not in completed and before not in selected:
            raise InputError(f"phase: {phase} starts from the weights of the {before} phase, which has not "
                             f"finished in this out_dir; run --phase {before} first (or both, or no --phase)")
