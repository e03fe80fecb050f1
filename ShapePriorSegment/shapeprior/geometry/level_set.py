"""The one marching-cubes helper: an iso-surface of a voxel array, placed in space, faces outward;
and the zero level of an implicit field, sampled coarse to fine."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import trimesh
from skimage.measure import marching_cubes


def level_set_mesh(volume_kji: np.ndarray, level: float, index_to_space: np.ndarray) -> trimesh.Trimesh:
    """The ``level`` iso-surface of a (K, J, I) array (SimpleITK's axis order).

    ``index_to_space`` (4x4) maps continuous voxel indices (i, j, k) to space, e.g. LPS mm. Faces
    point outward (positive volume) whatever the map's handedness and whether the field grows
    inward (a mask) or outward (a signed distance). Empty when the array never crosses ``level``.
    """
    if not volume_kji.min() < level < volume_kji.max():
        return trimesh.Trimesh()
    verts_kji, faces, _, _ = marching_cubes(volume_kji, level=level)
    verts = verts_kji[:, ::-1] @ index_to_space[:3, :3].T + index_to_space[:3, 3]
    mesh = trimesh.Trimesh(verts, faces, process=False)
    if mesh.volume < 0:
        mesh.invert()
    return mesh


@torch.no_grad()
def field_grid(field: Callable[[torch.Tensor], torch.Tensor], resolution: int = 96, radius: float = 1.05,
               band_cells: float = 2.0, chunk: int = 65536) -> tuple[np.ndarray, float]:
    """A signed-distance ``field`` ((N, 3) points -> (N,)) on a ``resolution``^3 grid over [-radius, radius]^3.

    The field runs on a grid 4x coarser first; fine points are evaluated only where the coarse
    value is within ``band_cells`` coarse cells of zero, elsewhere the coarse field is
    interpolated (its sign is all marching cubes needs there).

    Returns ``(values (R, R, R) float32, spacing)`` with grid index i at ``-radius + i * spacing``
    (array axes x, y, z).
    """

    def evaluate(points: torch.Tensor) -> torch.Tensor:
        return torch.cat([field(p) for p in points.split(chunk)]) if len(points) else points[:, 0]

    coarse_res = max(8, resolution // 4)
    axis = torch.linspace(-radius, radius, coarse_res)
    coarse = evaluate(torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3))
    coarse = coarse.reshape(1, 1, coarse_res, coarse_res, coarse_res)
    fine = torch.nn.functional.interpolate(coarse, size=(resolution,) * 3, mode="trilinear", align_corners=True)[0, 0]
    coarse_cell = 2 * radius / (coarse_res - 1)
    near = fine.abs() < band_cells * coarse_cell
    spacing = 2 * radius / (resolution - 1)
    fine[near] = evaluate(-radius + near.nonzero().float() * spacing)
    return fine.numpy(), spacing


def field_mesh(field: Callable[[torch.Tensor], torch.Tensor], resolution: int = 96, radius: float = 1.05
               ) -> trimesh.Trimesh:
    """Zero level set of a signed-distance ``field`` (see :func:`field_grid`), in the field's
    coordinates; empty mesh if there is none."""
    values, spacing = field_grid(field, resolution, radius)
    # values[a, b, c] is at (a, b, c) * spacing - radius: array axes are x, y, z.
    to_space = np.zeros((4, 4))
    to_space[[0, 1, 2], [2, 1, 0]] = spacing
    to_space[:3, 3] = -radius
    return level_set_mesh(values, 0.0, to_space)
