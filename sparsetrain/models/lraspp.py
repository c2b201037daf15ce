"""LR-ASPP segmentation head on a timm MobileNetV3 backbone ("Searching for MobileNetV3", Howard et al. 2019).

Registered with timm as `lraspp_mobilenetv3_large_100` and `lraspp_mobilenetv3_small_100`.

Layout (as in the paper): the backbone runs with output stride 16 (its last stage dilated instead of strided).
The 1/16 features go through a 1×1 conv-BN-ReLU branch, which is gated channel-wise by a sigmoid of a
globally pooled 1×1 conv branch (a squeeze-excite-like attention); the gated map is upsampled bilinearly to 1/8,
classified by a 1×1 conv, and added to a 1×1 classification of the 1/8 low-level features. The sum is
upsampled bilinearly to the input size. The paper pools with a large fixed window (49×49, stride 16×20) for
1024×2048 Cityscapes crops; we pool globally so that any input size works, as torchvision does.

The timm `MobileNetV3Features` backbone has only Python-level control flow over its configuration, so the whole
model traces with `torch.fx.symbolic_trace` (checked in tests/segmentation).
"""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

__all__ = ["LRASPPHead", "LRASPPMobileNetV3"]

# timm feature indices of MobileNetV3: 0..4 ↔ reductions 2, 4, 8, 16, 32 (with output_stride=16 index 4 is at 1/16).
_LOW_INDEX, _HIGH_INDEX = 2, 4


class LRASPPHead(nn.Module):
    """Lite reduced atrous spatial pyramid pooling head.

    Args:
        low_chs: Channels of the 1/8 low-level features.
        high_chs: Channels of the 1/16 high-level features.
        num_classes: Output logit channels (1 for binary segmentation).
        inter_chs: Channels of the gated high-level branch (128 in the paper).
    """

    def __init__(self, low_chs: int, high_chs: int, num_classes: int, inter_chs: int = 128) -> None:
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(high_chs, inter_chs, 1, bias=False),
            nn.BatchNorm2d(inter_chs),
            nn.ReLU(inplace=True),
        )
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(high_chs, inter_chs, 1, bias=False),
            nn.Sigmoid(),
        )
        self.low_classifier = nn.Conv2d(low_chs, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_chs, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """Logits at the resolution of `low` (1/8 of the input)."""
        x = self.cbr(high) * self.scale(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)


class LRASPPMobileNetV3(nn.Module):
    """MobileNetV3 backbone (output stride 16) with an LR-ASPP head; logits at input resolution.

    Args:
        backbone: timm MobileNetV3 variant, e.g. "mobilenetv3_large_100".
        num_classes: Output logit channels (1 for binary segmentation).
        in_chans: Input image channels.
        pretrained_backbone: Load timm's ImageNet weights into the backbone (must be cached locally).
        inter_chs: Channels of the head's gated branch.
    """

    def __init__(self, backbone: str = "mobilenetv3_large_100", num_classes: int = 1, in_chans: int = 3,
                 pretrained_backbone: bool = False, inter_chs: int = 128) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.backbone = timm.create_model(backbone, pretrained=pretrained_backbone, features_only=True,
                                          out_indices=(_LOW_INDEX, _HIGH_INDEX), output_stride=16,
                                          in_chans=in_chans)
        low_chs, high_chs = self.backbone.feature_info.channels()
        self.head = LRASPPHead(low_chs, high_chs, num_classes, inter_chs)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone features [1/8 low-level, 1/16 high-level]."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits N × num_classes × H × W."""
        low, high = self.forward_features(x)
        logits = self.head(low, high)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """The head has no published weights; `pretrained=True` loads the backbone's ImageNet weights (cached)."""
    return {"url": "", "num_classes": 1, "input_size": (3, 128, 128), "fixed_input_size": False,
            "first_conv": "backbone.conv_stem", "classifier": "head", **kwargs}


default_cfgs = generate_default_cfgs({f"lraspp_{name}.untrained": _cfg()
                                      for name in ("mobilenetv3_large_100", "mobilenetv3_small_100")})


def _create_lraspp(backbone: str, pretrained: bool = False, **kwargs: Any) -> LRASPPMobileNetV3:
    # `pretrained` can only mean the backbone: no weights exist for the head.
    return build_model_with_cfg(LRASPPMobileNetV3, f"lraspp_{backbone}", False, backbone=backbone,
                                pretrained_backbone=pretrained, **kwargs)

@register_model
def lraspp_mobilenetv3_large_100(pretrained: bool = False, **kwargs: Any) -> LRASPPMobileNetV3:
    """LR-ASPP on MobileNetV3-Large 1.0; pretrained=True loads ImageNet weights into the backbone only."""
    model_args = dict(inter_chs=128)
    return _create_lraspp("mobilenetv3_large_100", pretrained, **dict(model_args, **kwargs))


@register_model
def lraspp_mobilenetv3_small_100(pretrained: bool = False, **kwargs: Any) -> LRASPPMobileNetV3:
    """LR-ASPP on MobileNetV3-Small 1.0; pretrained=True loads ImageNet weights into the backbone only."""
    model_args = dict(inter_chs=128)
    return _create_lraspp("mobilenetv3_small_100", pretrained, **dict(model_args, **kwargs))
