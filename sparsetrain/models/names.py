"""`model.name` checked against timm's registry (sparsetrain's own models and the user's `model.imports` included).

A leaf module (timm, sparsetrain's model definitions, errors): the config loader checks names through it without
importing the model factory, which imports the config schema.
"""

from __future__ import annotations

import difflib

import timm

import sparsetrain.models  # noqa: F401  (registers sparsetrain's timm models)
from sparsetrain.errors import InputError


def check_model_name(name: str) -> None:
    """Refuse a name timm does not know, suggesting the closest timm names (difflib over the ~1,400 of
    `timm.list_models()`, ~10 ms) and listing sparsetrain's own models.

    Raises:
        InputError: `model.name: unknown timm model ...`.
    """
    if timm.is_model(name):
        return
    closest = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    guess = f"closest: {', '.join(closest)}" if closest else "no timm name is close"
    own = ", ".join(timm.list_models(module=list(sparsetrain.models.OWN_MODULES)))
    raise InputError(f"model.name: unknown timm model {name!r} ({guess}; sparsetrain's own: {own})")
