"""UNet for binary and multi-class segmentation, registered with timm (`unet`, `unet_small`, `unet_tiny`).

Encoder: a double conv (conv-BN-ReLU twice) at full resolution, then `depth` stages of 2×2 max-pool + double conv,
each doubling the width. Decoder: per stage, 2× upsampling (bilinear, or a 2×2 transposed conv), concatenation
with the encoder output at that resolution (the skip), and a double conv that halves the width. A 1×1 conv maps
the last decoder features to `num_classes` logit channels (1 channel for binary segmentation).

The forward pass has no data-dependent control flow, so `torch.fx.symbolic_trace` captures the whole graph, which
the structural pruner needs to find the consumers of every conv (including both sides of each concatenation).
Input height and width must be divisible by 2**depth (every max-pool must halve exactly, or the skip shapes would
not match); eager forward passes check that with a clear error, fx tracing skips the check.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

__all__ = ["DoubleConv", "UNet", "check_unet_input"]


class DoubleConv(nn.Sequential):
    """(3×3 conv, BN, ReLU) twice; the convs have no bias because BN follows."""

    def __init__(self, in_chs: int, out_chs: int, mid_chs: int | None = None) -> None:
        mid_chs = mid_chs or out_chs
        super().__init__(
            nn.Conv2d(in_chs, mid_chs, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid_chs),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_chs, out_chs, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_chs),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """Halve the resolution with 2×2 max-pooling, then a double conv."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_chs, out_chs))


class Up(nn.Module):
    """Double the resolution, concatenate the skip features, then a double conv.

    Args:
        in_chs: Channels of the deeper (lower-resolution) input.
        skip_chs: Channels of the encoder features concatenated after upsampling.
        out_chs: Output channels.
        mode: "bilinear" (parameter-free upsampling; the double conv sees in_chs + skip_chs channels) or
            "transpose" (a learned 2×2 transposed conv to skip_chs channels first, as in the original UNet).
    """

    def __init__(self, in_chs: int, skip_chs: int, out_chs: int, mode: str = "bilinear") -> None:
        super().__init__()
        if mode == "bilinear":
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            conv_in = in_chs + skip_chs
        elif mode == "transpose":
            self.up = nn.ConvTranspose2d(in_chs, skip_chs, kernel_size=2, stride=2)
            conv_in = 2 * skip_chs
        else:
            raise ValueError(f"up_mode: expected 'bilinear' or 'transpose', got {mode!r}")
        self.conv = DoubleConv(conv_in, out_chs)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # Skip first, so channel indices of the concatenation start with the encoder's channels.
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """UNet with skip concatenations; width `base_width * 2**i` at encoder level i.

    Args:
        num_classes: Output logit channels (1 for binary segmentation).
        in_chans: Input image channels.
        base_width: Channels of the first (full-resolution) level.
        depth: Number of down-sampling steps; input sides must be divisible by 2**depth.
        up_mode: "bilinear" or "transpose" (see `Up`).
        drop_rate: Dropout before the 1×1 classifier (0 = off).
    """

    def __init__(self, num_classes: int = 1, in_chans: int = 3, base_width: int = 32, depth: int = 4,
                 up_mode: str = "bilinear", drop_rate: float = 0.0) -> None:
        super().__init__()
        if num_classes < 1 or in_chans < 1 or base_width < 1 or depth < 1:
            raise ValueError(f"UNet: num_classes, in_chans, base_width and depth must be >= 1, got "
                             f"{num_classes}, {in_chans}, {base_width}, {depth}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.depth = depth
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.stem = DoubleConv(in_chans, widths[0])
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], widths[i], up_mode) for i in reversed(range(depth)))
        self.num_features = widths[0]
        self.drop = nn.Dropout2d(drop_rate) if drop_rate > 0 else nn.Identity()
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Full-resolution decoder features, N × base_width × H × W."""
        if not isinstance(x, torch.fx.Proxy):  # Python shape check: eager only, so fx graphs stay static
            check_unet_input(x.shape[-2], x.shape[-1], self.depth)
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits from decoder features."""
        return self.head(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits N × num_classes × H × W."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the 1×1 classifier with a fresh one for `num_classes` channels."""
        self.num_classes = num_classes
        self.head = nn.Conv2d(self.num_features, num_classes, kernel_size=1)


def check_unet_input(height: int, width: int, depth: int) -> None:
    """Raise ValueError unless both sides are divisible by 2**depth (every max-pool must halve exactly)."""
    factor = 2**depth
    if height % factor or width % factor:
        raise ValueError(f"data.image_size: UNet with depth {depth} needs sides divisible by {factor}, "
                         f"got {height}×{width}")


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """No published weights (url ''); any size divisible by 2**depth works, so the input size is not fixed."""
    return {"url": "", "num_classes": 1, "input_size": (3, 64, 64), "fixed_input_size": False, "mean": (0.5,) * 3,
            "std": (0.5,) * 3, "first_conv": "stem.0", "classifier": "head", **kwargs}


default_cfgs = generate_default_cfgs({f"{name}.untrained": _cfg() for name in ("unet", "unet_small", "unet_tiny")})


def _create_unet(variant: str, pretrained: bool = False, **kwargs: Any) -> UNet:
    return build_model_with_cfg(UNet, variant, pretrained, **kwargs)


@register_model
def unet(pretrained: bool = False, **kwargs: Any) -> UNet:
    """UNet, base width 32, depth 4 (the classic layout at half width: 32-64-128-256-512)."""
    model_args = dict(base_width=32, depth=4)
    return _create_unet("unet", pretrained, **dict(model_args, **kwargs))


@register_model
def unet_small(pretrained: bool = False, **kwargs: Any) -> UNet:
    """UNet, base width 16, depth 3 (16-32-64-128); a CPU-sized model for 64×64 crops."""
    model_args = dict(base_width=16, depth=3)
    return _create_unet("unet_small", pretrained, **dict(model_args, **kwargs))


@register_model
def unet_tiny(pretrained: bool = False, **kwargs: Any) -> UNet:
    """UNet, base width 8, depth 2 (8-16-32); for tests and smoke runs."""
    model_args = dict(base_width=8, depth=2)
    return _create_unet("unet_tiny", pretrained, **dict(model_args, **kwargs))
