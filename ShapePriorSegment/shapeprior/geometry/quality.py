"""Triangle shape quality: 1 for equilateral, 0 for degenerate triangles."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .sampling import face_areas


def triangle_quality(verts: Tensor, faces: Tensor, eps: float = 1e-12) -> Tensor:
    """Per-face quality ``q = 4 sqrt(3) A / (a^2 + b^2 + c^2)`` (scale invariant).

    Args:
        verts: (V, 3) or (B, V, 3) vertex positions.
        faces: (F, 3) int64 vertex indices.
        eps: added to the denominator so collapsed faces give 0 rather than NaN.

    Returns:
        (F,) or (B, F) qualities in [0, 1].
    """
    corners = verts[..., faces, :]
    edges = corners - corners.roll(1, dims=-2)  # (..., F, 3 edges, 3)
    return 4 * math.sqrt(3) * face_areas(verts, faces) / ((edges**2).sum((-2, -1)) + eps)


def quality_loss(verts: Tensor, faces: Tensor) -> Tensor:
    """``1 - mean(q)`` over faces: 0 for an all-equilateral mesh.

    Args:
        verts: (V, 3) or (B, V, 3) vertex positions.
        faces: (F, 3) int64 vertex indices.

    Returns:
        () or (B,) loss, unitless.
    """
    return 1 - triangle_quality(verts, faces).mean(-1)
