"""Synthetic retinal-vessel-like images: branching curves of varying width on a textured, unevenly lit background.

Every step is batched over images (torch on CPU), so 2000 images of 64×64 take about a second. The output is a
deterministic function of (num_samples, image_size, seed).

Rendering, per image:
    1. Curves: a trunk plus branches, each a random walk whose heading changes by a smoothed random turn rate
       (so curves bend smoothly, like vessels, instead of jittering). A branch starts at a random point of an
       earlier curve, leaves at 25–70° to it, and is thinner than its parent; every curve tapers along its length.
    2. Mask: walk points are stamped into one canvas per radius level, each canvas is dilated with a disk of
       that radius, and the union is the binary vessel mask.
    3. Image: a smooth random texture plus a linear illumination gradient and a circular field-of-view vignette
       (as in fundus photographs), vessels darkened with a slightly blurred profile, then pixel noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["make_vessel_images"]

_STEP = 0.5  # walk step in pixels: < 1 so that rounded points form a connected line
_RADII = (0.0, 1.0, 2.0)  # stamp radii at 64×64, scaled by _width_scale
_TURN = 0.12  # heading noise per step at 64×64: the heading wanders about 1 rad over the image side
_FUNDUS_TINT = (0.85, 0.45, 0.25)  # RGB of the background: reddish-orange like a fundus photograph


def _width_scale(size: int) -> float:
    """Vessel radii grow slower than the image side (DRIVE at 565 px: trunks ~8 px, capillaries 1-2 px)."""
    return math.sqrt(size / 64)


def _walks(n: int, steps: int, start: torch.Tensor, heading: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Smooth random walks, N × steps × 2 (x, y), from `start` (N×2) with initial `heading` (N, radians)."""
    turn_rate = torch.randn(n, steps, generator=gen) * (_TURN * math.sqrt(128 / steps))
    # Low-pass the turn rate (moving average) so headings drift smoothly.
    kernel = torch.ones(1, 1, 9) / 9
    turn_rate = F.conv1d(turn_rate[:, None], kernel, padding=4)[:, 0]
    angle = heading[:, None] + torch.cumsum(turn_rate, dim=1)
    delta = torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1) * _STEP
    return start[:, None, :] + torch.cumsum(delta, dim=1)


def _num_curves(size: int) -> int:
    """Two root curves plus branches; larger images get more branches to keep a similar vessel density."""
    return round(8 * _width_scale(size))


def _branch_points(points: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """A random step index per walk (N × T × 2 → N), preferring points inside the image."""
    inside = ((points >= 0) & (points < size)).all(dim=-1).float()
    steps = points.shape[1]
    weights = inside[:, 1:steps - 1] + 1e-6  # interior steps only: the branch heading uses both neighbours
    return torch.multinomial(weights, 1, generator=gen)[:, 0] + 1


def _curves(n: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Root and branch points (N × K × T × 2) and their radii in pixels (N × K × T).

    Both roots leave one "optic disc" point in roughly opposite directions, like the two vascular arcades of a
    fundus image; every further curve branches off a random earlier curve at a point inside the image.
    """
    steps, num_curves = int(size / _STEP), _num_curves(size)
    rows = torch.arange(n)
    disc = (0.2 + 0.6 * torch.rand(n, 2, generator=gen)) * size
    heading = torch.rand(n, generator=gen) * 2 * math.pi
    points = torch.empty(n, num_curves, steps, 2)
    points[:, 0] = _walks(n, steps, disc, heading, gen)
    points[:, 1] = _walks(n, steps, disc, heading + math.pi + 0.5 * torch.randn(n, generator=gen), gen)
    base_radius = torch.empty(n, num_curves)
    base_radius[:, :2] = (1.5 + 0.7 * torch.rand(n, 2, generator=gen)) * _width_scale(size)
    for k in range(2, num_curves):
        parent = torch.randint(0, k, (n,), generator=gen)
        at = _branch_points(points[rows, parent], size, gen)
        direction = points[rows, parent, at + 1] - points[rows, parent, at - 1]
        side = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
        offset = side * (0.45 + 0.8 * torch.rand(n, generator=gen))  # 25–70° off the parent's heading
        heading = torch.atan2(direction[:, 1], direction[:, 0]) + offset
        points[:, k] = _walks(n, steps, points[rows, parent, at], heading, gen)
        # Thinner than the parent where it branches off (the parent tapers along its length).
        parent_radius = base_radius[rows, parent] * _taper(steps)[at]
        base_radius[:, k] = parent_radius * (0.6 + 0.3 * torch.rand(n, generator=gen))
    return points, base_radius[:, :, None] * _taper(steps)


def _taper(steps: int) -> torch.Tensor:
    """Radius factor along a curve: vessels thin out away from their origin."""
    return torch.linspace(1.0, 0.3, steps)


def _dilate(canvas: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of N × S × S bool canvases with a disk of the given radius.

    An OR over shifted copies, one per disk offset: on CPU this is far cheaper than a single-channel conv2d.
    """
    if radius == 0:
        return canvas
    size = canvas.shape[-1]
    padded = torch.zeros(canvas.shape[0], size + 2 * radius, size + 2 * radius, dtype=torch.bool)
    padded[:, radius:radius + size, radius:radius + size] = canvas
    out = torch.zeros_like(canvas)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy <= radius * radius + 0.5:
                out |= padded[:, radius + dy:radius + dy + size, radius + dx:radius + dx + size]
    return out


def _rasterize(points: torch.Tensor, radius: torch.Tensor, size: int) -> torch.Tensor:
    """Binary masks N × S × S (bool) from curve points and per-point radii (stamp per radius level, dilate)."""
    n = points.shape[0]
    levels = torch.tensor([r * _width_scale(size) for r in _RADII])
    level = torch.bucketize(radius, (levels[1:] + levels[:-1]) / 2)  # nearest radius level per point
    xy = points.round().long()
    inside = ((xy >= 0) & (xy < size)).all(dim=-1)
    image_index = torch.arange(n)[:, None, None].expand_as(level)
    canvas = torch.zeros(len(levels), n, size, size, dtype=torch.bool)
    canvas[level[inside], image_index[inside], xy[..., 1][inside], xy[..., 0][inside]] = True
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    for lvl, r in enumerate(levels.round().long().tolist()):
        mask |= _dilate(canvas[lvl], r)
    return mask


def _smooth_noise(n: int, size: int, cells: int, gen: torch.Generator) -> torch.Tensor:
    """Smooth random field N × 1 × S × S in about [-1, 1]: coarse noise upsampled bicubically."""
    coarse = torch.randn(n, 1, cells, cells, generator=gen)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(-2.5, 2.5) / 2.5


def _background(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Brightness N × 1 × S × S: texture × illumination gradient × circular field of view."""
    texture = 0.6 + 0.12 * _smooth_noise(n, size, 5, gen) + 0.05 * _smooth_noise(n, size, 17, gen)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    tilt = torch.randn(n, 2, 1, 1, generator=gen) * 0.25
    gradient = 1.0 + tilt[:, :1] * xx + tilt[:, 1:] * yy
    vignette = torch.sigmoid((0.52 - torch.sqrt(xx**2 + yy**2)) * 25)
    return texture * gradient * (0.25 + 0.75 * vignette)


def make_vessel_images(num_samples: int, image_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate vessel-like images and their masks.

    Args:
        num_samples: Number of images.
        image_size: Side S of the square images (>= 8).
        seed: Seed; the same arguments always give the same tensors.

    Returns:
        Images N × 3 × S × S float32 in [0, 1] and masks N × S × S int64 (1 = vessel).
    """
    if image_size < 8:
        raise ValueError(f"data.image_size: synthetic vessels need at least 8 pixels, got {image_size}")
    gen = torch.Generator().manual_seed(seed)
    points, radius = _curves(num_samples, image_size, gen)
    mask = _rasterize(points, radius, image_size)
    # A 3×3 box blur softens vessel edges in the image only, so boundary pixels are not trivially separable.
    profile = F.avg_pool2d(mask[:, None].float(), 3, stride=1, padding=1, count_include_pad=False)
    contrast = 0.35 + 0.3 * torch.rand(num_samples, 1, 1, 1, generator=gen)
    brightness = _background(num_samples, image_size, gen) * (1 - contrast * profile)
    tint = torch.tensor(_FUNDUS_TINT)[None, :, None, None] * (0.9 + 0.2 * torch.rand(num_samples, 3, 1, 1,
                                                                                       generator=gen))
    noise = 0.03 * torch.randn(num_samples, 3, image_size, image_size, generator=gen)
    images = (brightness * tint + noise).clamp(0, 1)
    return images.float(), mask.long()
