"""Area-weighted random points on triangle meshes, differentiable w.r.t. the vertices."""

from __future__ import annotations

import torch
from torch import Tensor


def face_areas(verts: Tensor, faces: Tensor) -> Tensor:
    """Triangle areas.

    Args:
        verts: (V, 3) or (B, V, 3) vertex positions.
        faces: (F, 3) int64 vertex indices.

    Returns:
        (F,) or (B, F) areas, in the units of verts squared.
    """
    corners = verts[..., faces, :]  # (..., F, 3 corners, 3)
    normal = torch.linalg.cross(corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 0, :])
    return 0.5 * torch.linalg.vector_norm(normal, dim=-1)


def sample_surface(
    verts: Tensor, faces: Tensor, num_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Points uniformly distributed over the mesh surface.

    Faces are drawn with probability proportional to their area (per batch element,
    without gradient through the choice); the point within a face is uniform
    (barycentric coordinates by the square-root trick).

    Args:
        verts: (V, 3) or (B, V, 3) vertex positions.
        faces: (F, 3) int64 vertex indices.
        num_samples: N, points per mesh.
        generator: for reproducible draws; must live on verts' device.

    Returns:
        (N, 3) or (B, N, 3) points in the units of verts, differentiable w.r.t. verts.
    """
    with torch.no_grad():
        areas = face_areas(verts, faces)
    chosen = torch.multinomial(areas, num_samples, replacement=True, generator=generator)  # (..., N)
    r1, r2 = torch.rand((*chosen.shape, 2), generator=generator, dtype=verts.dtype, device=verts.device).unbind(-1)
    # sqrt(r1) makes the density uniform in area rather than concentrated at corner 0.
    s = r1.sqrt()
    weights = torch.stack([1 - s, s * (1 - r2), s * r2], dim=-1)  # (..., N, 3)
    corners = torch.take_along_dim(verts[..., faces, :], chosen[..., None, None], dim=-3)  # (..., N, 3, 3)
    return (weights[..., None] * corners).sum(-2)
