"""Typed configs: schema, YAML loading with inheritance, dotted overrides."""

from sparsetrain.config.loader import ConfigError, config_to_dict, load_config, save_resolved
from sparsetrain.config.schema import RunConfig

__all__ = ["ConfigError", "RunConfig", "config_to_dict", "load_config", "save_resolved"]
