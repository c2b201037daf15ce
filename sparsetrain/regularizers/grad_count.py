"""Method 2 (Khan et al., arXiv 2210.07451): gradient-counting sparsity + redundant-filter detection.

The paper's formulas are not published; this is our reading (METHOD.md), kept as named, swappable pieces:

* Gradient counting (`count_filters`): after gradient reduction, every step, a filter (one output row of a
  conv/linear weight) counts when its mean |grad| exceeds tau × the mean over the layer's filters. Over a
  window of `count_window` steps this gives ratio_f = count_f / steps, how much the filter takes part in learning.
* Zero attraction: a filter is pulled toward zero with strength s_f = lambda_s · (1 − ratio_f); redundant filters
  get the full lambda_s. The pull is the gradient of s_f·‖w_f‖₂ (group-lasso), which shrinks a whole filter at
  once, so that the filter can be removed afterwards; it is added through the same gradient path as Method 1,
  together with l2 (alpha2).
* Redundancy (`cosine`): at each window end, within a layer, for each filter pair with cosine similarity
  above rho, the filter with the lower count (then lower norm) is marked redundant.

Per-filter sums are built from this rank's part of the weights (ZeRO partitions) and summed over ranks with the
reduce function the engine binds, so every rank holds identical counts; counts are saved in checkpoints. The cosine
redundancy test needs whole filters: it reads each layer's whole weight from the bound parameters at a window end
(under ZeRO 3 the engine gathers that one layer then).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from sparsetrain.config.strategies import GradCountConfig
from sparsetrain.regularizers.base import GradientRegularizer, Reduce, WeightSlice, columns


def _rows(piece: WeightSlice, per_filter: int, device: torch.device) -> torch.Tensor:
    """Filter index of every element of the slice."""
    return torch.arange(piece.start, piece.start + piece.weight.numel(), device=device) // per_filter


def _filter_sums(slices: list[WeightSlice], layouts: dict[str, tuple[int, int]], device: torch.device
                 ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per filter: (Σ|g|, Σw²) over this rank's elements, zero where this rank holds none of the filter."""
    sums = {name: (torch.zeros(n, device=device), torch.zeros(n, device=device)) for name, (n, _) in layouts.items()}
    for piece in slices:
        if piece.name not in layouts:
            continue
        rows = _rows(piece, layouts[piece.name][1], device)
        grad_abs, sq = sums[piece.name]
        # the masters may live elsewhere than the model (ZeRO-Offload keeps them in host memory)
        grad_abs.scatter_add_(0, rows, piece.grad.abs().float().to(device))
        sq.scatter_add_(0, rows, piece.weight.float().square().to(device))
    return sums


def _all_reduce_pairs(sums: dict[str, tuple[torch.Tensor, torch.Tensor]], reduce: Reduce | None) -> None:
    if reduce is None or not sums:
        return
    flat = torch.cat([torch.cat(pair) for pair in sums.values()])
    reduce(flat)
    offset = 0
    for grad_abs, sq in sums.values():
        for t in (grad_abs, sq):
            t.copy_(flat[offset:offset + t.numel()])
            offset += t.numel()


def redundant_filters(weight: torch.Tensor, counts: torch.Tensor, rho: float) -> torch.Tensor:
    """Bool per filter: the weaker (lower count, then lower norm) filter of every pair with cosine > rho."""
    flat = weight.detach().float().flatten(1)
    norms = flat.norm(dim=1)
    cosine = F.normalize(flat, dim=1) @ F.normalize(flat, dim=1).T
    similar = torch.triu(cosine > rho, diagonal=1)
    strength = counts.float() * (norms.max() + 1) + norms  # order by count, then by norm
    i, j = similar.nonzero(as_tuple=True)
    weaker = torch.where(strength[i] <= strength[j], i, j)
    marked = torch.zeros(flat.shape[0], dtype=torch.bool, device=flat.device)
    marked[weaker] = True
    return marked


class GradCountRegularizer(GradientRegularizer):
    """Gradient counting with count-driven group-lasso zero attraction and cosine redundancy marking.

    Args:
        backend: kernels for the l2/mask part ("triton" or "torch").
        cfg: regularizer section (count_tau, count_window, lambda_s, redundancy, redundancy_rho, alpha2).
        layouts: parameter name → (number of filters, elements per filter) for the filters that may be removed.
    """

    name = "grad_count"

    def __init__(self, backend: str, cfg: GradCountConfig, layouts: dict[str, tuple[int, int]]) -> None:
        super().__init__(backend)
        self.cfg, self.layouts = cfg, layouts
        self.counts = {n: torch.zeros(f) for n, (f, _) in layouts.items()}
        self.ratio = {n: torch.ones(f) for n, (f, _) in layouts.items()}  # no pull before the first window ends
        self.redundant = {n: torch.zeros(f, dtype=torch.bool) for n, (f, _) in layouts.items()}
        self.window_steps = 0
        self.params: Mapping[str, torch.Tensor] = {}
        self.reduce: Reduce | None = None
        self.device = torch.device("cpu")

    def bind(self, params: Mapping[str, torch.Tensor], reduce: Reduce | None) -> None:
        """Attach the model's prunable weights (read whole at window ends, for the redundancy test); counts then
        live on their device (no host syncs per step)."""
        self.params, self.reduce = params, reduce
        self.device = next(iter(params.values())).device if params else torch.device("cpu")
        self._to(self.device)

    def _device(self) -> torch.device:
        return self.device

    def _to(self, device: torch.device) -> None:
        for table in (self.counts, self.ratio, self.redundant):
            for name, value in table.items():
                table[name] = value.to(device)

    def apply_to_gradients(self, slices: list[WeightSlice]) -> torch.Tensor:
        from triton_kernels import get_ops

        device = self._device()
        sums = _filter_sums(slices, self.layouts, device)
        _all_reduce_pairs(sums, self.reduce)
        self._count(sums)
        pull = self._pull(slices, sums, device)
        weights, grads, masks = columns(slices)
        l2 = get_ops(self.backend).l0_grad_mask_(weights, grads, masks, alphas=[0.0] * len(slices), beta=0.0,
                                                 l2=self.cfg.alpha2)
        return pull.to(l2.device) + l2

    def _count(self, sums: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        for name, (grad_abs, _) in sums.items():
            per_filter = grad_abs / self.layouts[name][1]
            self.counts[name] += (per_filter > self.cfg.count_tau * per_filter.mean()).float()
        self.window_steps += 1

    def _pull(self, slices: list[WeightSlice], sums: dict[str, tuple[torch.Tensor, torch.Tensor]],
              device: torch.device) -> torch.Tensor:
        """Add s_f · w / ‖w_f‖ to the gradients; returns this rank's share of Σ s_f ‖w_f‖."""
        value = torch.zeros((), device=device)
        for piece in slices:
            if piece.name not in self.layouts:
                continue
            norms = sums[piece.name][1].sqrt()
            strength = self.strength(piece.name).to(norms.device)
            scale = (strength / norms.clamp_min(1e-12))[_rows(piece, self.layouts[piece.name][1], norms.device)]
            scale = scale.to(piece.grad.device)
            piece.grad.add_((scale * piece.weight.float()).to(piece.grad.dtype))
            value = value + (strength * norms).sum().to(device) * (piece.weight.numel() / piece.size)
        return value

    def strength(self, name: str) -> torch.Tensor:
        """Pull per filter: lambda_s · (1 − ratio), the full lambda_s for redundant filters."""
        pull = self.cfg.lambda_s * (1.0 - self.ratio[name])
        return torch.where(self.redundant[name], torch.full_like(pull, self.cfg.lambda_s), pull)

    def end_step(self) -> None:
        if self.window_steps < self.cfg.count_window:
            return
        for name in self.layouts:
            self.ratio[name] = self.counts[name] / self.window_steps
            self.counts[name].zero_()
            if self.cfg.redundancy == "cosine" and name in self.params:
                # every rank reads the whole weight (replicated under ZeRO <= 2, gathered one layer at a time
                # under ZeRO 3: the cosine of every filter pair needs all of them), so all ranks agree
                self.redundant[name] = redundant_filters(self.params[name], self.ratio[name],
                                                         self.cfg.redundancy_rho)
        self.window_steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {"counts": _on_cpu(self.counts), "ratio": _on_cpu(self.ratio), "redundant": _on_cpu(self.redundant),
                "window_steps": self.window_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = {k: v.clone() for k, v in state["counts"].items()}
        self.ratio = {k: v.clone() for k, v in state["ratio"].items()}
        self.redundant = {k: v.clone() for k, v in state["redundant"].items()}
        self.window_steps = int(state["window_steps"])
        self._to(self._device())


def _on_cpu(table: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: value.detach().cpu() for name, value in table.items()}
