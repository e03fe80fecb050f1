"""Point clouds from Slicer point lists (``.mrk.json``), PLY and XYZ files, as (N, 3) LPS mm."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np

from ..errors import InputError
from .files import os_problem, readable_file
from .markups import check_coordinates, read_point_list

# Surface scans hold up to a few hundred thousand points; a million (24 MB as float64)
# is more than any fit samples, and bounds what a corrupt header can make us allocate.
MAX_POINTS = 1_000_000
# A million points as ASCII with normals and colours; larger files are refused unread.
MAX_FILE_BYTES = 256 * 2**20
# A PLY header is a few hundred bytes; one without "end_header" in this many is not a PLY.
PLY_HEADER_BYTES = 65_536


def read_point_cloud(path: str | os.PathLike) -> np.ndarray:
    """Points (N, 3) LPS mm, 1 <= N <= :data:`MAX_POINTS`, finite and within 100 m, from a
    ``.mrk.json`` point list (RAS files converted), a ``.ply`` (its vertices) or an ``.xyz``
    (rows of x y z; further columns, such as normals, are ignored)."""
    name = str(path).lower()
    if name.endswith(".mrk.json"):
        points = read_point_list(path)
    elif name.endswith((".ply", ".xyz")):
        path = readable_file(path, MAX_FILE_BYTES)
        points = _read_xyz(path) if name.endswith(".xyz") else _read_ply(path)
    else:
        raise InputError(path, "unsupported point cloud format (expected .mrk.json, .ply or .xyz)")
    if len(points) == 0:
        raise InputError(path, "holds no points")
    if len(points) > MAX_POINTS:
        raise InputError(path, f"holds more than {MAX_POINTS} points")
    return check_coordinates(points, path, "a point")


def _read_xyz(path: Path) -> np.ndarray:
    """Up to MAX_POINTS + 1 rows (N, 3) of the file's first three columns."""
    try:
        with warnings.catch_warnings():  # numpy warns of empty files and of comment lines with max_rows
            warnings.simplefilter("ignore", UserWarning)
            return np.loadtxt(path, dtype=np.float64, usecols=(0, 1, 2), ndmin=2, max_rows=MAX_POINTS + 1)
    except ValueError:  # also UnicodeDecodeError: a binary file
        raise InputError(path, "not a readable .xyz point file (rows of x y z)") from None
    except OSError as error:
        raise InputError(path, os_problem(error)) from None


def _ply_vertex_count(path: Path) -> int:
    """The vertex count a PLY header declares."""
    with open(path, "rb") as stream:
        head = stream.read(PLY_HEADER_BYTES)
    end = head.find(b"end_header")
    found = re.search(rb"^element[ \t]+vertex[ \t]+(\d+)[ \t\r]*$", head[:end], re.MULTILINE)
    if not head.startswith(b"ply") or end < 0 or found is None:
        raise InputError(path, "not a PLY file (no header with 'element vertex N')")
    return int(found.group(1))


def _read_ply(path: Path) -> np.ndarray:
    """The vertices (N, 3) of a PLY point cloud or mesh, all that its header declares."""
    import trimesh

    declared = _ply_vertex_count(path)
    if declared > MAX_POINTS:
        raise InputError(path, f"declares {declared} points; at most {MAX_POINTS} are read")
    if declared == 0:
        return np.empty((0, 3))
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as error:  # trimesh's parsers raise many types on malformed files
        raise InputError(path, f"not a readable PLY ({type(error).__name__})") from None
    vertices = np.asarray(getattr(loaded, "vertices", np.empty((0, 3))), dtype=np.float64).reshape(-1, 3)
    if len(vertices) != declared:
        raise InputError(path, f"truncated: the header declares {declared} points, {len(vertices)} were read")
    return vertices
