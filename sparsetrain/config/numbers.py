"""Numeric config fields refuse booleans: pydantic's lax mode reads `true` / `yes` / `on` (YAML booleans) as 1."""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationInfo, field_validator


def _takes_numbers_only(annotation: Any) -> bool:
    """Whether a field type takes numbers but not booleans: int, float, a Literal of numbers, or a union/Optional of
    them (with strings or None, e.g. `int | Literal["auto"]`); False for bool, Any and anything holding them."""
    if annotation is bool or annotation is Any:
        return False
    if annotation in (int, float):
        return True
    origin = get_origin(annotation)
    if origin is Annotated:
        return _takes_numbers_only(get_args(annotation)[0])
    if origin is Literal:
        values = get_args(annotation)
        return any(type(v) in (int, float) for v in values) and not any(isinstance(v, bool) for v in values)
    if origin in (Union, types.UnionType):
        parts = [a for a in get_args(annotation) if a is not type(None)]
        return any(_takes_numbers_only(a) for a in parts) and not any(_holds_bool(a) for a in parts)
    return False


def _holds_bool(annotation: Any) -> bool:
    """Whether a type (or a part of its union) accepts booleans as such: bool, Any or a Literal of booleans."""
    if annotation is bool or annotation is Any:
        return True
    if get_origin(annotation) is Literal:
        return any(isinstance(v, bool) for v in get_args(annotation))
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_holds_bool(a) for a in get_args(annotation))
    return False


def _bool_at(annotation: Any, value: Any) -> str | None:
    """Where a boolean sits in `value` where `annotation` expects a number: '' for the value itself, '.KEY' for a
    value of a mapping of numbers (`layer_thresholds: {head.weight: true}`), None when there is none."""
    if isinstance(value, bool):
        return "" if _takes_numbers_only(annotation) else None
    if isinstance(value, dict) and get_origin(annotation) is dict:
        value_type = get_args(annotation)[1]
        return next((f".{key}" for key, item in value.items() if _bool_at(value_type, item) == ""), None)
    return None


class NumbersModel(BaseModel):
    """Base of the config sections: a boolean given to a numeric field is an error, not 1 or 0."""

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """Raises ValueError (one line) when `value` holds a boolean where the field expects a number."""
        field = cls.model_fields.get(info.field_name or "")
        where = _bool_at(field.annotation, value) if field is not None else None
        if where is None:
            return value
        hint = "expected a number, not a boolean; YAML reads true/false/yes/no/on/off as booleans"
        if where:  # a mapping's value: the formatter shows no mapping, so name the key and the value here
            raise ValueError(f"{where[1:]}: {hint} (got {value[where[1:]]!r})")
        raise ValueError(hint)
