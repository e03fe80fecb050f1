"""Point clouds from Slicer point lists (``.mrk.json``), PLY and XYZ files, as (N, 3) LPS mm."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import NamedTuple

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
# Fewer points do not outline an organ.
MIN_FIT_POINTS = 10
# Bytes of each PLY scalar property type (lists have no fixed size).
PLY_TYPE_BYTES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
                  "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}
# Bytes read at a time while counting an ASCII PLY's lines.
COUNT_CHUNK = 2**22


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


def check_fit_points(points: np.ndarray, source: str | os.PathLike) -> np.ndarray:
    """``points`` as float (N, 3) if they are at least :data:`MIN_FIT_POINTS`, all finite: a cloud to fit to."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) < MIN_FIT_POINTS:
        raise InputError(source, f"a point cloud of at least {MIN_FIT_POINTS} points (N, 3) is needed")
    if not np.isfinite(points).all():
        raise InputError(source, "points hold NaN or infinite coordinates")
    return points


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


class _PlyHeader(NamedTuple):
    vertices: int  # as declared
    ascii: bool
    vertex_bytes: int | None  # per vertex in a binary file; None when one of its properties is a list
    data_start: int  # the first byte after the header


def _ply_header(path: Path) -> _PlyHeader:
    """What a PLY header declares of its vertices."""
    with open(path, "rb") as stream:
        head = stream.read(PLY_HEADER_BYTES)
    end = head.find(b"end_header")
    found = re.search(rb"^element[ \t]+vertex[ \t]+(\d+)[ \t\r]*$", head[:end], re.MULTILINE)
    if not head.startswith(b"ply") or end < 0 or found is None:
        raise InputError(path, "not a PLY file (no header with 'element vertex N')")
    properties = head[found.end():end].split(b"element", 1)[0]
    types = re.findall(rb"^property[ \t]+(\w+)", properties, re.MULTILINE)
    sizes = [PLY_TYPE_BYTES.get(t.decode()) for t in types]
    vertex_bytes = None if None in sizes else sum(sizes)
    data_start = head.index(b"\n", end) + 1 if b"\n" in head[end:] else len(head)
    return _PlyHeader(int(found.group(1)), b"format ascii" in head[:end], vertex_bytes, data_start)


def _check_ply_length(path: Path, header: _PlyHeader) -> None:
    """Refuse a PLY whose data ends before its declared vertices: fewer bytes than they take (binary),
    or fewer lines (ASCII, one vertex a line). Quick, and without the second trimesh takes to import."""
    if header.ascii:
        lines, last = 0, b"\n"
        with open(path, "rb") as stream:
            stream.seek(header.data_start)
            while chunk := stream.read(COUNT_CHUNK):
                lines, last = lines + chunk.count(b"\n"), chunk[-1:]
        short = lines + (last != b"\n") < header.vertices
    else:
        size = path.stat().st_size - header.data_start
        short = header.vertex_bytes is not None and size < header.vertices * header.vertex_bytes
    if short:
        raise InputError(path, f"truncated: the header declares {header.vertices} points; the file ends before them")


def _read_ply(path: Path) -> np.ndarray:
    """The vertices (N, 3) of a PLY point cloud or mesh, all that its header declares."""
    header = _ply_header(path)
    declared = header.vertices
    if declared > MAX_POINTS:
        raise InputError(path, f"declares {declared} points; at most {MAX_POINTS} are read")
    if declared == 0:
        return np.empty((0, 3))
    _check_ply_length(path, header)
    import trimesh  # after the checks: it takes a second to import

    try:
        loaded = trimesh.load(path, process=False)
    except Exception as error:  # trimesh's parsers raise many types on malformed files
        raise InputError(path, f"not a readable PLY ({type(error).__name__})") from None
    vertices = np.asarray(getattr(loaded, "vertices", np.empty((0, 3))), dtype=np.float64).reshape(-1, 3)
    if len(vertices) != declared:
        raise InputError(path, f"truncated: the header declares {declared} points, {len(vertices)} were read")
    return vertices
