"""Normalisation of aligned shapes into the model's unit sphere."""

from __future__ import annotations

import numpy as np
import trimesh

from ..transform import Similarity

# Shapes fill the unit sphere up to this radius, leaving room for SDF samples around them.
UNIT_RADIUS = 1.0 / 1.03


def unit_sphere_transform(mesh: trimesh.Trimesh, radius: float = UNIT_RADIUS) -> Similarity:
    """Translation + uniform scale taking ``mesh``'s minimum bounding sphere to the
    sphere of ``radius`` at the origin (no rotation)."""
    sphere = mesh.bounding_sphere.primitive
    scale = radius / float(sphere.radius)
    return Similarity(scale, np.eye(3), -scale * np.asarray(sphere.center, dtype=np.float64))


def transformed(mesh: trimesh.Trimesh, transform: Similarity) -> trimesh.Trimesh:
    """A copy of ``mesh`` with vertices mapped by ``transform`` (orientation kept: no reflection)."""
    return trimesh.Trimesh(transform.apply(np.asarray(mesh.vertices)), mesh.faces.copy(), process=False)
