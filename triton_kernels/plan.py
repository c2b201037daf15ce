"""Launch plans: a multi-tensor op bound to fixed tensors, validated once and re-run by calling it.

A plain call (``l0_grad_mask_(weights, grads, masks, ...)``) checks every tensor (dtype, device, contiguity,
numel) and looks its launch tables up by the tensors' addresses on every call: about 0.2 ms of host time for
resnet50's 54 weights, half of it validation. A training loop that reuses the same buffers step after step
can build a plan once (``plan_l0_grad_mask_``, ``plan_apply_masks_`` or ``get_ops(...).plan_*``) and call
it each step; only the kernel launches remain. A plan's device tables are built at plan time, so it can be
captured in a CUDA graph without the warm-up call that plain calls need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

import torch

from triton_kernels.bitmask import PackedMask

T = TypeVar("T")


class LaunchPlan(Generic[T]):
    """A prepared op: ``plan()`` runs it on the tensors it was built with and returns what the op returns.

    The plan keeps the storage of every tensor alive (the kernels hold raw addresses), so a buffer the
    caller replaced (``p.data = ...``, a new ``.grad``) is never freed under it; but the plan keeps acting on
    the old memory: build a new plan when a buffer is reallocated.
    """

    def __init__(self, run: Callable[[], T], tensor_lists: Iterable[Sequence[torch.Tensor | PackedMask]], op: str):
        self._run = run
        self._op = op
        self._storages = [
            (t.bits if isinstance(t, PackedMask) else t).untyped_storage() for ts in tensor_lists for t in ts
        ]

    def __call__(self) -> T:
        return self._run()

    def __repr__(self) -> str:
        return f"LaunchPlan({self._op}, {len(self._storages)} tensors)"


def reference_plan(fn: Callable[..., T], op: str, *args: object, **kwargs: object) -> LaunchPlan[T]:
    """A plan of a torch reference: ``fn(*args, **kwargs)`` on every call (the references validate nothing)."""
    lists = [a for a in args if isinstance(a, (list, tuple))]
    return LaunchPlan(lambda: fn(*args, **kwargs), lists, op)
