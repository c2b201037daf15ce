"""A numeric config value outside its field's bounds, said as what is expected: `data.image_size: expected an int in
4..4096 or null, got 100000` (pydantic says only the bound crossed: `Input should be less than or equal to 4096`)."""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from sparsetrain.config.strategies import variants_of

# pydantic's error type of a crossed bound -> the constraint attribute it reports in the error's ctx
BOUND_ERRORS = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}
_SYMBOLS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def bound_error(root: type[BaseModel], error: dict[str, Any]) -> str:
    """The one-line message of a pydantic bound error (`error["type"]` in BOUND_ERRORS) on a value of `root`.

    Both bounds of the value, its kind (int or number) and whether null is taken come from the schema (a field, or
    the value type of a mapping field such as `prune.layer_sparsity`); where the schema has no type for the location,
    the message gives the one bound the error reports.
    """
    field = ".".join(str(p) for p in error["loc"])
    annotation = _type_at(root, error["loc"])
    bound = BOUND_ERRORS[error["type"]]
    bounds = _bounds(annotation) or {bound: error.get("ctx", {}).get(bound)}
    kinds = _kinds(annotation)
    integer = kinds - {type(None)} == {int}
    nullable = " or null" if type(None) in kinds else ""
    expected = f"{'an int' if integer else 'a number'} {_range(bounds, integer)}{nullable}"
    return f"{field}: expected {expected}, got {error.get('input')}"  # as typed: 1e30, not '1e30'


def _range(bounds: dict[str, Any], integer: bool) -> str:
    """`in 4..4096` for an int between two inclusive bounds, else `> 0 and <= 10`, `>= 1`."""
    shown = {name: int(b) if isinstance(b, float) and b.is_integer() else b for name, b in bounds.items()}
    if integer and "ge" in shown and "le" in shown:
        return f"in {shown['ge']}..{shown['le']}"
    return " and ".join(f"{_SYMBOLS[name]} {shown[name]}" for name in _SYMBOLS if name in shown)


def _bounds(annotation: Any) -> dict[str, Any]:
    """The numeric bounds (`Field(ge=..., le=...)`) an `Annotated` type carries, by constraint name: gt, ge, lt, le;
    empty for a type without them."""
    if get_origin(annotation) is not Annotated:
        return {}
    found = {}
    for item in get_args(annotation)[1:]:
        for constraint in getattr(item, "metadata", [item]):  # a FieldInfo holds its constraints in .metadata
            found.update({name: getattr(constraint, name) for name in _SYMBOLS
                          if getattr(constraint, name, None) is not None})
    return found


def _kinds(annotation: Any) -> set[Any]:
    """The types a value takes: {int}, {float, NoneType}, ... (Annotated and unions unwrapped)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _kinds(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return set().union(*(_kinds(a) for a in get_args(annotation)))
    return {annotation}


def _type_at(root: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The schema type, with its constraints (`Annotated`), of the value at an error location: a field (of any of a
    strategy section's strategies), or a value of a mapping field; None when the schema does not say."""
    model: type[BaseModel] | None = root
    annotation: Any = None
    for part in loc:
        if model is None:  # a key of a mapping field: its value type
            values = [a for a in _kinds(annotation) if get_origin(a) is dict]
            annotation = get_args(values[0])[1] if values else None
            continue
        sections = [*(variant.model_fields for variant in variants_of(model).values()), model.model_fields]
        info = {name: field for fields in sections for name, field in fields.items()}.get(str(part))
        if info is None:
            return None
        annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        model = _section(info.annotation)
    return annotation


def _section(annotation: Any) -> type[BaseModel] | None:
    """The section class of a field (`Section` or `Section | None`), None for a value field."""
    for kind in _kinds(annotation):
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return kind
    return None
