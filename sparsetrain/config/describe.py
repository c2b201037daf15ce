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

from sparsetrain.config.strategies import Strategy, variants_of


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
    if _section(annotation) is not None:  # an optional section: its keys are listed as rows of their own
        return "mapping"
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


def _optional_section(annotation: Any) -> type[BaseModel] | None:
    """The section of a `Section | None` field (off unless given, e.g. data.train_subset), else None."""
    if get_origin(annotation) not in (Union, types.UnionType):
        return None
    sections = [a for a in get_args(annotation) if _section(a) is not None]
    return sections[0] if len(sections) == 1 else None


def _strategy_rows(base: type[Strategy], prefix: str) -> list[FieldRow]:
    """A strategy section: its key with every choice, then each setting once, tagged with the choices reading it."""
    variants = variants_of(base)
    key = base.KEY
    rows = {f"{prefix}{key}": FieldRow(f"{prefix}{key}", "|".join(variants), str(base.model_fields[key].default),
                                       base.model_fields[key].description or "")}
    readers: dict[str, list[str]] = {}
    for choice, settings in variants.items():
        for row in schema_rows(settings, prefix):
            if row.path != f"{prefix}{key}":
                rows.setdefault(row.path, row)
                readers.setdefault(row.path, []).append(choice)
    for path, choices in readers.items():
        if len(choices) < len(variants):
            row = rows[path]
            rows[path] = FieldRow(path, row.type, row.default, f"[{key}={'|'.join(choices)}] {row.description}")
    return list(rows.values())


def schema_rows(model: type[BaseModel], prefix: str = "") -> list[FieldRow]:
    """Every leaf field of `model` (sections are walked recursively, strategy sections over every registered
    strategy), in declaration order."""
    rows = []
    for name, field in model.model_fields.items():
        section = _section(field.annotation)
        if section is not None and variants_of(section):
            rows.extend(_strategy_rows(section, f"{prefix}{name}."))
        elif section is not None:
            rows.extend(schema_rows(section, f"{prefix}{name}."))
        elif (optional := _optional_section(field.annotation)) is not None:
            path = f"{prefix}{name}"
            rows.append(FieldRow(path, _type_text(field.annotation), _default_text(field),
                                 f"{field.description or ''} Keys: {path}.* below.".strip()))
            rows.extend(schema_rows(optional, f"{path}."))
        else:
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
    paths: list[str] = []
    for name, field in model.model_fields.items():
        section = _section(field.annotation)
        if section is None:
            continue
        paths.append(f"{prefix}{name}")
        for variant in variants_of(section).values() or [section]:
            paths.extend(p for p in section_paths(variant, f"{prefix}{name}.") if p not in paths)
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
