"""Channel analysis in a process where a DeepSpeed ZeRO-3 engine replaced `torch.nn.functional.linear`
(`sparsetrain/deepspeed_linear.py`): DeepSpeed's own function, installed the way its engine installs it."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from deepspeed.runtime.zero.linear import zero3_linear_wrap
from torch import fx

from sparsetrain.deepspeed_linear import STOCK_LINEAR, deepspeed_linear_installed, deepspeed_linear_scope
from sparsetrain.structural import build_channel_groups
from sparsetrain.structural.trace import ModuleTracer


def _summary(groups: list) -> list[tuple]:
    return [(g.id, g.num_channels, g.prunable, tuple(g.inexact)) for g in groups]


def test_mobilenetv3_is_analyzed_with_deepspeeds_linear_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    model = timm.create_model("mobilenetv3_small_050", num_classes=4).eval()
    x = torch.zeros(1, 3, 32, 32)
    reference = build_channel_groups(model, x)
    monkeypatch.setattr(F, "linear", zero3_linear_wrap)  # what deepspeed.initialize does under ZeRO 3
    with pytest.raises(fx.proxy.TraceError, match="control flow"):  # the failure: timm's Linear calls F.linear
        ModuleTracer().trace(model)
    assert _summary(build_channel_groups(model, x)) == _summary(reference)
    assert F.linear is zero3_linear_wrap, "the analysis did not put DeepSpeed's function back"
    with deepspeed_linear_scope():
        pass
    assert deepspeed_linear_installed(), "a replacement made before the scope must stay"


def test_the_scope_undoes_a_replacement_made_inside_it() -> None:
    assert F.linear is STOCK_LINEAR
    with pytest.raises(RuntimeError, match="boom"), deepspeed_linear_scope():
        F.linear = zero3_linear_wrap
        raise RuntimeError("boom")
    assert F.linear is STOCK_LINEAR
