"""Structural (physical) filter removal: channel groups, masking/removal, compressed export, profiling."""

from sparsetrain.structural.export import load_compressed, save_compressed
from sparsetrain.structural.graph import (
    ChannelGroup,
    ChannelSlice,
    StructuralPruningError,
    build_channel_groups,
    producer_weights,
    producer_weights_by_group,
    trace_model,
)
from sparsetrain.structural.profile import profile_model
from sparsetrain.structural.remove import kept_channels, remove_channels, zero_channels

__all__ = [
    "ChannelGroup",
    "ChannelSlice",
    "StructuralPruningError",
    "build_channel_groups",
    "kept_channels",
    "load_compressed",
    "producer_weights",
    "producer_weights_by_group",
    "profile_model",
    "remove_channels",
    "save_compressed",
    "trace_model",
    "zero_channels",
]
