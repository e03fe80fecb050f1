"""Planar contours: resampling, grouping into planes, checks. All points LPS mm."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import CubicSpline

from ..errors import InputError

PARALLEL_COS = np.cos(np.deg2rad(10.0))  # planes closer than 10 degrees count as parallel
SAME_PLANE_COS = np.cos(np.deg2rad(3.0))


@dataclass
class Plane:
    """A cutting plane and the closed curves drawn on it (LPS mm)."""

    origin: np.ndarray  # (3,) a point on the plane
    normal: np.ndarray  # (3,) unit normal
    curves: list[np.ndarray] = field(default_factory=list)  # each (N_i, 3), densely resampled
    curve_ids: list[int] = field(default_factory=list)  # index of each curve in the input order

    @property
    def points(self) -> np.ndarray:
        return np.concatenate(self.curves)


def resample_closed_curve(points: np.ndarray, spacing_mm: float = 1.0) -> np.ndarray:
    """Points every ``spacing_mm`` along the closed curve through ``points`` (N, 3).

    A periodic cubic spline in chord-length parameter, like Slicer's closed-curve
    interpolation, so sparse control points give a smooth curve; dense polylines
    (contours of painted slices) pass through unchanged.
    """
    pts = np.asarray(points, dtype=np.float64)
    if np.linalg.norm(pts[0] - pts[-1]) < 1e-9:
        pts = pts[:-1]
    closed = np.vstack([pts, pts[:1]])
    chord = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    keep = np.concatenate([[True], chord > 1e-9])  # drop repeated points, the spline needs increasing t
    closed, t = closed[keep], np.concatenate([[0.0], np.cumsum(chord[chord > 1e-9])])
    spline = CubicSpline(t, closed, bc_type="periodic")
    dense_t = np.linspace(0, t[-1], 20 * len(closed))
    dense = spline(dense_t)
    length = np.linalg.norm(np.diff(dense, axis=0), axis=1).sum()
    count = max(16, int(np.ceil(length / spacing_mm)))
    return spline(np.linspace(0, t[-1], count, endpoint=False))


def curve_plane(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(centroid, unit normal, max distance of a point from the plane) by SVD."""
    centroid = points.mean(0)
    _, _, vt = np.linalg.svd(points - centroid)
    normal = vt[2]
    return centroid, normal, float(np.abs((points - centroid) @ normal).max())


def group_planes(curves: list[np.ndarray], source: str = "contours", tolerance_mm: float = 1.5) -> list[Plane]:
    """Resample curves and group those lying on a common plane.

    Raises InputError for NaN points, curves with < 3 points, non-planar curves, or
    fewer than two non-parallel planes.
    """
    planes: list[Plane] = []
    for i, raw in enumerate(curves):
        raw = np.asarray(raw, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] != 3 or len(raw) < 3:
            raise InputError(source, f"curve {i + 1} has fewer than 3 points")
        if not np.isfinite(raw).all():
            raise InputError(source, f"curve {i + 1} has NaN or infinite coordinates")
        centroid, normal, off_plane = curve_plane(raw)
        extent = float(np.ptp(raw, axis=0).max())
        if extent <= 0:
            raise InputError(source, f"curve {i + 1} has all its points at one place")
        if off_plane > max(tolerance_mm, 0.02 * extent):
            raise InputError(source, f"curve {i + 1} is not planar (points up to {off_plane:.1f} mm off its plane)")
        dense = resample_closed_curve(raw)
        for plane in planes:
            if abs(plane.normal @ normal) > SAME_PLANE_COS and abs((centroid - plane.origin) @ plane.normal) < tolerance_mm:
                plane.curves.append(dense)
                plane.curve_ids.append(i)
                break
        else:
            planes.append(Plane(centroid, normal, [dense], [i]))
    normals = np.array([p.normal for p in planes])
    if len(planes) < 2 or np.abs(normals @ normals.T).min() > PARALLEL_COS:
        raise InputError(source, "contours must lie on at least two non-parallel planes")
    return planes
