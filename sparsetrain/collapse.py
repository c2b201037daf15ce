"""A phase whose metric is at chance level: the warning line the run logs, records and prints at its end.

The task's evaluation gives the chance level with its metrics (`chance`: what a model that learned nothing scores
on this test set; `tasks.classification.chance_accuracy`, `tasks.segmentation.constant_dice` / `constant_miou`). A
collapse is a result, not bad input: the run goes on, the phase's results keep the line (report.json
`phases.<phase>.at_chance`) and the end-of-run table prints it (`report.format_table`), unless a later phase
recovered: clearly above chance, by the same 3 standard errors from the other side (`report.clearly_above_chance`;
14.20 % over a bound of 14.08 % is not).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sparsetrain.phases import DENSE, PRUNE, SPARSIFY, TRAINING_PHASES
from sparsetrain.report import CHAIN, metric_label

USUAL_WEIGHT_DECAY = 0.1  # above it optim.weight_decay is named first (common values: 1e-5 to 0.1, ViTs 0.05-0.3)

if TYPE_CHECKING:
    from sparsetrain.config import RunConfig


def chance_warning(phase: str, results: dict[str, Any], cfg: RunConfig,
                   completed: dict[str, dict[str, Any]]) -> str | None:
    """`accuracy 8.64 % is at chance level (...): the model collapsed; try ...`, or None when the phase's metric is
    above its chance level, or the results have none (runs from before it was measured), or the test set cannot
    tell (chance 100 %: e.g. segmentation targets without foreground).

    Args:
        phase: The phase just evaluated.
        results: Its results (`metric`, `chance`, in percent).
        cfg: The run's settings (the hint names the ones to change, with their values).
        completed: The phases finished before it (whether the phase it started from was at chance).
    """
    metric, chance = results.get("metric"), results.get("chance")
    if metric is None or chance is None or chance >= 100.0 or metric > chance:
        return None
    name = metric_label(cfg.task, results)
    level = (f"{name} {metric:.2f} % is at chance level (at or below {chance:.2f} %, what a model that learned nothing "
             f"can score on this test set)")
    if (given := _untrained_given_weights(phase, cfg, completed)) is not None:
        return f"{level}: {given}"
    return f"{level}: the model collapsed; {what_to_try(phase, cfg, completed)}"


def _untrained_given_weights(phase: str, cfg: RunConfig, completed: dict[str, dict[str, Any]]) -> str | None:
    """For a phase that took no step (`epochs: 0`) on the user's own weights (`model.checkpoint`, `model.pretrained`)
    with no phase at chance before it: what to check about those weights and the data (trial 29: the MobileNetV3
    recipe's own mode, `dense.epochs=0` from a checkpoint, was told to set a checkpoint). Else None."""
    if phase == PRUNE or getattr(cfg.phases, phase).epochs or _collapsed_before(phase, completed):
        return None
    earlier = TRAINING_PHASES[:TRAINING_PHASES.index(phase)]
    if any(getattr(cfg.phases, p).enabled and getattr(cfg.phases, p).epochs for p in earlier):
        return None  # a phase before it trained: these are not the given weights as loaded
    if cfg.model.checkpoint:
        weights = f"model.checkpoint ({cfg.model.checkpoint})"
    elif cfg.model.pretrained:
        weights = f"the pretrained weights of {cfg.model.name}"
    else:
        return None
    return (f"{weights} scores like an untrained model on this data (phases.{phase}.epochs=0: no training step ran); "
            f"check that the data are prepared as in its training (data.normalize={cfg.data.normalize}, "
            f"data.image_size={cfg.data.image_size}, colour or gray), that its classes are in the data's order, and "
            f"that it is the trained file; or train it here (phases.{phase}.epochs)")


def what_to_try(phase: str, cfg: RunConfig, completed: dict[str, dict[str, Any]]) -> str:
    """`try <the settings that usually cause a collapse in this phase, with their values>`; for a phase that
    started from weights at chance already, where that began."""
    epochs = f"more phases.{phase}.epochs (now {getattr(cfg.phases, phase).epochs:g})" if phase != PRUNE else ""
    cause = _collapsed_before(phase, completed)
    if cause == SPARSIFY:
        return (f"try {epochs}; " if epochs else "") + f"it was at chance after {SPARSIFY} already (see that warning)"
    if cause == PRUNE:
        return f"try {epochs}, or pruning less: {_prune_amount(cfg)}"
    if phase != PRUNE and not getattr(cfg.phases, phase).epochs:
        return (f"it was not trained (phases.{phase}.epochs=0): try more epochs, or model.checkpoint (a trained "
                "model)")
    decay = _weight_decay(cfg)
    if phase == DENSE:
        return f"try {decay}a lower optim.lr (now {cfg.optim.lr:g}) or {epochs}"
    if phase == SPARSIFY:
        gradual = f", {_prune_amount(cfg)} (gradual pruning)" if getattr(cfg.prune, "schedule", "") == "gradual" else ""
        return f"try {decay}{_strength(cfg)}{gradual}, or {epochs}"
    if phase == PRUNE:
        later = "; fine-tuning may recover it" if cfg.phases.finetune.enabled and cfg.phases.finetune.epochs else ""
        return f"try {_prune_amount(cfg)}{later}"
    lr = cfg.phases.finetune.lr or cfg.optim.lr
    return f"try {decay}a lower phases.finetune.lr (now {lr:g}) or {epochs}"


def _weight_decay(cfg: RunConfig) -> str:
    """`a much lower optim.weight_decay (now 1e+30, far above the usual 0 to 0.1), ` when it is above
    `USUAL_WEIGHT_DECAY` (a decay that strong pulls every weight to zero, whatever the other settings), else ''."""
    decay = cfg.optim.weight_decay
    if decay <= USUAL_WEIGHT_DECAY:
        return ""
    return f"a much lower optim.weight_decay (now {decay:g}, far above the usual 0 to {USUAL_WEIGHT_DECAY:g}), "


def _collapsed_before(phase: str, completed: dict[str, dict[str, Any]]) -> str | None:
    """The first phase at chance of those this phase's weights come from (`report.CHAIN`), or None."""
    before = CHAIN[:CHAIN.index(phase)] if phase in CHAIN else ()
    return next((p for p in before if completed.get(p, {}).get("at_chance")), None)


def _strength(cfg: RunConfig) -> str:
    """The sparsity strategy's strength setting: `a lower regularizer.alpha0 (now 1)`."""
    key = {"l0_exp": "alpha0", "grad_count": "lambda_s", "l2": "alpha2"}.get(cfg.regularizer.name)
    if key is None:
        return f"a weaker regularizer ({cfg.regularizer.name}'s strength)"
    return f"a lower regularizer.{key} (now {getattr(cfg.regularizer, key):g})"


def _prune_amount(cfg: RunConfig) -> str:
    """How much the prune rule removes: `a lower prune.threshold (now 0.01)`."""
    rule = cfg.prune
    if rule.rule == "filters":
        return (f"a lower prune.filter_fraction (now {rule.filter_fraction:g}) or prune.filter_norm_threshold "
                f"(now {rule.filter_norm_threshold:g})")
    key = next((k for k in ("sparsity", "threshold") if hasattr(rule, k)), None)
    return f"a lower prune.{key} (now {getattr(rule, key):g})" if key else f"pruning less (prune.rule={rule.rule})"
