"""The DALS task for mask refinement: surface samples onto the mask boundary's distance map.

Following DALS (supplementary B), the unsigned distance map of the mask boundary is
sampled trilinearly at surface samples, with precomputed Sobel gradients for the
backward pass (``prep.mask_distance.DistanceSampler``). A second, lighter term pulls
the surface towards boundary points so it cannot settle on part of the boundary.
Both use a Cauchy loss, so boundary the shape cannot reach (a leak, the rim of a hole)
barely pulls. Samples outside the (cropped) mask image carry no data: a partial organ is completed
by the prior.
"""

from __future__ import annotations

import numpy as np
import torch

from ..geometry import nearest_distances, sample_surface
from ..prep.mask_distance import DistanceSampler, PreparedMask, boundary_points

BOUNDARY_WEIGHT = 0.3  # of the boundary -> surface term, relative to surface -> boundary
BOUNDARY_POINTS = 1500  # boundary points drawn per step
# Graduated non-convexity: the robust scale starts this many times larger and shrinks over
# ``anneal_steps`` calls, so a far-off start is still pulled in before outliers are ignored.
ANNEAL_FACTOR = 8.0


def annealed_scale(scale: float, step: int, anneal_steps: int) -> float:
    """The Cauchy scale at ``step``: ``ANNEAL_FACTOR * scale`` at 0, down linearly to ``scale``."""
    left = max(0.0, 1.0 - step / max(anneal_steps, 1))
    return scale * (1.0 + (ANNEAL_FACTOR - 1.0) * left)


def cauchy(residual: torch.Tensor, scale: float) -> torch.Tensor:
    """Mean Cauchy (Lorentzian) loss ``c^2 log(1 + (r / c)^2)``: r^2 near 0 (like a squared
    chamfer term), growing only logarithmically beyond the scale ``c``."""
    return scale**2 * torch.log1p((residual / scale) ** 2).mean() if len(residual) else residual.sum()


class MaskTask:
    """A ``fit.dals_fit.Task``: fit the surface to a prepared mask (LPS mm)."""

    def __init__(self, prepared: PreparedMask, samples: int, unit_mm: float, robust_mm: float, anneal_steps: int):
        self.sampler = DistanceSampler(np.abs(prepared.sdf_mm), prepared.mask)
        self.points = boundary_points(prepared)
        self._boundary = torch.tensor(self.points, dtype=torch.float32)
        self.samples = samples
        self.robust = robust_mm / unit_mm
        self.unit_mm = unit_mm
        self.anneal_steps = anneal_steps
        self.calls = 0

    def loss(self, verts: torch.Tensor, faces: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        robust = annealed_scale(self.robust, self.calls, self.anneal_steps)
        self.calls += 1
        surface = sample_surface(verts, faces, self.samples, generator=g)
        distance, valid = self.sampler(surface)
        to_boundary = cauchy(distance[valid] / self.unit_mm, robust)
        pick = torch.randint(len(self._boundary), (min(BOUNDARY_POINTS, len(self._boundary)),), generator=g)
        to_surface = nearest_distances(self._boundary[pick], surface) / self.unit_mm
        return to_boundary + BOUNDARY_WEIGHT * cauchy(to_surface, robust)
