"""Non-learned surfaces from planar contours, the baselines DALS must beat. LPS mm throughout."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import trimesh
from scipy.interpolate import RBFInterpolator
from skimage.draw import polygon as fill_polygon

from ..fit.contours import Plane
from ..prep.surface import mask_to_surface


def convex_hull(planes: list[Plane]) -> trimesh.Trimesh:
    """Convex hull of all curve points."""
    return trimesh.convex.convex_hull(np.concatenate([p.points for p in planes]))


def _in_plane_normals(curve: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Unit in-plane normals (N, 3) of a closed curve, pointing out of the region it encloses."""
    tangent = np.roll(curve, -1, axis=0) - np.roll(curve, 1, axis=0)
    out = np.cross(tangent, normal)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    # Signed area about the plane normal tells the curve's turning direction.
    area = np.cross(curve - curve.mean(0), np.roll(curve, -1, axis=0) - curve.mean(0)).sum(0) @ normal
    return out if area > 0 else -out


def rbf_surface(planes: list[Plane], offset_mm: float = 3.0, grid_mm: float = 3.0, max_points: int = 300) -> trimesh.Trimesh:
    """Variational implicit surface: a thin-plate RBF through the curves (value 0)
    with off-curve constraints +-offset along in-plane normals, meshed at 0."""
    centres, values = [], []
    for plane in planes:
        for curve in plane.curves:
            step = max(1, len(curve) * len(planes) // max_points)
            pts = curve[::step]
            normals = _in_plane_normals(curve, plane.normal)[::step]
            centres += [pts, pts + offset_mm * normals, pts - offset_mm * normals]
            values += [np.zeros(len(pts)), np.full(len(pts), offset_mm), np.full(len(pts), -offset_mm)]
    centres, values = np.concatenate(centres), np.concatenate(values)
    rbf = RBFInterpolator(centres, values, kernel="thin_plate_spline", smoothing=1e-3)
    lo, hi = centres.min(0) - 20, centres.max(0) + 20
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
