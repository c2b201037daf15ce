"""LeNet-300-100 and LeNet-5 (Caffe variant), registered as timm models built by timm's own builder.

Their pretrained configs say `fixed_input_size=True` (timm's convention for models whose layers depend on the
input size): the model factory then passes the data's spatial size as `img_size`, an int (square) or (H, W).
timm's `img_size` is always 2-D, so a 1-D signal of length L (mnist1d) comes as (1, L): LeNet-5 then uses 1-D
convolutions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

ImgSize = int | Sequence[int]


def _sides(img_size: ImgSize, dims: int = 2) -> tuple[int, ...]:
    """`img_size` as a tuple of spatial sides (an int means a square of `dims` sides)."""
    return (int(img_size),) * dims if isinstance(img_size, int) else tuple(int(s) for s in img_size)


class _LinearClassifier(nn.Module):
    """timm's classifier interface for a model ending in a linear `head` over `num_features` features."""

    head: nn.Linear
    num_classes: int
    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes)


class LeNet300100(_LinearClassifier):
    """Fully connected 784-300-100-10 network; flattens any input shape."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: ImgSize = 28,
                 in_features: int | None = None, hidden: tuple[int, int] = (300, 100)) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_features = in_features or in_chans * math.prod(_sides(img_size))
        self.fc1 = nn.Linear(self.in_features, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.num_features = hidden[1]
        self.head = nn.Linear(hidden[1], num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        return torch.relu(self.fc2(x))


class LeNet5(_LinearClassifier):
    """LeNet-5-Caffe: conv(20,5)-pool-conv(50,5)-pool-fc500-fc10, for 1-D or 2-D inputs."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: ImgSize = 28, dims: int | None = None
                 ) -> None:
        super().__init__()
        sides = _sides(img_size, dims or 2)
        if dims == 1 or (len(sides) == 2 and sides[0] == 1):  # a 1-D signal given as a 1 × L image
            sides = sides[-1:]
        if len(sides) not in (1, 2):
            raise ValueError(f"model.kwargs.img_size: lenet5 takes 1-D or 2-D inputs, got sides {sides}")
        conv, pool = (nn.Conv2d, nn.MaxPool2d) if len(sides) == 2 else (nn.Conv1d, nn.MaxPool1d)
        self.num_classes = num_classes
        self.channels_last = dims == 2  # a memory layout only: the same values in the same logical order
        self.conv1 = conv(in_chans, 20, 5)
        self.conv2 = conv(20, 50, 5)
        self.pool = pool(2)
        out = [math.floor((math.floor((side - 4) / 2) - 4) / 2) for side in sides]
        if min(out) < 1:
            raise ValueError(f"data: input size {sides} is too small for lenet5 (need at least 12 per side)")
        self.fc1 = nn.Linear(50 * math.prod(out), 500)
        self.num_features = 500
        self.head = nn.Linear(500, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        if self.channels_last:  # CPU max-pooling and conv2 on channels-last activations: ~1.2x faster a step
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.pool(torch.relu(x))
        x = self.pool(torch.relu(self.conv2(x)))
        return torch.relu(self.fc1(x.flatten(1)))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """No published weights (url ''): `pretrained=True` needs a local file (pretrained_cfg_overlay=dict(file=...))."""
    return {"url": "", "num_classes": 10, "input_size": (1, 28, 28), "fixed_input_size": True, "mean": (0.5,),
            "std": (0.5,), "first_conv": "fc1", "classifier": "head", **kwargs}


default_cfgs = generate_default_cfgs({"lenet300_100.untrained": _cfg(), "lenet5.untrained": _cfg(first_conv="conv1")})


@register_model
def lenet300_100(pretrained: bool = False, **kwargs: Any) -> LeNet300100:
    return build_model_with_cfg(LeNet300100, "lenet300_100", pretrained, **kwargs)


@register_model
def lenet5(pretrained: bool = False, **kwargs: Any) -> LeNet5:
    return build_model_with_cfg(LeNet5, "lenet5", pretrained, **kwargs)
