"""Structural (physical) channel removal: channel groups, layer rules, scoring and selection, masking/removal,
constant folding, dead-unit removal (`dead.py`), compressed export, profiling. Vocabulary: `types.py` and
docs/structural.md."""

from sparsetrain.structural.dead import DeadUnitRemoval, remove_dead_units
from sparsetrain.structural.fold import FoldReport, fold_constant_channels
from sparsetrain.structural.graph import (
    build_channel_groups,
    groups_by_id,
    producer_weights,
    producer_weights_by_group,
)
from sparsetrain.structural.profile import interleaved_latency_ms, interleaved_times_ms, profile_model
from sparsetrain.structural.remove import kept_channels, remove_channels, zero_channels
from sparsetrain.structural.rules import (
    LayerRule,
    register_functional_rule,
    register_layer_rule,
    registered_rules,
    rule_for,
)
from sparsetrain.structural.scoring import (
    BNScale,
    ChannelScore,
    CountRatio,
    L1Norm,
    L2Norm,
    batch_norm_scales,
    build_score,
)
from sparsetrain.structural.selection import ChannelSelection, GroupCount, relative_scores, select_channels
from sparsetrain.structural.serialize import load_pruned_model, save_pruned_model
from sparsetrain.structural.trace import trace_model
from sparsetrain.structural.types import ChannelGroup, ChannelSlice, StructuralPruningError

__all__ = [
    "BNScale",
    "ChannelGroup",
    "ChannelScore",
    "ChannelSelection",
    "ChannelSlice",
    "CountRatio",
    "DeadUnitRemoval",
    "FoldReport",
    "GroupCount",
    "L1Norm",
    "L2Norm",
    "LayerRule",
    "StructuralPruningError",
    "batch_norm_scales",
    "build_channel_groups",
    "build_score",
    "fold_constant_channels",
    "groups_by_id",
    "kept_channels",
    "load_pruned_model",
    "producer_weights",
    "producer_weights_by_group",
    "interleaved_latency_ms",
    "interleaved_times_ms",
    "profile_model",
    "register_functional_rule",
    "register_layer_rule",
    "registered_rules",
    "relative_scores",
    "remove_channels",
    "remove_dead_units",
    "rule_for",
    "save_pruned_model",
    "select_channels",
    "trace_model",
    "zero_channels",
]
