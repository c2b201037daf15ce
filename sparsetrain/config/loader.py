"""Load YAML recipes (with `base:` inheritance), apply dotted `key=value` overrides, validate into RunConfig."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sparsetrain.arguments import string_list
from sparsetrain.config.bounds import BOUND_ERRORS, bound_error
from sparsetrain.config.describe import schema_rows, section_paths, suggestion
from sparsetrain.config.schema import RunConfig
from sparsetrain.config.strategies import Strategy, variants_of
from sparsetrain.errors import ConfigError, InputError
from sparsetrain.model_imports import import_models
from sparsetrain.model_names import check_model_name

# Keys users bring from other tools' configs, with where that setting comes from here (said for an unknown key).
KEY_HINTS = {
    "model.num_classes": "the class count comes from the data (its labels, or an ImageFolder tree's class folders); "
                         "for a model.checkpoint with other classes set model.reset_head=true",
    "model.in_chans": "input channels come from the data; data.in_chans sets them (1: gray, 3: RGB)",
    "model.img_size": "the input size comes from the data; data.image_size resizes images",
}

# A DeepSpeed JSON (`deepspeed=ds.json`, `deepspeed.config=ds.json`) is not read: where its settings go instead
DEEPSPEED_JSON_HINT = ("a DeepSpeed config JSON is not taken: sparsetrain writes DeepSpeed's config from its "
                       "deepspeed.* keys (zero_optimization.stage -> deepspeed.zero_stage, bf16 -> "
                       "deepspeed.precision=bf16, offload_optimizer -> deepspeed.offload_optimizer=cpu, "
                       "gradient_accumulation_steps -> deepspeed.gradient_accumulation_steps, train_batch_size -> "
                       "train.batch_size; the micro-batch is derived; README \"DeepSpeed settings\")")
# why deepspeed.precision refuses a value DeepSpeed itself takes
PRECISION_REASONS = dict.fromkeys(("fp16", "float16", "half"), "DeepSpeed's fp16 (loss scaling) is not taken; bf16 "
                                  "(fp32 masters, no loss scaling) is the reduced precision here")

# DeepSpeed config options users bring from their own DeepSpeed JSON, under `deepspeed:`: what sparsetrain has instead
# (its `deepspeed_config` derives DeepSpeed's JSON from these settings), or that it does not take the option.
DEEPSPEED_OPTIONS = {
    "offload_param": "DeepSpeed's ZeRO-3 parameter offload, which sparsetrain does not take "
                     "(deepspeed.offload_optimizer=cpu offloads the optimizer state)",
    "stage": "DeepSpeed's zero_optimization.stage is deepspeed.zero_stage here",
    "zero_optimization": "DeepSpeed's zero_optimization section is deepspeed.zero_stage, deepspeed.offload_optimizer "
                         "and deepspeed.param_persistence_threshold here",
    "stage3_param_persistence_threshold": "it is deepspeed.param_persistence_threshold here",
    # a key of sparsetrain's own, met only nested as a ds_config.json nests it (zero_optimization.offload_optimizer)
    "offload_optimizer": "it is deepspeed.offload_optimizer=cpu here (ZeRO >= 1)",
    "bf16": "DeepSpeed's bf16 section is deepspeed.precision=bf16 here",
    "fp16": "DeepSpeed's fp16 (loss scaling) is not taken: deepspeed.precision is fp32 or bf16",
    **dict.fromkeys(("config", "config_file", "deepspeed_config", "config_path", "json"), DEEPSPEED_JSON_HINT),
    "train_batch_size": "the global batch size is train.batch_size",
    "train_micro_batch_size_per_gpu": "sparsetrain derives it: train.batch_size / (ranks x "
                                      "deepspeed.gradient_accumulation_steps)",
    "activation_checkpointing": "DeepSpeed's activation checkpointing is not taken: train.grad_checkpointing uses "
                                "timm's",
    "optimizer": "DeepSpeed's optimizer section is not taken: optim.name, optim.lr, ... set the optimizer",
    "scheduler": "DeepSpeed's scheduler section is not taken: optim.schedule and optim.warmup_steps set it",
    **dict.fromkeys(("overlap_comm", "contiguous_gradients", "reduce_bucket_size", "allgather_bucket_size",
                     "reduce_scatter", "round_robin_gradients", "sub_group_size", "stage3_max_live_parameters",
                     "stage3_max_reuse_distance", "stage3_prefetch_bucket_size"),
                    "a DeepSpeed ZeRO tuning option sparsetrain does not take (DeepSpeed's default is used)"),
}
_SECTION_KEYS_SHOWN = 10  # keys of a section listed when none is close to an unknown one


class DuplicateKeyError(yaml.MarkedYAMLError):
    """A mapping that gives one key twice (PyYAML keeps the last silently, dropping the first's settings)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (`optim:` twice, `{lr: 0.01, lr: 0.1}`)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Raises DuplicateKeyError at the second occurrence of a key (its line and column in problem_mark)."""
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)  # merge keys (<<: *anchor) may be overridden by the mapping's own keys
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, Hashable):
                    continue  # the base class refuses it ("found unhashable key")
                if key in first_line:
                    raise DuplicateKeyError(None, None, f"duplicate key {key!r} (first given at line "
                                            f"{first_line[key]}; YAML would keep only the last, dropping the "
                                            "settings of the first); give each key once", key_node.start_mark)
                first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """Parse YAML like `yaml.safe_load`, but a key given twice in one mapping raises DuplicateKeyError."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def _read_text(path: Path) -> str:
    """The recipe's text; ConfigError naming the file when it is missing, a folder, unreadable or not UTF-8 text."""
    if path.is_dir():
        run = path / "config.yaml"
        hint = f"; a run directory's recipe is {run}" if run.is_file() else " such as configs/quickstart.yaml"
        raise ConfigError(f"config: {path} is a folder; expected a YAML recipe file{hint}")
    if not path.is_file():
        raise ConfigError(f"config: file not found: {path}")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config: {path} is not a YAML recipe (byte {err.start} is not UTF-8 text: a binary file?); "
                          "expected a YAML text file such as configs/quickstart.yaml") from None
    except OSError as err:
        raise ConfigError(f"config: cannot read {path} ({err.strerror or err})") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    text = _read_text(path)
    try:
        data = load_yaml(text)
    except DuplicateKeyError as err:
        mark = err.problem_mark
        raise ConfigError(f"config: {path}:{mark.line + 1}: {err.problem}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        if mark is not None:  # where the parser stopped, as file:line:column like compilers print it
            raise ConfigError(f"config: {path}:{mark.line + 1}:{mark.column + 1}: not valid YAML "
                              f"({getattr(err, 'problem', None) or str(err).splitlines()[0]})") from None
        raise ConfigError(f"config: {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    if data is None:  # an empty or comment-only file would silently run the built-in defaults (and their out_dir)
        raise ConfigError(f"config: empty config file {path} (no settings; give a recipe such as "
                          "configs/quickstart.yaml, or no file for the built-in defaults)")
    if not isinstance(data, dict):
        raise ConfigError(f"config: {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `update` into a copy of `base` (mappings merge, everything else replaces)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def merge_recipe(base: dict[str, Any], child: dict[str, Any], model: type[BaseModel] | None = RunConfig
                 ) -> dict[str, Any]:
    """`deep_merge` of a recipe onto its `base:`, except that a strategy section (`regularizer`, `prune`: any section
    chosen by a key, `strategies.variants_of`) whose child names another strategy than the base's replaces the base's
    section: the base's settings of the old strategy would not be read by the new one.

    Args:
        base: The base recipe's raw mapping (its own `base:` chain already merged).
        child: The deriving recipe's raw mapping.
        model: The schema class of this level (sections are walked into; None below unknown keys: plain merge).
    """
    merged = dict(base)
    for key, value in child.items():
        old = merged.get(key)
        field = model.model_fields.get(key) if model is not None else None
        section = field.annotation if field is not None and isinstance(field.annotation, type) else None
        section = section if section is not None and issubclass(section, BaseModel) else None
        if isinstance(value, dict) and isinstance(old, dict):
            merged[key] = value if _switches(section, old, value) else merge_recipe(old, value, section)
        else:
            merged[key] = value
    return merged


def _switches(section: type[BaseModel] | None, base: dict[str, Any], child: dict[str, Any]) -> bool:
    """Whether `child` names another strategy of the strategy section `section` than `base` (its default if unset)."""
    if section is None or not issubclass(section, Strategy) or not variants_of(section) or section.KEY not in child:
        return False
    return child[section.KEY] != base.get(section.KEY, section.model_fields[section.KEY].default)


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe and the chain of `base:` recipes it derives from (`base:` relative to the file; every path
    setting, relative to the current directory, `sparsetrain.paths`), merged by `merge_recipe` (a section naming
    another strategy replaces the base's)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"base: circular inheritance through {path}")
    data = _read_yaml(path)
    base_name = data.pop("base", None)
    if base_name is None:
        return data
    if not isinstance(base_name, str) or not base_name.strip():
        raise ConfigError(f"base: expected one recipe file name (relative to its folder) in {path}, got "
                          f"{base_name!r}; e.g. base: base.yaml")
    base_path = path.parent / base_name
    if not base_path.exists():
        raise ConfigError(f"base: file not found: {base_path} (the base of {path})")
    base = load_raw(base_path, (*_seen, path))
    return merge_recipe(base, data)


def _leaf_paths(model: type[BaseModel]) -> dict[str, list[str]]:
    """Map every leaf field name to the dotted paths where it occurs in the schema (strategy sections included)."""
    leaves: dict[str, list[str]] = {}
    for row in schema_rows(model):
        leaves.setdefault(row.path.rpartition(".")[2], []).append(row.path)
    return leaves


def resolve_key(key: str) -> str:
    """Expand a bare leaf name (e.g. `alpha0`) to its dotted path when it is unique in the schema."""
    if "." in key or key in RunConfig.model_fields:
        return key
    paths = _leaf_paths(RunConfig).get(key, [])
    if len(paths) == 1:
        return paths[0]
    if len(paths) > 1:
        raise ConfigError(f"{key}: ambiguous override, use one of {', '.join(paths)}")
    raise ConfigError(f"{key}: unknown config key{suggestion(key, all_paths())}")


def all_paths() -> list[str]:
    """Dotted paths of every field and section of the run config."""
    return [row.path for row in schema_rows(RunConfig)] + section_paths(RunConfig)


def parse_value(text: str) -> Any:
    """Parse an override value with YAML rules (numbers, bools, null, lists, mappings); text that is not YAML stays
    a string.

    Raises:
        DuplicateKeyError: a mapping value gives one key twice (`optim={lr: 0.01, lr: 0.1}`).
    """
    try:
        return load_yaml(text)
    except DuplicateKeyError:
        raise
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, text = item.split("=", 1)
        if not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value (the key is empty)")
        parts = resolve_key(key.strip()).split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {part} is not a section")
            node = child
        try:
            node[parts[-1]] = parse_value(text)
        except DuplicateKeyError as err:
            raise ConfigError(f"override {item!r}: {err.problem}") from None
    return data


def _glued_key(loc: tuple, value: Any) -> str | None:
    """The hint for `{name:grad_count}`: YAML reads `key:value` without a space as one key with no value."""
    key = str(loc[-1])
    if value is not None or ":" not in key:
        return None
    section = ".".join(str(p) for p in loc[:-1]) or "config"
    name, _, setting = key.partition(":")
    return (f"{section}: `{key}` is read as one key (YAML needs a space after the colon); write "
            f"`{{{name}: {setting}}}`")


def _elsewhere(field: str) -> str:
    """'; epochs is set at phases.dense.epochs, phases.sparsify.epochs or phases.finetune.epochs' when the unknown
    key's last part is a field of other sections (or phases), else ''."""
    leaf = field.rpartition(".")[2]
    paths = [p for p in _leaf_paths(RunConfig).get(leaf, []) if p != field]
    if not paths:
        return ""
    listed = paths[0] if len(paths) == 1 else f"{', '.join(paths[:-1])} or {paths[-1]}"
    return f"; {leaf} is set at {listed}"


def _closest_in_section(field: str) -> str:
    """'; closest keys of deepspeed: offload_optimizer' for an unknown key of a known section (its keys within a
    loose match, at most three), or '; deepspeed takes: KEY, ...' when none is close; '' at the top level."""
    section, _, leaf = field.rpartition(".")
    keys = [p.rpartition(".")[2] for p in all_paths() if p.rpartition(".")[0] == section]
    if not section or not keys:
        return ""
    close = difflib.get_close_matches(leaf, keys, n=3, cutoff=0.5)
    if close:
        return f"; closest key{'s' * (len(close) > 1)} of {section}: {', '.join(close)}"
    more = ", ..." if len(keys) > _SECTION_KEYS_SHOWN else ""
    return f"; {section} takes: {', '.join(keys[:_SECTION_KEYS_SHOWN])}{more}"


def _empty_value(field: str) -> str:
    """The error for a required value left empty (`model.name=`, or `name:` with nothing after it in YAML)."""
    row = next((r for r in schema_rows(RunConfig) if r.path == field), None)
    expected = f"; expected {row.type}, e.g. the default {row.default}" if row else ""
    return f"{field}: empty value (read as null){expected}"


def _not_a_list(field: str, value: Any) -> str:
    """The error for a scalar where a list is expected (`deploy.formats=onnx`), with the list syntax."""
    items = ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
    leaf = field.rpartition(".")[2]
    return f"{field}: expected a list (got {value!r}): write {field}=[{items}] (in YAML: {leaf}: [{items}])"


def _deepspeed_row(field: str, value: Any) -> tuple[str, Any, str] | None:
    """(key, its value, hint) of the most deeply nested DeepSpeed option in an unknown `deepspeed.*` key, for keys
    nested as a ds_config.json nests them (`deepspeed.zero_optimization.offload_param.device=cpu` is the
    `offload_param` row, not the `zero_optimization` section's); None when no part of it is in DEEPSPEED_OPTIONS.

    Args:
        field: The unknown key's dotted path, e.g. `deepspeed.zero_optimization`.
        value: What it is set to (a mapping for a nested key).
    """
    if isinstance(value, dict):
        for key, setting in value.items():
            if row := _deepspeed_row(f"{field}.{key}", setting):
                return row
    leaf = field.rpartition(".")[2]
    return (field, value, DEEPSPEED_OPTIONS[leaf]) if leaf in DEEPSPEED_OPTIONS else None


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "config"
    value = first.get("input")
    shown = "" if isinstance(value, dict) or first["type"] == "missing" else f" (got {value!r})"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        shown = shown.replace(" (got ", " (set to ", 1)  # the key's value, not a key
        glued = _glued_key(first["loc"], value)
        if glued:
            return glued
        if field in KEY_HINTS:
            return f"{field}: unknown key{shown}: {KEY_HINTS[field]}"
        if field.startswith("deepspeed.") and (row := _deepspeed_row(field, value)):
            key, setting, hint = row
            shown = "" if isinstance(setting, dict) else f" (set to {setting!r})"
            return f"{key}: unknown key{shown}: {hint}"
        guess = suggestion(field, all_paths())
        return f"{field}: unknown key{guess}{shown}{'' if guess else _elsewhere(field) or _closest_in_section(field)}"
    if value is None and first["type"].endswith(("_type", "literal_error", "enum")) and first["loc"]:
        return _empty_value(field)
    if field == "deepspeed" and first["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return f"deepspeed: expected a mapping of deepspeed.* settings{shown}; {DEEPSPEED_JSON_HINT}"
    reason = PRECISION_REASONS.get(str(value).lower()) if field == "deepspeed.precision" else None
    if reason:
        return f"{field}: {message}{shown}: {reason}"
    if first["type"] == "list_type" and isinstance(value, str | int | float | bool | tuple):
        return _not_a_list(field, value)
    if first["type"] in BOUND_ERRORS and first["loc"]:
        return bound_error(RunConfig, first)
    if not first["loc"] or message.startswith((f"{field}:", f"{field}.")):
        return message  # cross-field checks already name their field
    return f"{field}: {message}{shown}"


def validate(data: dict[str, Any], *, plan_only: bool = False, overrides: list[str] | None = None) -> RunConfig:
    """Validate a raw mapping into a RunConfig, raising a one-line ConfigError on the first problem.

    `plan_only` (`run --dry-run`, which reads no data) skips the checks that only matter when data is read
    (data.path of on-disk sources). `overrides` (the `key=value` items applied to `data`) tell the hints what the
    user chose on the command line, e.g. `prune.rule=X` on a recipe of another rule."""
    context = {"plan_only": plan_only, "overrides": override_keys(overrides or [])}
    try:
        return RunConfig.model_validate(data, context=context)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def override_keys(overrides: list[str]) -> frozenset[str]:
    """The dotted keys `key=value` overrides set (bare leaf names expanded); items without `=` are skipped."""
    return frozenset(resolve_key(item.split("=", 1)[0].strip()) for item in overrides if "=" in item)


def load_config(path: str | Path | None, overrides: list[str] | None = None, *, plan_only: bool = False) -> RunConfig:
    """Load a recipe, apply `key=value` overrides, validate, and import `model.imports` (so `model.name` may name a
    model they register with timm).

    Args:
        path: A YAML recipe (its `base:` chain is read too); None = the built-in defaults.
        overrides: Dotted `key=value` items, as on the command line (`["phases.dense.epochs=1", "alpha0=1e-5"]`);
            a list or tuple (a single string is refused, not read one character at a time).
        plan_only: Skip the checks that only matter when data is read (`run --dry-run`).

    Returns:
        The validated `RunConfig` (`config_to_dict` gives it as plain data).

    Raises:
        InputError: one line naming the field and what was expected (exit code 2 on the CLI): `path` not a str, a
            Path or None, `overrides` not a list of strings, `ConfigError` (one
            of them) for the recipe's and overrides' values, `model.imports: cannot import ...` for an entry that
            raised while imported, `model.name: unknown timm model ...` for a name timm does not know once the
            imports ran (as `sparsetrain config` refuses it).
    """
    if path is not None and not isinstance(path, str | os.PathLike):  # Path(5) is a TypeError, not bad input
        hint = "; a mapping of settings is run_pipeline's cfg" if isinstance(path, Mapping) else ""
        raise InputError(f"path: expected a recipe file (str or Path) or None, got {type(path).__name__} "
                         f"{path!r:.80}{hint}")
    data = load_raw(path) if path is not None else {}
    overrides = [] if overrides is None else string_list(overrides, "overrides", "'key=value' strings")
    return _with_models(validate(apply_overrides(data, overrides), plan_only=plan_only, overrides=overrides))


def as_run_config(cfg: RunConfig | Mapping[str, Any]) -> RunConfig:
    """`cfg` as a RunConfig: a RunConfig as it is, a mapping of a recipe's settings (`{"out_dir": "runs/x",
    "phases": {"dense": {"epochs": 1}}}`, or `config_to_dict` of a config) validated as `load_config` validates a
    recipe (no `base:`: a mapping is the whole recipe).

    Raises:
        InputError: `cfg` is neither (one line naming `cfg`); ConfigError, ...: as `load_config` for a mapping.
    """
    if isinstance(cfg, RunConfig):
        return cfg
    if isinstance(cfg, Mapping):
        return _with_models(validate(dict(cfg)))
    raise InputError(f"cfg: expected a RunConfig (from load_config) or a mapping of a recipe's settings, got "
                     f"{type(cfg).__name__} {cfg!r:.80}")


def _with_models(config: RunConfig) -> RunConfig:
    """`config` after importing its `model.imports` and checking that timm then knows `model.name`."""
    import_models(config.model.imports)
    check_model_name(config.model.name)
    return config


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The resolved config as plain JSON-able data (written to the run dir, W&B and checkpoints)."""
    return json.loads(config.model_dump_json())


def save_resolved(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
