"""Unit icosphere: the template surface that shape models deform."""

from __future__ import annotations

import torch
import trimesh
from torch import Tensor


def icosphere(
    level: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Subdivided icosahedron projected onto the unit sphere.

    Args:
        level: number of subdivisions; 10 * 4**level + 2 vertices (level 3 -> 642, level 4 -> 2562).
        dtype, device: of the returned vertices.

    Returns:
        verts: (V, 3) points of norm 1 (unitless; radius 1).
        faces: (F, 3) int64 vertex indices, counter-clockwise seen from outside
            (normals point outwards).
    """
    if level < 0:
        raise ValueError(f"icosphere level must be >= 0, got {level}")
    mesh = trimesh.creation.icosphere(subdivisions=level, radius=1.0)
    verts = torch.as_tensor(mesh.vertices, dtype=dtype, device=device)
    faces = torch.as_tensor(mesh.faces, dtype=torch.int64, device=device)
    return verts, faces
