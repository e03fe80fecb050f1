"""Non-learned surfaces from planar contours, the baselines DALS must beat. LPS mm throughout."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import trimesh
from skimage.draw import polygon as fill_polygon

from ..fit.contour_interpolation import contour_interpolant
from ..fit.contours import Plane
from ..prep.surface import mask_to_surface


def convex_hull(planes: list[Plane]) -> trimesh.Trimesh:
    """Convex hull of all curve points."""
    return trimesh.convex.convex_hull(np.concatenate([p.points for p in planes]))


def rbf_surface(planes: list[Plane], offset_mm: float = 3.0, grid_mm: float = 3.0, max_points: int = 300) -> trimesh.Trimesh:
    """Variational implicit surface: the curves' thin-plate interpolant, meshed at 0."""
    rbf = contour_interpolant(planes, offset_mm, max_points)
    lo, hi = rbf.y.min(0) - 20, rbf.y.max(0) + 20
    axes = [np.arange(lo[a], hi[a], grid_mm) for a in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    field = rbf(grid).reshape([len(a) for a in axes])
    return _grid_surface(field < 0, lo, grid_mm)


def _grid_surface(inside_ijk: np.ndarray, origin: np.ndarray, grid_mm: float) -> trimesh.Trimesh:
    image = sitk.GetImageFromArray(np.ascontiguousarray(inside_ijk.transpose(2, 1, 0)).astype(np.uint8))
    image.SetSpacing([grid_mm] * 3)
    image.SetOrigin([float(v) for v in origin])
    return mask_to_surface(image, smoothing_mm=grid_mm / 2, interpolate=False, target_vertices=None)


def fill_between_slices(planes: list[Plane], grid_mm: float = 2.0) -> trimesh.Trimesh:
    """Slicer's 'Fill between slices': ITK morphological contour interpolation of the
    painted slices. Needs planes normal to the patient axes (the usual axial, coronal
    and sagittal views); oblique planes are skipped."""
    import itk

    pts = np.concatenate([p.points for p in planes])
    lo = pts.min(0) - 3 * grid_mm
    shape = np.ceil((pts.max(0) + 3 * grid_mm - lo) / grid_mm).astype(int)
    volume = np.zeros(shape, dtype=np.uint8)  # (i, j, k) on the LPS axes
    for plane in planes:
        axis = int(np.argmax(np.abs(plane.normal)))
        if abs(plane.normal[axis]) < 0.999:
            continue
        index = int(round((plane.origin[axis] - lo[axis]) / grid_mm))
        others = [a for a in range(3) if a != axis]
        region = np.zeros([shape[a] for a in others], dtype=bool)
        for curve in plane.curves:
            ij = (curve[:, others] - lo[others]) / grid_mm
            rr, cc = fill_polygon(ij[:, 0], ij[:, 1], region.shape)
            region[rr, cc] ^= True  # even-odd: nested curves make holes
        np.moveaxis(volume, axis, 0)[index] |= region
    image = itk.image_from_array(np.ascontiguousarray(volume.transpose(2, 1, 0)))
    # Multithreaded, ITK's MorphologicalContourInterpolator corrupts the heap (the process aborts
    # later, often at exit: "malloc_consolidate(): unaligned fastbin chunk detected"): one thread.
    threads = itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads()
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)
    try:
        filled = itk.array_from_image(itk.morphological_contour_interpolator(image)).transpose(2, 1, 0)
    finally:
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(threads)
    return _grid_surface(filled > 0, lo, grid_mm)
