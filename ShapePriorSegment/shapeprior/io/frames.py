"""The one place for patient frames and voxel grids: Slicer works in RAS, files and the core in LPS (mm).

RAS <-> LPS negates x and y: a half-turn about z (determinant +1), its own inverse, so
triangles keep their winding when converted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only named in annotations: markups read without loading ITK
    import SimpleITK as sitk

RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])  # multiply (N, 3) points by it, either way
RAS_LPS_4 = np.diag([*RAS_TO_LPS, 1.0])  # the same for 4x4 homogeneous matrices


def index_to_physical(mask: sitk.Image) -> np.ndarray:
    """4x4 matrix mapping continuous voxel indices (i, j, k) to LPS millimetres."""
    m = np.eye(4)
    direction = np.array(mask.GetDirection()).reshape(3, 3)
    m[:3, :3] = direction * np.array(mask.GetSpacing())
    m[:3, 3] = mask.GetOrigin()
    return m


def index_to_lps(image: sitk.Image, ijk: np.ndarray) -> np.ndarray:
    """Continuous voxel indices (N, 3) in (i, j, k) order -> LPS mm (N, 3)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return (np.asarray(ijk) * np.array(image.GetSpacing())) @ direction.T + np.array(image.GetOrigin())


def lps_to_index(image: sitk.Image, points: np.ndarray) -> np.ndarray:
    """LPS mm (N, 3) -> continuous voxel indices (N, 3) in (i, j, k) order (inverse of :func:`index_to_lps`)."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return (np.asarray(points) - np.array(image.GetOrigin())) @ direction / np.array(image.GetSpacing())


def image_bounds(image: sitk.Image) -> np.ndarray:
    """(2, 3) the LPS mm box (low, high corners) around the image's voxel centres."""
    size = np.array(image.GetSize()) - 1
    corners = np.array([[i, j, k] for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])], dtype=float)
    points = index_to_lps(image, corners)
    return np.stack([points.min(0), points.max(0)])
