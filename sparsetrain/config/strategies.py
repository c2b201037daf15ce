"""Strategy sections: each sparsity regularizer and each prune rule owns its settings.

`regularizer` and `prune` are discriminated unions keyed by `regularizer.name` / `prune.rule`: the key picks one
settings class from a registry (`REGULARIZER_SETTINGS`, `PRUNE_RULES`), and a key that class does not declare is
a load error naming it (`regularizer.beta: not a setting of regularizer.name='grad_count' ...`), so a sweep over
a setting the chosen strategy never reads cannot run identical jobs. New strategies register their class with
`register_regularizer_settings` / `register_prune_rule_settings` (the training side:
`sparsetrain.regularizers.register_regularizer`, `sparsetrain.pruning.criteria.register_prune_rule`).

Vocabulary: the *gradient path* is where a penalty's gradient enters training — `hook` (added to the optimizer's
fp32 gradients after reduction, the default) or `autograd` (a differentiable term of the loss, the reference);
the *backend* is which kernels do the work — `triton` (fused, CUDA) or `torch` (plain torch); `auto` picks
triton on CUDA with Triton installed, else torch, once per run (`sparsetrain.backend.resolve_backend`).
"""

from __future__ import annotations

import warnings
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sparsetrain.config.numbers import NumbersModel

KERNEL_TO_SETTINGS = {"autograd": {"gradient_path": "autograd", "backend": "torch"},
                      "triton": {"gradient_path": "hook", "backend": "triton"},
                      "torch": {"gradient_path": "hook", "backend": "torch"},
                      "auto": {"gradient_path": "hook", "backend": "auto"}}


class Section(NumbersModel):
    """Base for config sections: unknown keys, non-finite numbers and booleans given to numeric fields are errors,
    values are re-validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)


class Strategy(Section):
    """A section whose settings depend on one key (`KEY`): one subclass per strategy, chosen by that key.

    Constructing the base class builds the chosen strategy's class: `PruneConfig(rule="filters",
    filter_fraction=0.5)` is a `FiltersConfig`, and a setting that strategy does not declare is a ValidationError.
    """

    KEY: ClassVar[str]

    def __new__(cls, *args: Any, **data: Any) -> Strategy:
        variants = variants_of(cls)
        if variants:  # the section's base class: dispatch on the key
            choice = data.get(cls.KEY, cls.model_fields[cls.KEY].default)
            cls = variants.get(choice, cls) if isinstance(choice, str) else cls  # validation names a bad key
        return super().__new__(cls)


# ---- regularizers ----------------------------------------------------------------------------------------------


class RegularizerConfig(Strategy):
    """Settings every sparsity strategy reads (the l2 term and the kernels also run in the dense and fine-tune
    phases, whatever the strategy)."""

    KEY: ClassVar[str] = "name"
    # The settings that scale the penalty (what a non-finite regularizer value asks to lower); a strategy adds its own.
    STRENGTH: ClassVar[tuple[str, ...]] = ("alpha2",)
    name: str = Field("l0_exp", description="Sparsity strategy: l0_exp = smooth l0 surrogate + l2 (Method 1); "
                      "l2 = l2 only (baseline); none = no penalty; grad_count = gradient-counting pull (Method 2).")
    alpha2: float = Field(1e-4, ge=0, description="l2 strength (global); on in every training phase.")
    gradient_path: Literal["hook", "autograd"] = Field(
        "hook", description="Where the penalty's gradient enters: hook = added to the optimizer's fp32 gradients "
        "after reduction (fast path); autograd = a differentiable loss term (reference).")
    backend: Literal["auto", "triton", "torch"] = Field(
        "auto", description="Kernels for penalty gradients and masks: triton (fused, CUDA), torch (plain torch), "
        "auto = triton on CUDA when Triton is installed, else torch; resolved once per run.")

    @property
    def penalty_in_finetune(self) -> bool:
        """Whether the fine-tune phase keeps this strategy's penalty (else it trains with l2 only)."""
        return False

    @model_validator(mode="before")
    @classmethod
    def _legacy_kernel(cls, data: Any) -> Any:
        """`regularizer.kernel` (deprecated in 0.1, removed in the next release) mixed gradient path and
        backend: map it to the two new settings, with a FutureWarning."""
        if not isinstance(data, dict) or "kernel" not in data:
            return data
        data = dict(data)
        kernel = data.pop("kernel")
        if "gradient_path" in data or "backend" in data:
            raise ValueError("regularizer.kernel: replaced by regularizer.gradient_path and regularizer.backend; "
                             "give only the new keys")
        if kernel not in KERNEL_TO_SETTINGS:
            raise ValueError(f"regularizer.kernel: expected one of {', '.join(KERNEL_TO_SETTINGS)} (got {kernel!r}); "
                             "it is deprecated, use regularizer.gradient_path and regularizer.backend")
        new = KERNEL_TO_SETTINGS[kernel]
        warnings.warn(f"regularizer.kernel={kernel} is deprecated and will be removed in the next release; use "
                      f"regularizer.gradient_path={new['gradient_path']} regularizer.backend={new['backend']}",
                      FutureWarning, stacklevel=2)
        return {**data, **new}


class L0ExpConfig(RegularizerConfig):
    """Method 1: smooth l0 surrogate α0_l · Σ(1 − e^{−β|w|}) + l2 (Oliveira et al., arXiv 2109.05075)."""

    STRENGTH: ClassVar[tuple[str, ...]] = ("alpha0", "alpha2")
    name: Literal["l0_exp"] = Field("l0_exp", description="Smooth l0 surrogate + l2 (Method 1).")
    alpha0: float = Field(1e-5, ge=0, description="l0 surrogate strength (before per-layer scaling).")
    beta: float = Field(10.0, ge=0, description="Surrogate sharpness; 0 gives the pure-l2 baseline.")
    layer_scaling: Literal["sqrt_size", "none"] = Field(
        "sqrt_size", description="alpha0_l = alpha0 * sqrt(N_l / N_max) (authors' NORM=True) or alpha0 everywhere.")
    finetune_l0: bool = Field(False, description="Keep the l0 term on during fine-tuning (l2 always stays on).")

    @property
    def penalty_in_finetune(self) -> bool:
        return self.finetune_l0


class L2Config(RegularizerConfig):
    """l2 only (weight decay through the gradient path): the baseline of Method 1."""

    name: Literal["l2"] = Field("l2", description="l2 only (baseline).")


class NoPenaltyConfig(RegularizerConfig):
    """No sparsity penalty during sparsify (masks only); l2 still runs in the dense and fine-tune phases."""

    name: Literal["none"] = Field("none", description="No penalty in the sparsify phase.")


class GradCountConfig(RegularizerConfig):
    """Method 2 (Khan et al., arXiv 2210.07451): gradient counting + count-driven group-lasso pull + redundancy."""

    STRENGTH: ClassVar[tuple[str, ...]] = ("lambda_s", "alpha2")
    name: Literal["grad_count"] = Field("grad_count", description="Gradient-counting pull (Method 2).")
    gradient_path: Literal["hook"] = Field("hook", description="grad_count has no autograd reference: hook only.")
    count_tau: float = Field(0.5, gt=0, description="A filter counts when its mean |grad| exceeds tau * layer mean.")
    count_window: int = Field(50, ge=1, description="Steps per gradient-counting window.")
    lambda_s: float = Field(1e-3, ge=0, description="Strength of the count-driven zero attraction.")
    redundancy: Literal["cosine", "none"] = Field("cosine", description="Redundant-filter criterion.")
    redundancy_rho: float = Field(0.9, gt=0, le=1, description="Cosine similarity above which a pair is redundant.")


# ---- prune rules -------------------------------------------------------------------------------------------------


class GradualConfig(Section):
    """Gradual magnitude pruning (Zhu & Gupta 2017): s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n·Δt))³."""

    initial_sparsity: float = Field(0.0, ge=0, lt=1, description="s_i: sparsity of the first pruning step (t0).")
    start: float = Field(0.0, ge=0, lt=1, description="t0 as a fraction of the sparsify phase's steps.")
    end: float = Field(0.75, gt=0, le=1, description="t0 + n·Δt as a fraction of the phase's steps: the target "
                       "sparsity s_f (prune.sparsity) is reached here; the rest trains with fixed masks.")
    every_steps: int = Field(100, ge=1, description="Δt: optimizer steps between mask updates.")

    @model_validator(mode="after")
    def _check_order(self) -> GradualConfig:
        if self.end <= self.start:
            raise ValueError(f"end {self.end} must be after start {self.start}")
        return self


class PruneConfig(Strategy):
    """How weights (or filters) are chosen for pruning; one subclass per rule."""

    KEY: ClassVar[str] = "rule"
    rule: str = Field("global_threshold", description="How weights are chosen for pruning: global_threshold, "
                      "layer_threshold, global_sparsity, layer_sparsity (unstructured, Method 1) or filters "
                      "(whole filters removed, Method 2).")


class UnstructuredRule(PruneConfig):
    """Rules that zero single weights under a mask (Method 1)."""

    schedule: Literal["oneshot", "gradual"] = Field(
        "oneshot", description="oneshot = prune once, after sparsity training (Method 1); gradual = gradual "
        "magnitude pruning during the sparsify phase (Zhu & Gupta 2017, settings in prune.gradual): masks are "
        "recomputed by the sparsity rule on a cubic schedule up to the target, training with masks in between, "
        "and the prune phase finds the target met. gradual needs a sparsity rule.")
    gradual: GradualConfig = Field(default_factory=GradualConfig, description="Settings of schedule=gradual (also "
                                   "used by the gmp baseline).")

    @model_validator(mode="after")
    def _check_schedule(self) -> UnstructuredRule:
        if self.schedule == "gradual" and self.rule not in ("global_sparsity", "layer_sparsity"):
            raise ValueError(f"prune.schedule: gradual needs a target-sparsity rule (global_sparsity or "
                             f"layer_sparsity), not prune.rule={self.rule!r}")
        return self


class GlobalThresholdConfig(UnstructuredRule):
    rule: Literal["global_threshold"] = Field("global_threshold", description="Prune |w| <= threshold everywhere.")
    threshold: float = Field(1e-3, ge=0, description="|w| at or below this is pruned.")


class LayerThresholdConfig(UnstructuredRule):
    rule: Literal["layer_threshold"] = Field("layer_threshold", description="Prune |w| <= a per-layer threshold.")
    threshold: float = Field(1e-3, ge=0, description="|w| at or below this is pruned (layers without override).")
    layer_thresholds: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, description="Per-layer threshold overrides, by prunable parameter name (e.g. "
        "head.weight); checked against the model before training.")


class GlobalSparsityConfig(UnstructuredRule):
    rule: Literal["global_sparsity"] = Field("global_sparsity", description="One global magnitude ranking; "
                                             "exactly the target fraction of all weights is pruned.")
    sparsity: float = Field(0.9, ge=0, lt=1, description="Target sparsity (fraction of weights).")


class LayerSparsityConfig(UnstructuredRule):
    rule: Literal["layer_sparsity"] = Field("layer_sparsity", description="Each layer pruned to its own target.")
    sparsity: float = Field(0.9, ge=0, lt=1, description="Target sparsity of layers without override.")
    layer_sparsity: dict[str, Annotated[float, Field(ge=0, lt=1)]] = Field(
        default_factory=dict, description="Per-layer target overrides in [0, 1), by prunable parameter name; "
        "checked against the model before training.")


class FiltersConfig(PruneConfig):
    """Method 2: whole filters (output channels of a channel group) are removed physically."""

    rule: Literal["filters"] = Field("filters", description="Remove whole filters (Method 2).")
    filter_norm_threshold: float = Field(1e-2, ge=0, description="Filters whose relative norm falls below this "
                                         "are removed.")
    filter_fraction: float = Field(0.0, ge=0, lt=1, description="Remove at least this fraction of each prunable "
                                   "group's channels, weakest (lowest norm) first.")
    max_filter_fraction: float = Field(0.75, gt=0, lt=1, description="At most this fraction of a layer's filters "
                                       "is removed.")
    channel_score: Literal["l2", "l1", "bn_scale", "grad_count"] = Field(
        "l2", description="How channels are ranked for removal: l2/l1 norm of their filters, |BN scale| (network "
        "slimming; groups without a BatchNorm after their filters are ranked by l2, and a model with no such "
        "BatchNorm at all, e.g. a ViT, is refused before training), or the gradient count ratio of a grad_count "
        "sparsify phase.")
    round_to: int = Field(8, ge=1, le=256, description="Kept channel counts of each group are rounded to the nearest "
                          "multiple of this, so pruned layers keep kernel-friendly widths; 1 = off.")
    allow_inexact: bool = Field(False, description="Also remove channels normalized together by a LayerNorm or a "
                                "one-group GroupNorm: removal then changes the other channels' statistics (reported "
                                "as inexact; fine-tuning recovers). Off: such groups are kept whole, and the prune "
                                "phase names them once.")
    grouped_conv: Literal["within_groups", "whole_groups"] = Field(
        "within_groups", description="How a grouped conv (ResNeXt, RegNet) is pruned: within_groups = every group "
        "loses the same channels, the group count stays and the weight shrinks like a dense conv's (Torch-Pruning's "
        "way); whole_groups = whole groups are removed, each group keeps its width. Both exact; depthwise convs "
        "are unaffected.")


# ---- registries ------------------------------------------------------------------------------------------------

REGULARIZER_SETTINGS: dict[str, type[RegularizerConfig]] = {
    "l0_exp": L0ExpConfig, "l2": L2Config, "none": NoPenaltyConfig, "grad_count": GradCountConfig}
PRUNE_RULES: dict[str, type[PruneConfig]] = {
    "global_threshold": GlobalThresholdConfig, "layer_threshold": LayerThresholdConfig,
    "global_sparsity": GlobalSparsityConfig, "layer_sparsity": LayerSparsityConfig, "filters": FiltersConfig}


def variants_of(section: type[BaseModel]) -> dict[str, type[Strategy]]:
    """The registered strategies of a strategy section's base class (empty for any other section)."""
    registries: dict[type[BaseModel], dict[str, Any]] = {RegularizerConfig: REGULARIZER_SETTINGS,
                                                          PruneConfig: PRUNE_RULES}
    return dict(registries.get(section, {}))


def strategy_key(settings: type[Strategy]) -> str:
    """The value of the discriminating key (`name` / `rule`) a settings class declares."""
    return settings.model_fields[settings.KEY].default


def register_regularizer_settings(settings: type[RegularizerConfig]) -> None:
    """Make `regularizer.name=<its name>` load into `settings` (a RegularizerConfig subclass whose `name` field is
    a Literal with a default). Re-registering the same class is a no-op; another class under a taken name raises
    ValueError."""
    name = strategy_key(settings)
    if REGULARIZER_SETTINGS.get(name, settings) is not settings:
        raise ValueError(f"regularizer.name: {name!r} is already registered to {REGULARIZER_SETTINGS[name].__name__}")
    REGULARIZER_SETTINGS[name] = settings


def register_prune_rule_settings(settings: type[PruneConfig]) -> None:
    """Make `prune.rule=<its rule>` load into `settings` (a PruneConfig subclass, usually of UnstructuredRule, whose
    `rule` field is a Literal with a default). Re-registering the same class is a no-op; another class under a
    taken name raises ValueError."""
    name = strategy_key(settings)
    if PRUNE_RULES.get(name, settings) is not settings:
        raise ValueError(f"prune.rule: {name!r} is already registered to {PRUNE_RULES[name].__name__}")
    PRUNE_RULES[name] = settings


# Every key of the one flat section of release 0.1, as its resolved config.yaml files hold them (all written out).
FLAT_0_1 = {
    "regularizer": frozenset({"name", "alpha0", "alpha2", "beta", "layer_scaling", "kernel", "finetune_l0", "count_tau",
                              "count_window", "lambda_s", "redundancy", "redundancy_rho"}),
    "prune": frozenset({"rule", "threshold", "layer_thresholds", "sparsity", "layer_sparsity", "filter_norm_threshold",
                        "filter_fraction", "max_filter_fraction", "schedule", "gradual"}),
}


def _from_flat_0_1(section: str, data: dict[str, Any], settings: type[Strategy]) -> dict[str, Any]:
    """A section saved by release 0.1 (every setting of every strategy written out, e.g. a run directory's
    config.yaml read by `sparsetrain export` / `eval`) keeps the chosen strategy's settings; anything else as is."""
    if set(data) != FLAT_0_1.get(section):
        return data
    return {k: v for k, v in data.items() if k in settings.model_fields or k == "kernel"}


def pick_strategy(section: str, registry: dict[str, type[Strategy]], base: type[Strategy], data: Any,
                  given: frozenset[str] = frozenset()) -> Any:
    """Validate a raw mapping into the registry's class for its key (the discriminated union's dispatch).

    Args:
        given: Dotted keys the user gave as overrides (`section`, `section.<key>`, ...): when the key was chosen
            there, a setting only another strategy reads is shown as the recipe's leftover and the hint gives the
            chosen strategy's own section.

    Raises:
        ValueError: the key names no registered strategy, or the mapping holds a key that another strategy reads
            but this one does not (one line naming `<section>.<key>` and the strategy's settings); keys no
            strategy reads are left to pydantic ("unknown key", with the closest valid one suggested).
    """
    if not isinstance(data, dict):
        return data
    key = base.KEY
    choice = data.get(key, base.model_fields[key].default)
    if not isinstance(choice, str) or choice not in registry:  # a list or mapping is no name (and unhashable)
        raise ValueError(f"{section}.{key}: expected one of {', '.join(registry)} (got {choice!r})")
    settings = registry[choice]
    data = _from_flat_0_1(section, data, settings)
    elsewhere = {name for other in registry.values() for name in other.model_fields}  # other strategies' keys
    foreign = [k for k in data if k not in settings.model_fields and k in elsewhere]  # the rest: "unknown key"
    foreign.sort(key=lambda k: f"{section}.{k}" not in given)  # a key the user typed is named before the recipe's
    if foreign:
        raise ValueError(_foreign_setting(section, registry, settings, foreign[0], given))
    return settings.model_validate(data)


def _foreign_setting(section: str, registry: dict[str, type[Strategy]], settings: type[Strategy], name: str,
                     given: frozenset[str]) -> str:
    """The error for `section.name`, a setting of other strategies than the chosen one, with the way out: the
    chosen strategy's own section when the user chose it on the command line, else a strategy that reads `name`."""
    key, choice = settings.KEY, strategy_key(settings)
    own = ", ".join(k for k in settings.model_fields if k != key)
    readers = [label for label, other in registry.items() if name in other.model_fields]
    read_by = f"{key}={'|'.join(readers)}"
    if not {section, f"{section}.{key}"} & given:
        return (f"{section}.{name}: not a setting of {section}.{key}={choice!r} (its settings: {own or 'none'}); "
                f"read by {read_by}; to switch, give the whole section, e.g. "
                f"{section}='{{{key}: {readers[0]}, {name}: ...}}'")
    head = (f"{section}.{name}: not a setting of {section}.{key}={choice!r}, chosen on the command line (its settings: "
            f"{own or 'none'})")
    example = _example_section(section, settings)
    if {section, f"{section}.{name}"} & given:
        return f"{head}; {name} is read by {read_by}; for {key}={choice} give e.g. {example}"
    return (f"{head}; the recipe's {section} section sets {name} (read by {read_by}); to switch to {key}={choice}, "
            f"give the whole section, e.g. {example}")


def _example_section(section: str, settings: type[Strategy]) -> str:
    """`prune='{rule: layer_sparsity, sparsity: ...}'`: the strategy's key and its first own setting (one its parent
    class does not declare), or the key alone for a strategy without settings of its own."""
    parent = next((c for c in settings.__mro__[1:] if issubclass(c, Strategy)), Strategy)
    first = next((k for k in settings.model_fields if k not in parent.model_fields and k != settings.KEY), None)
    setting = f", {first}: ..." if first else ""
    return f"{section}='{{{settings.KEY}: {strategy_key(settings)}{setting}}}'"
