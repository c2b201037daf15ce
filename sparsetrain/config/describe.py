"""The config schema as text: every field with its dotted path, type, default and description.

Used by `sparsetrain config --schema` and by the loader to suggest the closest valid key for a misspelt one.
"""

from __future__ import annotations

import difflib
import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


@dataclass(frozen=True)
class FieldRow:
    """One leaf field of the schema."""

    path: str  # dotted, e.g. "regularizer.beta"
    type: str  # e.g. "float", "adam|adamw|sgd", "int | None"
    default: str  # the default as YAML would show it, "(required)" when there is none
    description: str


def _type_text(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin in (list, tuple, set):
        return f"list[{', '.join(_type_text(a) for a in args if a is not Ellipsis)}]"
    if origin is dict:
        return f"dict[{', '.join(_type_text(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(field: Any) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    else:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if not isinstance(value, BaseModel) else ""


def _section(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def schema_rows(model: type[BaseModel], prefix: str = "") -> list[FieldRow]:
    """Every leaf field of `model` (sections are walked recursively), in declaration order."""
    rows = []
    for name, field in model.model_fields.items():
        section = _section(field.annotation)
        if section is not None:
            rows.extend(schema_rows(section, f"{prefix}{name}."))
            continue
        rows.append(FieldRow(f"{prefix}{name}", _type_text(field.annotation), _default_text(field),
                             field.description or ""))
    return rows


def format_schema(rows: list[FieldRow], width: int = 120) -> str:
    """Rows as aligned text: path, type, default on one line, the description indented below."""
    lines = []
    for row in rows:
        lines.append(f"{row.path}  ({row.type}, default {row.default})")
        if row.description:
            lines.append(f"    {row.description}")
    return "\n".join(lines)


def section_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted paths of every section (nested config model) of `model`."""
    paths = []
    for name, field in model.model_fields.items():
        section = _section(field.annotation)
        if section is not None:
            paths.append(f"{prefix}{name}")
            paths.extend(section_paths(section, f"{prefix}{name}."))
    return paths


def suggestion(key: str, candidates: list[str]) -> str:
    """' (did you mean X?)' for the candidate path closest to `key`, or '' when none is close.

    A key whose section exists is matched against that section's fields only; otherwise whole paths are compared.
    """
    section, _, leaf = key.rpartition(".")
    siblings = {c.rpartition(".")[2]: c for c in candidates if c.rpartition(".")[0] == section}
    if section and siblings:
        match = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.7)
        return f" (did you mean {siblings[match[0]]}?)" if match else ""
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.75)
    if not match:
        leaves = {c.rpartition(".")[2]: c for c in candidates}
        close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.8)
        match = [leaves[close[0]]] if close else []
    return f" (did you mean {match[0]}?)" if match else ""
