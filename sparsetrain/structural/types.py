"""Public types of structural pruning; a leaf module (imports nothing of sparsetrain but `sparsetrain.errors`).

Vocabulary (kept across `sparsetrain.structural`, see docs/structural.md):
- *channel*: the unit that structural pruning keeps or removes (one feature map of a conv, one feature of a linear).
- *filter*: the conv/linear weight row that produces a channel.
- *channel group*: channels that are the same channels everywhere they appear (a conv's outputs, its BN, the
  depthwise conv filtering them, every tensor added to them in a residual sum, the SE gate multiplying them).
- *unit*: what a group removes at once; one channel, or a block of channels when a layer couples channels in
  blocks (a group of a grouped conv, an attention head, a GroupNorm group).
- *producers* / *consumers*: parameter slices indexed by the group's units on the output side (filters, biases,
  norm parameters and statistics, layer scales) / the input columns of the layers that read the group.
- *zero* (mask) a unit: clear its producer slices. *remove* it: delete its producer and consumer slices.
- *exact*: removal equals zeroing; a group coupled through a layer that normalizes over channels (LayerNorm)
  is *inexact*: removing a channel changes the statistics of the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sparsetrain.errors import InputError

__all__ = ["SLICE_KINDS", "ChannelGroup", "ChannelSlice", "StructuralPruningError"]

SLICE_KINDS = ("filter", "bias", "norm", "stat", "scale", "input")


class StructuralPruningError(InputError, RuntimeError):
    """A model, layer or channel group that structural pruning cannot handle (exactly, or at all)."""


@dataclass(frozen=True)
class ChannelSlice:
    """The part of one parameter (or buffer) that a channel group indexes.

    Unit `u` of the group owns positions `offset + r * stride + u * expand + j` (`0 <= r < repeat`,
    `0 <= j < expand`) along `dim` of `module.param`; `expand > 1` when a unit is a block of channels (grouped
    conv group, attention head) or after a flatten merged each channel with spatial positions; `repeat > 1` when
    a unit is the same channel(s) of each of `repeat` equal blocks `stride` positions apart (a grouped conv
    narrowed inside every group: unit u is channel u of every group).

    Attributes:
        module: Qualified module name ("" for the root module).
        param: Attribute name of the tensor on that module ("weight", "bias", "running_mean", "gamma").
        dim: Dimension of the tensor indexed by the unit.
        offset: First position of this group along `dim` (non-zero for consumers of a concatenation).
        expand: Consecutive positions per unit.
        kind: "filter" (conv/linear weight, output side), "bias", "norm" (norm scale and shift), "stat" (running
            statistics, divisors: sliced on removal, never zeroed), "scale" (an elementwise parameter such as
            layer scale) or "input" (consumer weight columns).
        repeat: Blocks a unit repeats in (1: one contiguous run of `expand` positions).
        stride: Positions from one block to the next (used when `repeat > 1`).
    """

    module: str
    param: str
    dim: int
    offset: int = 0
    expand: int = 1
    kind: str = "filter"
    repeat: int = 1
    stride: int = 0

    @property
    def width(self) -> int:
        """Positions per unit along `dim`."""
        return self.repeat * self.expand

    @property
    def qualname(self) -> str:
        """Dotted name of the tensor, as in `model.state_dict()`."""
        return f"{self.module}.{self.param}" if self.module else self.param

    def positions(self, units: list[int]) -> list[int]:
        """Positions along `dim` owned by the given units."""
        return self.index(torch.as_tensor(units, dtype=torch.long)).tolist()

    def index(self, units: torch.Tensor) -> torch.Tensor:
        """Positions along `dim` owned by the given units (int64 tensor [n]): [n * width], unit-major, so that
        `.view(n, width)` gives each unit's positions in a row."""
        within = (torch.arange(self.repeat).unsqueeze(1) * self.stride + torch.arange(self.expand)).flatten()
        return (self.offset + units.long().unsqueeze(1) * self.expand + within).flatten()


@dataclass
class ChannelGroup:
    """Units (channels or blocks of channels) that must be kept or removed together.

    Attributes:
        id: Stable name: the first module (in graph order) whose filters produce the group (with a `[start:stop]`
            channel range when several groups share it), else a node name.
        num_channels: Units in the group (channels, or blocks of channels when `unit_channels > 1`).
        producers: Output-side slices (see `ChannelSlice`), in graph order.
        consumers: Input-side slices of the layers that read the group, in graph order.
        prunable: Whether units of this group may be removed.
        reason: Why not, when `prunable` is False ("; "-joined when several reasons apply).
        inexact: Why removal would not equal zeroing (layers normalizing over the channels); empty when exact.
            Such groups are removed only on request (`allow_inexact`).
        unit_channels: Channels per unit in the group's filters (1 for plain channels; a block size, or the group
            count of a grouped conv narrowed inside its groups).
    """

    id: str
    num_channels: int
    producers: list[ChannelSlice] = field(default_factory=list)
    consumers: list[ChannelSlice] = field(default_factory=list)
    prunable: bool = True
    reason: str = ""
    inexact: list[str] = field(default_factory=list)
    unit_channels: int = 1

    @property
    def exact(self) -> bool:
        """Removal equals zeroing."""
        return not self.inexact
