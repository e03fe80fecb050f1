"""Triangle shape quality: 1 for equilateral, 0 for degenerate triangles."""

from __future__ import annotations

import math

import torch
import trimesh
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


def face_pairs(faces: Tensor) -> Tensor:
    """(E, 2) indices of the two faces sharing each interior edge (trimesh's face adjacency)."""
    pairs = trimesh.graph.face_adjacency(faces=faces.detach().cpu().numpy())
    return torch.as_tensor(pairs, dtype=torch.long, device=faces.device)


def normal_consistency_loss(verts: Tensor, faces: Tensor, pairs: Tensor | None = None) -> Tensor:
    """Mean ``1 - cos`` of the angle between the normals of faces sharing an edge.

    0 for a plane, small for a smooth surface, up to 2 where the surface folds back
    on itself: the term that keeps decoded surfaces free of folds.

    Args:
        verts: (V, 3) or (B, V, 3) vertex positions.
        faces: (F, 3) int64 vertex indices.
        pairs: (E, 2) from :func:`face_pairs` (computed if not given).

    Returns:
        () or (B,) loss, unitless.
    """
    pairs = face_pairs(faces) if pairs is None else pairs
    corners = verts[..., faces, :]
    normals = torch.nn.functional.normalize(
        torch.cross(corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 0, :], dim=-1), dim=-1
    )
    cos = (normals[..., pairs[:, 0], :] * normals[..., pairs[:, 1], :]).sum(-1)
    return (1 - cos).mean(-1)
