"""Checks of the Python API's arguments that a type hint alone does not catch (README "Python API")."""

from __future__ import annotations

from sparsetrain.errors import InputError


def string_list(value: object, argument: str, items: str) -> list[str]:
    """`value` as a list of strings: a list or tuple whose items are all `str`.

    A single string is refused, not iterated: `load_config(path, "optim.lr=0.1")` read it one character at a time
    (`override 'o': expected key=value`), `run_pipeline(cfg, phases="finetune")` as six one-letter phases.

    Args:
        value: What the caller passed.
        argument: The parameter's name, e.g. `overrides`.
        items: What the list holds, e.g. `'key=value' strings` (for the message).

    Raises:
        InputError: one line naming `argument` (and the item's index for a non-string item).
    """
    if isinstance(value, str | bytes):
        raise InputError(f"{argument}: expected a list of {items}, got the string {value!r}; write [{value!r}]")
    if not isinstance(value, list | tuple):
        raise InputError(f"{argument}: expected a list of {items}, got {type(value).__name__} {value!r:.80}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise InputError(f"{argument}[{index}]: expected one of the {items}, got {type(item).__name__} "
                             f"{item!r:.80}")
    return list(value)
