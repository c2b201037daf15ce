"""Channel spaces and activation layouts for the channel-dependency analysis (`_analysis.py`).

A *space* is a set of channels opened by one producer (a conv or linear output, the model input, the output of an
op that cannot be followed); spaces proven to be the same channels are merged in a union-find, whose roots become
the `ChannelGroup`s.
"""

from __future__ import annotations

from dataclasses import dataclass

from sparsetrain.structural.graph import ChannelGroup, ChannelSlice


@dataclass(frozen=True)
class Layout:
    """Channel layout of an activation: `spaces` concatenated along axis `cdim` of an `ndim`-d tensor."""

    spaces: tuple[int, ...]
    expand: tuple[int, ...]
    zero: tuple[bool, ...]
    cdim: int
    ndim: int


@dataclass(frozen=True)
class ParamRef:
    """A parameter/buffer (or a reshape of it); `cur` is the axis holding its only non-1 dim `pdim`."""

    module: str
    param: str
    shape: tuple[int, ...]
    pdim: int | None
    cur: int | None
    ndim: int


class Spaces:
    """Union-find over channel spaces, carrying sizes, slices and block reasons per root."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.name: list[str] = []
        self.reasons: list[list[str]] = []
        self.slices: list[list[tuple[int, str, ChannelSlice]]] = []  # (graph order, "p"/"c", slice)
        self._owner: dict[tuple, int] = {}  # (module, param, dim, offset) -> space: shared weights couple spaces

    def new(self, size: int, name: str, reason: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.name.append(name)
        self.reasons.append([reason] if reason else [])
        self.slices.append([])
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int, where: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            reason = f"'{where}' combines channel counts {self.size[ra]} and {self.size[rb]}"
            self.block(ra, reason)
            self.block(rb, reason)
            return
        lo, hi = min(ra, rb), max(ra, rb)  # the older space keeps the name: ids follow graph order
        self.parent[hi] = lo
        self.reasons[lo] += self.reasons[hi]
        self.slices[lo] += self.slices[hi]

    def block(self, i: int, reason: str) -> None:
        self.reasons[self.find(i)].append(reason)

    def add(self, i: int, role: str, s: ChannelSlice, order: int) -> None:
        key = (s.module, s.param, s.dim, s.offset)
        if key in self._owner:  # a module called twice: both call sites index the same channels
            self.union(self._owner[key], i, s.qualname)
        self._owner.setdefault(key, i)
        self.slices[self.find(i)].append((order, role, s))

    def groups(self) -> list[ChannelGroup]:
        out = []
        for root in sorted({self.find(i) for i in range(len(self.parent))}):
            first: dict[tuple[str, ChannelSlice], int] = {}
            for order, role, s in sorted(self.slices[root], key=lambda t: t[0]):
                first.setdefault((role, s), order)
            producers = [s for role, s in first if role == "p"]
            consumers = [s for role, s in first if role == "c"]
            gid = next((s.module for s in producers if s.kind == "filter"), self.name[root])
            reasons = list(dict.fromkeys(self.reasons[root]))
            if not producers and not reasons:  # nothing to zero: removal could not match masking
                reasons = [f"no layer produces the channels of '{self.name[root]}'"]
            out.append(ChannelGroup(gid, self.size[root], producers, consumers, not reasons, "; ".join(reasons)))
        return out
