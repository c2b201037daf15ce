"""Channel spaces and activation layouts for the channel-dependency analysis (`_analysis.py`).

A *space* is a set of channels opened by one producer (a conv or linear output, the model input, the output of an
op that cannot be followed). Spaces proven to be the same channels are merged in a union-find whose roots become
the `ChannelGroup`s. Two refinements keep that exact for layers that do not act channel by channel:

- *units*: each space removes channels in blocks of `unit` channels. A grouped conv links block k of its input to
  block k of its output (`link`), which coarsens the units of both roots; every member of a root has the same
  number of units, with its own unit size.
- *interleaving*: a grouped conv narrowed inside its groups removes the same channel(s) of every group, so a unit
  of its input and output spaces is one block of `unit` channels in each of `outer` equal parts of the space
  (`interleave`); a *local* member (`local`) of the same root has one part's width, for the conv's weight columns
  that index a channel inside its group. Interleaved roots are never split.
- *splits*: slicing, `split` or an elementwise op between differently concatenated tensors cuts a space in two
  (`split`); every member of its root is cut at the same unit, and layouts that still name the old space are
  read through `resolve`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from sparsetrain.structural.types import ChannelGroup, ChannelSlice


@dataclass(frozen=True)
class Layout:
    """Channel layout of an activation: `spaces` concatenated along axis `cdim` of an `ndim`-d tensor.

    `expand[i]` positions per channel of space i (> 1 after a flatten merged channels with later axes); `zero[i]`
    whether a zeroed channel of space i is still exactly zero here.
    """

    spaces: tuple[int, ...]
    expand: tuple[int, ...]
    zero: tuple[bool, ...]
    cdim: int
    ndim: int


@dataclass(frozen=True)
class ParamRef:
    """A parameter/buffer (or a reshape of it); `cur` is the axis holding its only non-1 dim `pdim`; `raw` while
    its axes are still the parameter's own (only broadcast or cast), `shape` being the parameter's shape; `fixed`
    says why its channels cannot shrink (a reshape to sizes written in the model's code)."""

    module: str
    param: str
    shape: tuple[int, ...]
    pdim: int | None
    cur: int | None
    ndim: int
    raw: bool = False
    fixed: str = ""


class Spaces:
    """Union-find over channel spaces, carrying sizes, units, slices and block / inexact reasons per root."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []  # channels
        self.unit: list[int] = []  # channels per removable unit (in each part)
        self.outer: list[int] = []  # equal parts a unit repeats in (1: contiguous units)
        self.name: list[str] = []
        self.reasons: list[list[str]] = []  # at roots
        self.inexact: list[list[str]] = []  # at roots
        self.slices: list[list[tuple[int, str, ChannelSlice, int]]] = []  # at roots: (order, "p"/"c", slice, space)
        self.members: list[list[int]] = []  # at roots
        self.parts: dict[int, tuple[int, int]] = {}  # split spaces -> their two parts
        self._owner: dict[tuple, tuple[int, int]] = {}  # (module, param, dim, offset) -> (space, expand)

    def new(self, size: int, name: str, reason: str | None = None, unit: int = 1) -> int:
        i = len(self.parent)
        self.parent.append(i)
        self.size.append(size)
        self.unit.append(unit)
        self.outer.append(1)
        self.name.append(name)
        self.reasons.append([reason] if reason else [])
        self.inexact.append([])
        self.slices.append([])
        self.members.append([i])
        return i

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def units(self, i: int) -> int:
        return self.size[i] // (self.unit[i] * self.outer[i])

    def block(self, i: int, reason: str) -> None:
        self.reasons[self.find(i)].append(reason)

    def mark_inexact(self, i: int, reason: str) -> None:
        self.inexact[self.find(i)].append(reason)

    # ----- coupling ------------------------------------------------------------------------------------------

    def union(self, a: int, b: int, where: str) -> None:
        """Channel k of `a` is channel k of `b`."""
        self.link(a, b, 1, 1, where)

    def link(self, a: int, b: int, per_a: int, per_b: int, where: str) -> None:
        """Block k (`per_a` channels) of `a` is block k (`per_b` channels) of `b`: removed together."""
        ra, rb = self.find(a), self.find(b)
        if self.size[a] * per_b != self.size[b] * per_a:
            reason = f"'{where}' combines channel counts {self.size[a]} and {self.size[b]}"
            self.block(ra, reason)
            self.block(rb, reason)
            return
        if not (self.interleave(a, self.outer[b]) and self.interleave(b, self.outer[a])):
            reason = f"'{where}' couples channels narrowed inside grouped convs of different group counts"
            self.block(ra, reason)
            self.block(rb, reason)
            return
        if ra == rb:
            if self.unit[a] * per_b != self.unit[b] * per_a:
                self.block(ra, f"'{where}' couples the same channels in two different ways")
            return
        k = math.lcm(self.unit[a] // math.gcd(self.unit[a], per_a), self.unit[b] // math.gcd(self.unit[b], per_b))
        fa, fb = k * per_a // self.unit[a], k * per_b // self.unit[b]
        if not (self._can_coarsen(ra, fa) and self._can_coarsen(rb, fb)):
            reason = f"'{where}' couples channels in blocks that do not divide the other layers' channels"
            self.block(ra, reason)
            self.block(rb, reason)
            return
        self._coarsen(ra, fa)
        self._coarsen(rb, fb)
        self._merge(ra, rb)

    def interleave(self, i: int, parts: int) -> bool:
        """Make a unit of `i` the same block of channels in each of `parts` equal consecutive parts of `i` (a
        grouped conv narrowed inside its groups); every member of the root follows. False (nothing changed) when
        the root is interleaved otherwise or its units do not divide into `parts`."""
        if self.outer[i] == parts or parts == 1:
            return True
        root = self.find(i)
        if any(self.outer[m] != 1 for m in self.members[root]) or self.units(root) % parts:
            return False
        for m in self.members[root]:
            self.outer[m] = parts
        return True

    def local(self, i: int) -> int:
        """A new member of `i`'s root, one part of `i` wide: its channel k is channel k of every part of `i`."""
        root = self.find(i)
        j = self.new(self.size[i] // self.outer[i], self.name[i], unit=self.unit[i])
        self.parent[j], self.members[j] = root, []
        self.members[root].append(j)
        return j

    def require_unit(self, i: int, channels: int) -> bool:
        """Coarsen `i`'s root so that its units are whole multiples of `channels` channels of `i`."""
        root = self.find(i)
        factor = math.lcm(self.unit[i], channels) // self.unit[i]
        if not self._can_coarsen(root, factor):
            return False
        self._coarsen(root, factor)
        return True

    def _can_coarsen(self, root: int, factor: int) -> bool:
        return all(self.size[m] % (self.unit[m] * self.outer[m] * factor) == 0 for m in self.members[root])

    def _coarsen(self, root: int, factor: int) -> None:
        for m in self.members[root]:
            self.unit[m] *= factor

    def _merge(self, ra: int, rb: int) -> None:
        lo, hi = min(ra, rb), max(ra, rb)  # the older space keeps the name: ids follow graph order
        self.parent[hi] = lo
        for table in (self.reasons, self.inexact, self.slices, self.members):
            table[lo] += table[hi]
            table[hi] = []

    def add(self, i: int, role: str, s: ChannelSlice, order: int) -> None:
        key = (s.module, s.param, s.dim, s.offset)
        if key in self._owner:  # a module called twice: both call sites index the same channels
            self.union(self._owner[key][0], i, s.qualname)
        self._owner.setdefault(key, (i, s.expand))
        self.slices[self.find(i)].append((order, role, s, i))

    # ----- splits --------------------------------------------------------------------------------------------

    def split(self, i: int, at: int) -> tuple[int, int] | None:
        """Cut space `i` (not split before) into channels [0, at) and [at, size); None if `at` cuts a unit or the
        space is interleaved (its units span all of it)."""
        root = self.find(i)
        if at % self.unit[i] or not 0 < at < self.size[i] or any(self.outer[m] != 1 for m in self.members[root]):
            return None
        cut = at // self.unit[i]
        firsts, seconds = {}, {}
        for m in self.members[root]:
            firsts[m] = self.new(cut * self.unit[m], self.name[m], unit=self.unit[m])
            seconds[m] = self.new(self.size[m] - cut * self.unit[m], self.name[m], unit=self.unit[m])
            self.parts[m] = (firsts[m], seconds[m])
        for parts in (firsts, seconds):
            new_root = parts[root]
            for p in parts.values():
                self.parent[p] = new_root
                self.members[p] = []
            self.members[new_root] = list(parts.values())
            self.reasons[new_root] = list(self.reasons[root])
            self.inexact[new_root] = list(self.inexact[root])
        for order, role, s, m in self.slices[root]:
            second = replace(s, offset=s.offset + cut * self.unit[m] * s.expand)
            self.slices[firsts[root]].append((order, role, s, firsts[m]))
            self.slices[seconds[root]].append((order, role, second, seconds[m]))
        self._split_owners(root, cut, firsts, seconds)
        self.slices[root], self.members[root] = [], []
        return self.parts[i]

    def _split_owners(self, root: int, cut: int, firsts: dict[int, int], seconds: dict[int, int]) -> None:
        for key, (space, expand) in list(self._owner.items()):
            if space in firsts and self.find(space) == root:
                module, param, dim, offset = key
                self._owner[key] = (firsts[space], expand)
                self._owner[(module, param, dim, offset + cut * self.unit[space] * expand)] = (seconds[space], expand)

    def leaves(self, i: int) -> list[int]:
        """The unsplit spaces that `i` now consists of, in channel order."""
        if i not in self.parts:
            return [i]
        return [leaf for p in self.parts[i] for leaf in self.leaves(p)]

    def resolve(self, x: Layout) -> Layout:
        """`x` with split spaces replaced by their parts."""
        if not any(s in self.parts for s in x.spaces):
            return x
        spaces, expand, zero = [], [], []
        for s, e, z in zip(x.spaces, x.expand, x.zero, strict=True):
            for leaf in self.leaves(s):
                spaces.append(leaf)
                expand.append(e)
                zero.append(z)
        return replace(x, spaces=tuple(spaces), expand=tuple(expand), zero=tuple(zero))

    def widths(self, x: Layout) -> list[int]:
        """Positions along the channel axis taken by each space of `x`."""
        return [self.size[s] * e for s, e in zip(x.spaces, x.expand, strict=True)]

    def refine(self, x: Layout, cuts: set[int]) -> Layout | None:
        """Split the spaces of `x` so that every position in `cuts` is a space boundary (None if impossible)."""
        x = self.resolve(x)
        start = 0
        for s, e in zip(x.spaces, x.expand, strict=True):
            inside = sorted(c - start for c in cuts if start < c < start + self.size[s] * e)
            if inside:
                if inside[0] % e or self.split(s, inside[0] // e) is None:
                    return None
                return self.refine(x, cuts)
            start += self.size[s] * e
        return x

    # ----- result --------------------------------------------------------------------------------------------

    def groups(self) -> list[ChannelGroup]:
        roots = sorted({self.find(i) for i in range(len(self.parent)) if i not in self.parts})
        out = [self._group(root) for root in roots if self.members[root]]
        _disambiguate(out)
        return out

    def _group(self, root: int) -> ChannelGroup:
        first: dict[tuple[str, ChannelSlice], int] = {}
        for order, role, s, m in sorted(self.slices[root], key=lambda t: t[0]):
            stride = self.size[m] // self.outer[m] * s.expand if self.outer[m] > 1 else 0
            first.setdefault((role, replace(s, expand=s.expand * self.unit[m], repeat=self.outer[m], stride=stride)),
                             order)
        producers = [s for role, s in first if role == "p"]
        consumers = [s for role, s in first if role == "c"]
        filters = [s for s in producers if s.kind == "filter"]
        gid = filters[0].module if filters else self.name[root]
        reasons = list(dict.fromkeys(self.reasons[root]))
        if not producers and not reasons:  # nothing to zero: removal could not match masking
            reasons = [f"no layer produces the channels of '{self.name[root]}'"]
        return ChannelGroup(gid, self.units(root), producers, consumers, not reasons, "; ".join(reasons),
                            list(dict.fromkeys(self.inexact[root])), min((s.width for s in filters), default=1))


def _disambiguate(groups: list[ChannelGroup]) -> None:
    """Groups cut from the same filters share their first module: name them by their channel range."""
    counts: dict[str, int] = {}
    for g in groups:
        counts[g.id] = counts.get(g.id, 0) + 1
    for g in groups:
        if counts[g.id] > 1 and g.producers and g.producers[0].kind == "filter":
            s = g.producers[0]
            g.id = f"{s.module}[{s.offset}:{s.offset + g.num_channels * s.expand}]"
