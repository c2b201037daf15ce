"""Sparsity strategies, chosen by `regularizer.name` from a registry; all act through the gradient path.

A strategy is one settings class (a `RegularizerConfig` subclass, `sparsetrain.config.strategies`), one
`GradientRegularizer` subclass and one registry entry (`register_regularizer`) mapping its name to a builder.
Which phase gets which penalty is decided by the pipeline (`sparsetrain.pipeline.phase_penalty`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sparsetrain.config.loader import ConfigError
from sparsetrain.config.strategies import (
    GradCountConfig,
    L0ExpConfig,
    RegularizerConfig,
    register_regularizer_settings,
    strategy_key,
)
from sparsetrain.regularizers.base import GradientRegularizer, WeightSlice
from sparsetrain.regularizers.l0 import L0ExpRegularizer, layer_alphas

__all__ = ["REGULARIZERS", "GradientRegularizer", "L0ExpRegularizer", "StrategyInputs", "WeightSlice",
           "build_regularizer", "layer_alphas", "register_regularizer"]


@dataclass(frozen=True)
class StrategyInputs:
    """What a strategy may need besides its settings, known once the phase's model exists.

    Attributes:
        sizes: prunable weight name → number of elements.
        backend: "triton" or "torch", resolved once per run (`sparsetrain.backend.resolve_backend`).
        filter_layouts: called on demand: weight name → (filters, elements per filter) of the removable filters.
    """

    sizes: dict[str, int]
    backend: str
    filter_layouts: Callable[[], dict[str, tuple[int, int]]] = field(default=dict)


Builder = Callable[[RegularizerConfig, StrategyInputs], GradientRegularizer]


def _l0_exp(cfg: L0ExpConfig, inputs: StrategyInputs) -> GradientRegularizer:
    alphas = layer_alphas(inputs.sizes, cfg.alpha0, cfg.layer_scaling)
    return L0ExpRegularizer(inputs.backend, alphas, cfg.beta, cfg.alpha2, cfg.gradient_path)


def _l2(cfg: RegularizerConfig, inputs: StrategyInputs) -> GradientRegularizer:
    return L0ExpRegularizer(inputs.backend, dict.fromkeys(inputs.sizes, 0.0), 0.0, cfg.alpha2, cfg.gradient_path)


def _none(cfg: RegularizerConfig, inputs: StrategyInputs) -> GradientRegularizer:
    return GradientRegularizer(inputs.backend, cfg.gradient_path)


def _grad_count(cfg: GradCountConfig, inputs: StrategyInputs) -> GradientRegularizer:
    from sparsetrain.regularizers.grad_count import GradCountRegularizer

    return GradCountRegularizer(inputs.backend, cfg, inputs.filter_layouts())


REGULARIZERS: dict[str, Builder] = {"l0_exp": _l0_exp, "l2": _l2, "none": _none, "grad_count": _grad_count}


def register_regularizer(settings: type[RegularizerConfig], build: Builder) -> None:
    """Add a strategy: `regularizer.name=<settings' name>` then loads into `settings` and trains with
    `build(settings_instance, inputs)`.

    Raises:
        ValueError: the name is already taken by another settings class.
    """
    register_regularizer_settings(settings)
    REGULARIZERS[strategy_key(settings)] = build


def build_regularizer(cfg: RegularizerConfig, inputs: StrategyInputs) -> GradientRegularizer:
    """The strategy object for settings `cfg` (the pipeline chooses which settings each phase gets).

    Raises:
        ConfigError: no builder is registered under `cfg.name`.
    """
    if cfg.name not in REGULARIZERS:
        known = ", ".join(REGULARIZERS)
        raise ConfigError(f"regularizer.name: no strategy registered as {cfg.name!r} (known: {known})")
    return REGULARIZERS[cfg.name](cfg, inputs)
