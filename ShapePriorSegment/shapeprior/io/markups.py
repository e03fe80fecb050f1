"""Slicer markups (``.mrk.json``): closed curves and point lists, always returned in LPS mm.

Slicer stores each markup's ``coordinateSystem`` (``LPS`` since Slicer 4.11, ``RAS``
in some files); RAS points are converted (x, y negated) on read. Files are written in LPS.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from .atomic import write_json

SCHEMA = "https://raw.githubusercontent.com/slicer/slicer/main/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#"
RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])


def _load(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        data = json.loads(path.read_text())
        markups = data["markups"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InputError(path, "not a Slicer markups file (.mrk.json with a 'markups' list)") from None
    if not isinstance(markups, list) or not markups:
        raise InputError(path, "holds no markups")
    return markups


def _points(path, markup: dict, index: int) -> np.ndarray:
    try:
        pts = np.array([cp["position"] for cp in markup.get("controlPoints", [])], dtype=np.float64).reshape(-1, 3)
    except (KeyError, ValueError, TypeError):
        raise InputError(path, f"markup {index + 1} has malformed control points") from None
    if not np.isfinite(pts).all():
        raise InputError(path, f"markup {index + 1} has NaN or infinite coordinates")
    system = str(markup.get("coordinateSystem", "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise InputError(path, f"markup {index + 1} has unknown coordinateSystem {system!r}")
    return pts * RAS_TO_LPS if system == "RAS" else pts


def read_closed_curves(path: str | os.PathLike) -> list[np.ndarray]:
    """Control points (N_i, 3) of every ClosedCurve markup in the file, LPS mm."""
    curves = []
    for i, markup in enumerate(_load(path)):
        kind = markup.get("type")
        if kind == "Curve":
            raise InputError(path, f"markup {i + 1} is an open curve; draw a closed curve on each slice")
        if kind != "ClosedCurve":
            continue
        pts = _points(path, markup, i)
        if len(pts) < 3:
            raise InputError(path, f"closed curve {i + 1} has {len(pts)} points; at least 3 are needed")
        curves.append(pts)
    if not curves:
        raise InputError(path, "holds no ClosedCurve markups")
    return curves


def read_point_list(path: str | os.PathLike) -> np.ndarray:
    """All control points (N, 3) of the file's point-list (Fiducial) markups, LPS mm."""
    points = [_points(path, m, i) for i, m in enumerate(_load(path)) if m.get("type") == "Fiducial"]
    if not points or sum(len(p) for p in points) == 0:
        raise InputError(path, "holds no point-list (Fiducial) markups with points")
    return np.concatenate(points)


def write_closed_curves(curves: list[np.ndarray], path: str | os.PathLike, names: list[str] | None = None) -> None:
    """Write curves (LPS mm) as ClosedCurve markups, atomically."""
    markups = []
    for i, pts in enumerate(curves):
        name = names[i] if names else f"Contour {i + 1}"
        markups.append({
            "type": "ClosedCurve",
            "coordinateSystem": "LPS",
            "coordinateUnits": "mm",
            "name": name,
            "controlPoints": [
                {"id": str(j + 1), "label": f"{name}-{j + 1}", "position": [float(v) for v in p],
                 "positionStatus": "defined"}
                for j, p in enumerate(np.asarray(pts))
            ],
        })
    write_json({"@schema": SCHEMA, "markups": markups}, path)
