"""Planar contours: resampling, grouping into planes, checks. All points LPS mm."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from ..errors import InputError

PARALLEL_COS = np.cos(np.deg2rad(10.0))  # planes closer than 10 degrees count as parallel
SAME_PLANE_COS = np.cos(np.deg2rad(3.0))
# An annotation is a few to a few dozen curves; more (a contour on every slice of a
# volume) would make grouping, which compares each curve with each plane, slow.
MAX_CURVES = 500
# Resampled points per curve: 5 m of curve at 1 mm. Only absurd inputs reach it; it
# bounds the memory of everything downstream whatever the curve's length.
MAX_RESAMPLED_POINTS = 5000
# Spline samples for measuring a curve's length: 20 per control point, at most this many.
MAX_LENGTH_SAMPLES = 100_000
# A closed curve whose points spread less than this fraction of their length across
# it encloses nothing: they lie on a line (a 100 mm long curve must be 0.1 mm wide).
MIN_WIDTH_RATIO = 1e-3
# A curve crossing itself around a loop shorter than this fraction of its length has a
# twist, as when the last point placed overshoots the first: harmless and common when
# closing a curve by hand. A figure 8's loops are each about half of it.
TWIST_FRACTION = 0.05
# Edge pairs tested at once when looking for crossings: bounds the temporaries to ~100 MB.
PAIR_CHUNK = 1_000_000


@dataclass
class Plane:
    """A cutting plane and the closed curves drawn on it (LPS mm)."""

    origin: np.ndarray  # (3,) a point on the plane
    normal: np.ndarray  # (3,) unit normal
    curves: list[np.ndarray] = field(default_factory=list)  # each (N_i, 3): resampled by group_planes
    curve_ids: list[int] = field(default_factory=list)  # index of each curve in the input order

    @property
    def points(self) -> np.ndarray:
        return np.concatenate(self.curves)


def distinct_loop(points: np.ndarray) -> np.ndarray:
    """The closed polygon's points (N, D) without consecutive repeats (the last point
    repeating the first included)."""
    points = np.asarray(points, dtype=np.float64)
    return points[np.linalg.norm(points - np.roll(points, -1, axis=0), axis=1) > 1e-9]


def resample_closed_curve(points: np.ndarray, spacing_mm: float = 1.0) -> np.ndarray:
    """Points (M, 3) every ``spacing_mm`` along the closed curve through ``points`` (N, 3);
    16 <= M <= :data:`MAX_RESAMPLED_POINTS` (longer curves get a wider spacing).

    A periodic cubic spline in chord-length parameter, like Slicer's closed-curve
    interpolation, so sparse control points give a smooth curve; dense polylines
    (contours of painted slices) pass through unchanged.
    """
    from scipy.interpolate import CubicSpline  # here: refusing bad curves needs only numpy, and comes at once

    loop = distinct_loop(points)
    closed = np.vstack([loop, loop[:1]])
    t = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
    spline = CubicSpline(t, closed, bc_type="periodic")
    dense = spline(np.linspace(0, t[-1], min(20 * len(closed), MAX_LENGTH_SAMPLES)))
    length = np.linalg.norm(np.diff(dense, axis=0), axis=1).sum()
    count = int(np.clip(np.ceil(length / spacing_mm), 16, MAX_RESAMPLED_POINTS))
    return spline(np.linspace(0, t[-1], count, endpoint=False))


def curve_plane(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(centroid, unit normal, max distance of a point from the plane) of ``points`` (N, 3) by SVD.

    The thin SVD: its U is (N, 3), not (N, N), so long curves need no more memory than their points.
    """
    centroid = points.mean(0)
    _, _, vt = np.linalg.svd(points - centroid, full_matrices=False)
    normal = vt[2]
    return centroid, normal, float(np.abs((points - centroid) @ normal).max())


def plane_coordinates(points: np.ndarray, origin: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """``points`` (N, 3) as (N, 2) coordinates (mm) in an orthonormal basis of the plane through
    ``origin`` with unit ``normal``."""
    helper = np.eye(3)[int(np.argmin(np.abs(normal)))]
    u = np.cross(normal, helper)
    u /= np.linalg.norm(u)
    return (points - origin) @ np.stack([u, np.cross(normal, u)], axis=1)


def _side(a: np.ndarray, b: np.ndarray, c: np.ndarray, tolerance: float) -> np.ndarray:
    """Sign (-1, 0, 1) of the turn a -> b -> c for rows of (K, 2) points; 0 within ``tolerance``."""
    turn = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    return np.where(np.abs(turn) <= tolerance, 0, np.sign(turn))


def _overlapping_pairs(lo: np.ndarray, hi: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Index pairs (i, j), i < j, of the intervals [lo, hi] (sorted by ``lo``) that overlap,
    in chunks of at most :data:`PAIR_CHUNK` pairs (or one interval's)."""
    counts = np.searchsorted(lo, hi, side="right") - np.arange(len(lo)) - 1  # later intervals starting inside
    total = np.concatenate([[0], np.cumsum(counts)])
    begin = 0
    while begin < len(lo):
        end = max(begin + 1, int(np.searchsorted(total, total[begin] + PAIR_CHUNK, side="right")) - 1)
        block = counts[begin:end]
        first = np.repeat(np.arange(begin, end), block)
        offset = np.arange(len(first)) - np.repeat(total[begin:end] - total[begin], block)
        yield first, first + 1 + offset
        begin = end


def _coincident(points: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) of rows of ``points`` (E, 2) at one place (within ~1e-9 of ``scale``)."""
    keys = np.round(points / (1e-9 * scale))
    order = np.lexsort(keys.T)
    same = np.all(keys[order[1:]] == keys[order[:-1]], axis=1)
    return order[:-1][same], order[1:][same]


def _edges_cross(starts: np.ndarray, ends: np.ndarray, i: np.ndarray, j: np.ndarray, tolerance: float) -> np.ndarray:
    """Whether edges ``i`` and ``j`` (index arrays into (E, 2) ``starts``/``ends``) cross strictly:
    neighbouring edges, whose shared corner gives a 0, never do."""
    return ((_side(starts[i], ends[i], starts[j], tolerance) * _side(starts[i], ends[i], ends[j], tolerance) < 0)
            & (_side(starts[j], ends[j], starts[i], tolerance) * _side(starts[j], ends[j], ends[i], tolerance) < 0))


def first_crossing(polygons: list[np.ndarray]) -> tuple[int, int] | None:
    """Indices (a, b) of two closed polygons (each (N_i, 2), no consecutive repeats) whose edges
    cross or that pass through one corner twice, a == b when one crosses itself; None if none do.

    Edges that merely touch or run along each other (collinear within rounding) do not count,
    so straight runs of dense contours are no crossings; nor do twists around a small loop
    (:data:`TWIST_FRACTION`). Sweep and prune: only edges whose extents overlap along the wider
    axis are tested, so time and memory grow with the number of edges, not its square, for any
    curve drawn by hand.
    """
    starts = np.concatenate(polygons)
    ends = np.concatenate([np.roll(p, -1, axis=0) for p in polygons])
    owner = np.repeat(np.arange(len(polygons)), [len(p) for p in polygons])
    lengths = np.linalg.norm(ends - starts, axis=1)
    perimeter = np.bincount(owner, lengths)
    first_arc = np.concatenate([[0.0], np.cumsum(perimeter)[:-1]])[owner]
    arc = np.cumsum(lengths) - lengths - first_arc  # along its polygon, at each edge's start

    def counted(i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Pairs of two polygons, or around loops (the edges strictly between) not too short."""
        early, late = np.where(arc[i] <= arc[j], i, j), np.where(arc[i] <= arc[j], j, i)
        inner = arc[late] - arc[early] - lengths[early]
        outer = perimeter[owner[i]] - arc[late] - lengths[late] + arc[early]
        return (owner[i] != owner[j]) | (np.minimum(inner, outer) >= TWIST_FRACTION * perimeter[owner[i]])

    extent = np.ptp(starts, axis=0)
    axis, tolerance = int(np.argmax(extent)), 1e-12 * float(extent.max()) ** 2
    lo, hi = np.minimum(starts[:, axis], ends[:, axis]), np.maximum(starts[:, axis], ends[:, axis])
    order = np.argsort(lo, kind="stable")
    pairs = ((order[first], order[second]) for first, second in _overlapping_pairs(lo[order], hi[order]))
    corners = _coincident(starts, float(extent.max()))
    candidates = itertools.chain(((i, j, _edges_cross(starts, ends, i, j, tolerance)) for i, j in pairs),
                                 [(*corners, np.ones(len(corners[0]), dtype=bool))])
    for i, j, meet in candidates:
        found = np.flatnonzero(meet & counted(i, j))
        if len(found):
            return int(owner[i[found[0]]]), int(owner[j[found[0]]])
    return None


def _check_curve(raw, index: int, source: str, tolerance_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points (N, 3), centroid, normal) of curve ``index`` if it has 3 finite points spread on a plane."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != 3 or len(raw) < 3:
        raise InputError(source, f"curve {index + 1} has fewer than 3 points")
    if not np.isfinite(raw).all():
        raise InputError(source, f"curve {index + 1} has NaN or infinite coordinates")
    extent = float(np.ptp(raw, axis=0).max())
    if extent <= 0:
        raise InputError(source, f"curve {index + 1} has all its points at one place")
    centroid, normal, off_plane = curve_plane(raw)
    if off_plane > max(tolerance_mm, 0.02 * extent):
        raise InputError(source, f"curve {index + 1} is not planar (points up to {off_plane:.1f} mm off its plane)")
    return raw, centroid, normal


def _check_plane_curves(plane: Plane, source: str) -> None:
    """Refuse a curve of ``plane`` whose points lie on a line or that crosses itself, and two that cross."""
    polygons = [distinct_loop(plane_coordinates(c, plane.origin, plane.normal)) for c in plane.curves]
    for curve_id, xy in zip(plane.curve_ids, polygons):
        spread = np.linalg.svd(xy - xy.mean(0), compute_uv=False)  # along and across the curve
        if spread[1] < MIN_WIDTH_RATIO * spread[0]:
            raise InputError(source, f"curve {curve_id + 1} encloses no area (its points lie on a line)")
    crossing = first_crossing(polygons)
    if crossing is not None:
        a, b = sorted(plane.curve_ids[k] + 1 for k in crossing)
        raise InputError(source, f"curve {a} crosses itself" if a == b else f"curves {a} and {b} cross each other")


def check_curves(curves: list[np.ndarray], source: str = "contours", tolerance_mm: float = 1.5) -> list[Plane]:
    """Check closed curves (each (N_i, 3), LPS mm) and group those on a common plane; each plane holds
    its curves as given. Only numpy is needed, so bad curves are refused at once.

    Raises InputError for more than :data:`MAX_CURVES` curves, NaN points, curves with < 3 points,
    non-planar curves, a curve with its points on a line or crossing itself, two curves of a
    plane crossing each other, or fewer than two non-parallel planes.
    """
    if len(curves) > MAX_CURVES:
        raise InputError(source, f"{len(curves)} curves; at most {MAX_CURVES} are used (draw a few planes)")
    planes: list[Plane] = []
    for i, curve in enumerate(curves):
        raw, centroid, normal = _check_curve(curve, i, source, tolerance_mm)
        for plane in planes:
            if abs(plane.normal @ normal) > SAME_PLANE_COS and abs((centroid - plane.origin) @ plane.normal) < tolerance_mm:
                plane.curves.append(raw)
                plane.curve_ids.append(i)
                break
        else:
            planes.append(Plane(centroid, normal, [raw], [i]))
    for plane in planes:
        _check_plane_curves(plane, source)
    normals = np.array([p.normal for p in planes])
    if len(planes) < 2 or np.abs(normals @ normals.T).min() > PARALLEL_COS:
        raise InputError(source, "contours must lie on at least two non-parallel planes")
    return planes


def group_planes(curves: list[np.ndarray], source: str = "contours", tolerance_mm: float = 1.5) -> list[Plane]:
    """:func:`check_curves`, then every curve resampled every mm (:func:`resample_closed_curve`)."""
    planes = check_curves(curves, source, tolerance_mm)
    for plane in planes:
        plane.curves = [resample_closed_curve(curve) for curve in plane.curves]
    return planes
