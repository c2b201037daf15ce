"""DeepSpeed ZeRO-3's process-wide `torch.nn.functional.linear`, kept to the training that wants it.

Building a ZeRO-3 engine (`deepspeed.initialize`, `zero_optimization.memory_efficient_linear`, on by default)
replaces `torch.nn.functional.linear` for the whole process with `deepspeed.runtime.zero.linear.zero3_linear_wrap`,
an autograd Function that saves less for backward; DeepSpeed leaves it in place after the engine is gone. Two things
then break in the same process:

- `torch.fx` tracing of any module that calls `F.linear` itself rather than being an `nn.Linear` leaf (timm's
  `timm.layers.Linear`, the classifier of MobileNetV3 and others): the wrap branches on `input.dim()`, which a traced
  value cannot decide ("symbolically traced variables cannot be used as inputs to control flow"), so Method 2's
  channel analysis failed after a ZeRO-3 phase;
- everything after the run (the user's own code, a later ZeRO 0 run, tests) computes every linear layer with
  DeepSpeed's function instead of torch's.

`stock_linear()` puts torch's function back for a block (the channel analysis traces inside it);
`deepspeed_linear_scope()` lets the wrap live only while a training phase runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

__all__ = ["STOCK_LINEAR", "deepspeed_linear_installed", "deepspeed_linear_scope", "stock_linear"]

STOCK_LINEAR = torch._C._nn.linear  # what torch.nn.functional.linear is (torch/nn/functional.py)
_DEEPSPEED_MODULE = "deepspeed.runtime.zero.linear"


def deepspeed_linear_installed() -> bool:
    """Whether `torch.nn.functional.linear` is DeepSpeed ZeRO-3's replacement now (any version's: judged by the
    module it comes from, without importing DeepSpeed)."""
    return getattr(F.linear, "__module__", None) == _DEEPSPEED_MODULE


@contextlib.contextmanager
def stock_linear() -> Iterator[None]:
    """Within the block `torch.nn.functional.linear` is torch's own, also where DeepSpeed ZeRO-3 replaced it; the
    replacement is back afterwards (also when the block raises). A user's own replacement is left alone."""
    if not deepspeed_linear_installed():
        yield
        return
    installed = F.linear
    F.linear = STOCK_LINEAR
    try:
        yield
    finally:
        F.linear = installed


@contextlib.contextmanager
def deepspeed_linear_scope() -> Iterator[None]:
    """Undo at the block's end (also when it raises) a replacement of `torch.nn.functional.linear` that a DeepSpeed
    ZeRO-3 engine built within the block installed; one that was there before the block stays."""
    before = F.linear
    try:
        yield
    finally:
        if deepspeed_linear_installed() and F.linear is not before:
            F.linear = before
