"""Slicer markups (``.mrk.json``): closed curves and point lists, always returned in LPS mm.

Slicer stores each markup's ``coordinateSystem`` (``LPS`` since Slicer 4.11, ``RAS``
in some files); RAS points are converted (x, y negated) on read. Files are written in LPS.
Only the file's content is checked here; the curves' geometry (planar, simple, not
crossing each other) is checked where they are grouped into planes
(:func:`shapeprior.fit.contours.group_planes`).
"""

from __future__ import annotations

import json
import os
import reprlib
from numbers import Real
from pathlib import Path

import numpy as np

from ..errors import InputError
from .atomic import write_json
from .files import os_problem, readable_file
from .frames import RAS_TO_LPS

SCHEMA = "https://raw.githubusercontent.com/slicer/slicer/main/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#"

# No patient is 100 m across: coordinates beyond it are in other units (micrometres)
# or garbage, and would overflow later arithmetic on squared distances.
MAX_COORDINATE_MM = 1e5
# A hand-drawn closed curve holds tens to hundreds of control points, an exported
# contour a few thousand; more is not a contour and would make resampling slow.
MAX_CURVE_POINTS = 20_000
# All control points of one file: bounds every array built from it to a few MB.
MAX_FILE_POINTS = 200_000
# 200,000 control points as Slicer writes them (~400 bytes each); json.loads needs
# several times the file's size in memory, so larger files are refused unread.
MAX_FILE_BYTES = 100 * 2**20


def check_coordinates(points: np.ndarray, path: str | os.PathLike, what: str) -> np.ndarray:
    """``points`` (N, 3) in mm if finite and within :data:`MAX_COORDINATE_MM`; else InputError
    saying ``"<what> has ..."``."""
    if not np.isfinite(points).all():
        raise InputError(path, f"{what} has NaN or infinite coordinates")
    if np.abs(points).max(initial=0.0) > MAX_COORDINATE_MM:
        raise InputError(path, f"{what} has coordinates beyond 100 m: not millimetres?")
    return points


def _load(path: str | os.PathLike) -> list[dict]:
    """The file's ``markups`` list, each a JSON object, with at most MAX_FILE_POINTS control points in all."""
    path = readable_file(path, MAX_FILE_BYTES)
    try:
        text = path.read_bytes()
    except OSError as error:
        raise InputError(path, os_problem(error)) from None
    # Each control point has one "position": too many are refused before parsing, which would take
    # seconds and hundreds of MB for a file of a few million points.
    if (positions := text.count(b'"position"')) > MAX_FILE_POINTS:
        raise InputError(path, f"holds {positions} control points; at most {MAX_FILE_POINTS} are read")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # invalid JSON or text encoding; nesting too deep
        raise InputError(path, "not a Slicer markups file (invalid JSON)") from None
    markups = data.get("markups") if isinstance(data, dict) else None
    if not isinstance(markups, list):
        raise InputError(path, "not a Slicer markups file (.mrk.json with a 'markups' list)")
    if not markups:
        raise InputError(path, "holds no markups")
    for i, markup in enumerate(markups):
        if not isinstance(markup, dict) or not isinstance(markup.get("controlPoints", []), list):
            raise InputError(path, f"markup {i + 1} is malformed (not an object with a 'controlPoints' list)")
    total = sum(len(m.get("controlPoints", [])) for m in markups)
    if total > MAX_FILE_POINTS:
        raise InputError(path, f"holds {total} control points; at most {MAX_FILE_POINTS} are read")
    return markups


def _is_position(value) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(
        isinstance(v, Real) and not isinstance(v, bool) for v in value)


def _points(path: Path, markup: dict, index: int) -> np.ndarray:
    """Defined control points (N, 3) of one markup, LPS mm (points still being placed are skipped, as in Slicer)."""
    label = f"markup {index + 1}"
    rows = []
    for point in markup.get("controlPoints", []):
        if not isinstance(point, dict):
            raise InputError(path, f"{label} has malformed control points")
        if point.get("positionStatus", "defined") != "defined":
            continue
        if not _is_position(point.get("position")):
            raise InputError(path, f"{label} has malformed control points (a position is 3 numbers)")
        rows.append(point["position"])
    try:
        pts = np.array(rows, dtype=np.float64).reshape(-1, 3)
    except OverflowError:  # an integer too large for a float
        raise InputError(path, f"{label} has coordinates beyond 100 m: not millimetres?") from None
    check_coordinates(pts, path, label)
    system = str(markup.get("coordinateSystem", "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise InputError(path, f"{label} has unknown coordinateSystem {reprlib.repr(system)}")
    units = markup.get("coordinateUnits", "mm")
    if units != "mm":
        raise InputError(path, f"{label} has coordinateUnits {reprlib.repr(units)}; millimetres ('mm') are required")
    return pts * RAS_TO_LPS if system == "RAS" else pts


def read_closed_curves(path: str | os.PathLike) -> list[np.ndarray]:
    """Control points (N_i, 3) of every ClosedCurve markup in the file, LPS mm.

    Each curve has 3 to :data:`MAX_CURVE_POINTS` finite points within :data:`MAX_COORDINATE_MM`.
    """
    curves = []
    for i, markup in enumerate(_load(path)):
        kind = markup.get("type")
        if kind == "Curve":
            raise InputError(path, f"markup {i + 1} is an open curve; draw a closed curve on each slice")
        if kind != "ClosedCurve":
            continue
        count = len(markup.get("controlPoints", []))
        if count > MAX_CURVE_POINTS:
            raise InputError(path, f"closed curve {i + 1} has {count} control points; "
                                   f"at most {MAX_CURVE_POINTS} are read")
        pts = _points(Path(path), markup, i)
        if len(pts) < 3:
            raise InputError(path, f"closed curve {i + 1} has {len(pts)} points; at least 3 are needed")
        curves.append(pts)
    if not curves:
        raise InputError(path, "holds no ClosedCurve markups")
    return curves


def read_point_list(path: str | os.PathLike) -> np.ndarray:
    """All control points (N, 3) of the file's point-list (Fiducial) markups, LPS mm; N >= 1."""
    points = [_points(Path(path), m, i) for i, m in enumerate(_load(path)) if m.get("type") == "Fiducial"]
    if not points or sum(len(p) for p in points) == 0:
        raise InputError(path, "holds no point-list (Fiducial) markups with points")
    return np.concatenate(points)


def _markup(kind: str, name: str, points: np.ndarray, labels: list[str] | None = None) -> dict:
    """One markup of ``kind`` (ClosedCurve, Fiducial) holding ``points`` (N, 3) LPS mm."""
    labels = labels or [f"{name}-{j + 1}" for j in range(len(points))]
    return {"type": kind, "coordinateSystem": "LPS", "coordinateUnits": "mm", "name": name,
            "controlPoints": [{"id": str(j + 1), "label": label, "position": [float(v) for v in p],
                               "positionStatus": "defined"} for j, (label, p) in enumerate(zip(labels, points))]}


def write_closed_curves(curves: list[np.ndarray], path: str | os.PathLike, names: list[str] | None = None) -> None:
    """Write curves (LPS mm) as ClosedCurve markups, atomically."""
    markups = [_markup("ClosedCurve", names[i] if names else f"Contour {i + 1}", np.asarray(pts))
               for i, pts in enumerate(curves)]
    write_json({"@schema": SCHEMA, "markups": markups}, path)


def write_point_list(points: np.ndarray, path: str | os.PathLike, name: str) -> None:
    """Write points (N, 3) LPS mm as one point list labelled by index (0..N-1), atomically."""
    markup = _markup("Fiducial", name, np.asarray(points), [str(j) for j in range(len(points))])
    write_json({"@schema": SCHEMA, "markups": [markup]}, path)
