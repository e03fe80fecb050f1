"""Masks with typical CNN failures, made reproducibly from true masks, and the held-out livers voxelised.

Sizes scale with the organ; every random choice comes from a seed (the benchmark derives it from
the case name), so a re-run scores the same masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..io import read_mesh
from ..io.labelmaps import mesh_to_labelmap

FAILURES = ("thick slices i", "thick slices j", "thick slices k", "leak", "hole", "cut-off")
THICK_EVERY = 4  # keep every 4th slice
LIVER_SPACING_MM = 2.0


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def failure_mask(truth: sitk.Image, failure: str, seed: int) -> sitk.Image:
    """A CNN-like failure of the true mask (uint8 on its grid); sizes scale with the organ.

    - thick slices i / j / k: every 4th slice across that image axis kept, each repeated over its
      neighbours (nearest upsampling);
    - leak: a ball of radius 0.2 x the organ's extent attached outside at a random boundary voxel;
    - hole: a ball of radius 0.15 x the organ's extent removed around the deepest voxel (it may open to the surface);
    - cut-off: the 20% of the voxels farthest along a random direction removed.
    """
    array = sitk.GetArrayFromImage(truth) > 0
    g = np.random.default_rng(seed)
    spacing = np.array(truth.GetSpacing()[::-1])
    kji = np.argwhere(array)
    mm = kji * spacing
    if failure.startswith("thick slices "):
        axis = 2 - "ijk".index(failure[-1])  # image axis i is array axis 2
        # Slices 0, 4, 8, ... kept; each slice copies the nearest kept one (ties go up).
        kept = (np.arange(array.shape[axis]) + THICK_EVERY // 2) // THICK_EVERY * THICK_EVERY
        return _like(np.take(array, kept.clip(0, array.shape[axis] - 1), axis=axis), truth)
    grid_mm = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(array.shape, spacing)], indexing="ij"), -1)
    if failure == "leak":
        boundary = np.argwhere(array & ~ndimage.binary_erosion(array)) * spacing
        point = boundary[g.integers(len(boundary))]
        outward = point - mm.mean(0)
        radius = 0.2 * np.ptp(mm, 0).max()
        centre = point + radius * outward / max(np.linalg.norm(outward), 1e-6)
        return _like(array | (np.linalg.norm(grid_mm - centre, axis=-1) < radius), truth)
    if failure == "hole":
        depth = ndimage.distance_transform_edt(array, sampling=spacing)
        centre = np.unravel_index(np.argmax(depth), array.shape) * spacing
        radius = 0.15 * np.ptp(mm, 0).max()
        return _like(array & (np.linalg.norm(grid_mm - centre, axis=-1) >= radius), truth)
    if failure == "cut-off":
        direction = g.normal(size=3)
        direction /= np.linalg.norm(direction)
        along = (grid_mm - mm.mean(0)) @ direction
        return _like(array & (along < np.percentile(mm @ direction - mm.mean(0) @ direction, 80)), truth)
    raise ValueError(f"unknown failure {failure!r}")


def liver_truth(path: Path, mesh_frame: str = "LPS") -> sitk.Image:
    """A held-out liver surface (read in ``mesh_frame``) voxelised on a 2 mm grid around it (LPS mm,
    identity directions)."""
    mesh = read_mesh(path, mesh_frame)
    lo = mesh.bounds[0] - 10.0
    size = np.ceil((mesh.bounds[1] + 10.0 - lo) / LIVER_SPACING_MM).astype(int)
    reference = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    reference.SetSpacing([LIVER_SPACING_MM] * 3)
    reference.SetOrigin(lo.tolist())
    return mesh_to_labelmap(mesh, reference)
