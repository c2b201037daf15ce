"""LeNet-300-100 and LeNet-5 (Caffe variant), registered as timm models."""

from __future__ import annotations

import math

import torch
from timm.models import register_model
from torch import nn

_TIMM_FACTORY_KEYS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only")


def model_args(pretrained: bool, name: str, kwargs: dict) -> dict:
    """Refuse pretrained=True (no weights exist) and drop the keys timm passes to every factory."""
    if pretrained:
        raise ValueError(f"model.pretrained: no pretrained weights exist for {name}; set pretrained=false")
    return {k: v for k, v in kwargs.items() if k not in _TIMM_FACTORY_KEYS}


class LeNet300100(nn.Module):
    """Fully connected 784-300-100-10 network; flattens any input shape."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int = 28, in_features: int | None = None,
                 hidden: tuple[int, int] = (300, 100)) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_features = in_features or in_chans * img_size * img_size
        self.fc1 = nn.Linear(self.in_features, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.num_features = hidden[1]
        self.head = nn.Linear(hidden[1], num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x.flatten(1)))
        return torch.relu(self.fc2(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes)


class LeNet5(nn.Module):
    """LeNet-5-Caffe: conv(20,5)-pool-conv(50,5)-pool-fc500-fc10, for 1-D or 2-D inputs."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int = 28, dims: int = 2) -> None:
        super().__init__()
        conv, pool = (nn.Conv2d, nn.MaxPool2d) if dims == 2 else (nn.Conv1d, nn.MaxPool1d)
        self.num_classes = num_classes
        self.conv1 = conv(in_chans, 20, 5)
        self.conv2 = conv(20, 50, 5)
        self.pool = pool(2)
        side = math.floor((math.floor((img_size - 4) / 2) - 4) / 2)
        if side < 1:
            raise ValueError(f"data: input size {img_size} is too small for lenet5 (need at least 12)")
        self.fc1 = nn.Linear(50 * side**dims, 500)
        self.num_features = 500
        self.head = nn.Linear(500, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return torch.relu(self.fc1(x.flatten(1)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes)


@register_model
def lenet300_100(pretrained: bool = False, **kwargs) -> LeNet300100:
    return LeNet300100(**model_args(pretrained, "lenet300_100", kwargs))


@register_model
def lenet5(pretrained: bool = False, **kwargs) -> LeNet5:
    return LeNet5(**model_args(pretrained, "lenet5", kwargs))
