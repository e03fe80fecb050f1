"""Overlap and surface-distance metrics on binary voxel masks (distances in millimetres)."""

from __future__ import annotations

import numpy as np
import trimesh
from scipy import ndimage

from ..geometry.level_set import level_set_mesh
from .surface import surface_metrics


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap ``2 |a & b| / (|a| + |b|)`` of two same-shape boolean masks; 1.0 if both are empty."""
    a, b = _pair(a, b)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def hd95_voxel(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """95th-percentile Hausdorff distance in mm between the masks' surface voxels.

    The max of the two directed 95th percentiles; surface voxels are those removed by one
    6-connected erosion. ``spacing`` is the voxel size per array axis, in mm. NaN if either
    mask is empty.
    """
    a_to_b, b_to_a = _surface_distances(a, b, spacing)
    if len(a_to_b) == 0 or len(b_to_a) == 0:
        return float("nan")
    return float(max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95)))


def assd_voxel(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Average symmetric surface distance in mm: the mean of the pooled distances of both
    directions between surface voxels (as in :func:`hd95_voxel`). NaN if either mask is empty.
    """
    a_to_b, b_to_a = _surface_distances(a, b, spacing)
    if len(a_to_b) == 0 or len(b_to_a) == 0:
        return float("nan")
    return float(np.concatenate([a_to_b, b_to_a]).mean())


def mask_surface(mask: np.ndarray, spacing: tuple[float, float, float]) -> trimesh.Trimesh:
    """The marching-cubes surface of a boolean mask at level 0.5, in mm along the array axes.

    It runs midway between inside and outside voxel centres and cuts corners diagonally, so
    distances between two such surfaces are not confined to the few values voxel distances take.
    """
    # (i, j, k) of the padded array are its axes 2, 1, 0; one voxel of padding is undone.
    to_axes = np.zeros((4, 4))
    to_axes[[0, 1, 2], [2, 1, 0]] = spacing
    to_axes[:3, 3] = -np.asarray(spacing, dtype=np.float64)
    return level_set_mesh(np.pad(np.asarray(mask, dtype=np.float32), 1), 0.5, to_axes)


def surface_distances_of_masks(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]) -> dict:
    """Sub-voxel ``hd95_mm``, ``assd_mm`` and ``chamfer_normalised`` (b the reference) between the masks'
    :func:`mask_surface` surfaces (as :func:`~shapeprior.metrics.surface_metrics` defines them); NaN if
    either mask is empty."""
    keys = ("hd95_mm", "assd_mm", "chamfer_normalised")
    a, b = _pair(a, b)
    if not a.any() or not b.any():
        return dict.fromkeys(keys, float("nan"))
    metrics = surface_metrics(mask_surface(a, spacing), mask_surface(b, spacing))
    return {k: metrics[k] for k in keys}


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    return a, b


def _surface_distances(
    a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of a to the nearest of b, and vice versa."""
    a, b = _pair(a, b)
    surface_a = a & ~ndimage.binary_erosion(a)
    surface_b = b & ~ndimage.binary_erosion(b)
    if not surface_a.any() or not surface_b.any():
        return np.empty(0), np.empty(0)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)
    return to_b[surface_a], to_a[surface_b]
