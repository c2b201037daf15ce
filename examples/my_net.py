"""A model of your own for sparsetrain: a plain nn.Module and a timm `@register_model` factory (no sparsetrain code).

    sparsetrain run examples/my_net.yaml   # from the repository root: its model.imports: [examples/my_net.py]

Importing this module registers `my_net` with timm, so `model.name: my_net` works wherever sparsetrain builds a
model. sparsetrain calls `timm.create_model("my_net", pretrained=False, num_classes=..., in_chans=..., **model.kwargs)`
(the data's classes and input channels; `img_size`, the data's (H, W), too when the default config says
`fixed_input_size=True`, as sparsetrain/models/lenet.py does for its fully connected models). timm adds
`pretrained_cfg`, `pretrained_cfg_overlay` and `cache_dir` (None unless set), which `build_model_with_cfg` consumes:
the class's constructor then receives only the sizes and `model.kwargs`.
"""

from __future__ import annotations

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn


class MyNet(nn.Module):
    """conv(width)-BN-ReLU-conv(2·width)-BN-ReLU-global average pool-linear; any input size of at least 1×1."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


default_cfgs = generate_default_cfgs({"my_net": {"fixed_input_size": False}})  # read by @register_model below


@register_model
def my_net(pretrained: bool = False, **kwargs) -> MyNet:
    return build_model_with_cfg(MyNet, "my_net", pretrained, **kwargs)
