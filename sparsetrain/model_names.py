"""`model.name` checked against timm's registry (sparsetrain's own models and the user's `model.imports` included).

A leaf module that imports neither torch nor timm at module level: the config loader checks a name through it, and
a name of sparsetrain's own models (`OWN_MODELS`) is accepted without importing timm or the model definitions (which
import torch, ~3 s), so a config error is reported in well under a second. Any other name is looked up in timm's
registry, which imports timm and registers sparsetrain's models first.
"""

from __future__ import annotations

import difflib

from sparsetrain.errors import InputError

# The names sparsetrain/models registers with timm (`timm.list_models(module=list(sparsetrain.models.OWN_MODULES))`;
# tests/core/test_models.py checks the two agree).
OWN_MODELS = ("lenet300_100", "lenet5", "lraspp_mobilenetv3_large_100", "lraspp_mobilenetv3_small_100", "unet",
              "unet_small", "unet_tiny")


def check_model_name(name: str) -> None:
    """Refuse a name timm does not know, suggesting the closest timm names (difflib over the ~1,400 of
    `timm.list_models()`, ~10 ms) and listing sparsetrain's own models. One of `OWN_MODELS` passes without importing
    timm.

    Raises:
        InputError: `model.name: unknown timm model ...`.
    """
    if name in OWN_MODELS:
        return
    import timm

    import sparsetrain.models  # registers sparsetrain's timm models

    if timm.is_model(name):
        return
    closest = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    guess = f"closest: {', '.join(closest)}" if closest else "no timm name is close"
    own = ", ".join(timm.list_models(module=list(sparsetrain.models.OWN_MODULES)))
    raise InputError(f"model.name: unknown timm model {name!r} ({guess}; sparsetrain's own: {own})")
