"""The one marching-cubes helper: an iso-surface of a voxel array, placed in space, faces outward."""

from __future__ import annotations

import numpy as np
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
