"""Surface mesh reading and writing; ``trimesh.Trimesh`` is the one mesh type.

Files hold LPS millimetres. Legacy ``.vtk`` files written by Slicer carry
``SPACE=RAS`` or ``SPACE=LPS`` in their header; RAS files are converted to LPS on read,
and ``.vtk`` files are written with ``SPACE=LPS`` so Slicer places them correctly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import trimesh
# The modules themselves, not `import vtk` (0.5 s of a fit's start-up).
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import vtkPoints
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
from vtkmodules.vtkFiltersCore import vtkTriangleFilter
from vtkmodules.vtkIOLegacy import vtkPolyDataReader, vtkPolyDataWriter
from vtkmodules.vtkIOXML import vtkXMLPolyDataReader, vtkXMLPolyDataWriter

from ..errors import InputError
from .atomic import atomic_output
from .formats import MESH_SUFFIXES
from .frames import RAS_TO_LPS


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def polydata_to_trimesh(poly: vtkPolyData) -> trimesh.Trimesh:
    tri = vtkTriangleFilter()
    tri.SetInputData(poly)
    tri.PassLinesOff()
    tri.PassVertsOff()
    tri.Update()
    out = tri.GetOutput()
    if out.GetNumberOfPoints() == 0:
        return trimesh.Trimesh()
    verts = numpy_support.vtk_to_numpy(out.GetPoints().GetData()).astype(np.float64)
    cells = numpy_support.vtk_to_numpy(out.GetPolys().GetConnectivityArray())
    faces = cells.reshape(-1, 3).astype(np.int64)
    return trimesh.Trimesh(verts, faces, process=False)


def trimesh_to_polydata(mesh: trimesh.Trimesh, point_data: dict | None) -> vtkPolyData:
    poly = vtkPolyData()
    points = vtkPoints()
    points.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(mesh.vertices, dtype=np.float64), deep=True))
    poly.SetPoints(points)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    cells = vtkCellArray()
    offsets = numpy_support.numpy_to_vtkIdTypeArray(np.arange(0, 3 * len(faces) + 1, 3, dtype=np.int64), deep=True)
    conn = numpy_support.numpy_to_vtkIdTypeArray(np.ascontiguousarray(faces.ravel()), deep=True)
    cells.SetData(offsets, conn)
    poly.SetPolys(cells)
    for name, values in (point_data or {}).items():
        array = numpy_support.numpy_to_vtk(np.ascontiguousarray(values, dtype=np.float32), deep=True)
        array.SetName(name)
        poly.GetPointData().AddArray(array)
    return poly


def _read_vtk(path: Path) -> trimesh.Trimesh:
    if _suffix(path) == ".vtp":
        reader = vtkXMLPolyDataReader()
    else:
        reader = vtkPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    poly = reader.GetOutput()
    if poly is None or poly.GetNumberOfPoints() == 0:
        raise InputError(path, "not a readable VTK surface (no points)")
    mesh = polydata_to_trimesh(poly)
    if _suffix(path) == ".vtk" and "SPACE=RAS" in (reader.GetHeader() or ""):
        # diag(-1, -1, 1) has determinant +1 (a half-turn about z, not a reflection),
        # so the faces keep their outward orientation: do not invert them.
        mesh.vertices = mesh.vertices * RAS_TO_LPS
    return mesh


def read_point_array(path: str | os.PathLike, name: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 3) LPS mm, the point array ``name`` (N,) or (N, k)) of a .vtk/.vtp surface, in the
    file's point order (no merging); ``what`` says where such a file comes from, for the error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    if _suffix(path) not in (".vtk", ".vtp"):
        raise InputError(path, f"needs a .vtk or .vtp surface with the point array {name} ({what})")
    reader = vtkXMLPolyDataReader() if _suffix(path) == ".vtp" else vtkPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    poly = reader.GetOutput()
    array = poly.GetPointData().GetArray(name) if poly is not None else None
    if poly is None or poly.GetNumberOfPoints() == 0 or array is None:
        raise InputError(path, f"has no point array {name} ({what})")
    points = numpy_support.vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)
    if _suffix(path) == ".vtk" and "SPACE=RAS" in (reader.GetHeader() or ""):
        points = points * RAS_TO_LPS
    return points, numpy_support.vtk_to_numpy(array).astype(np.float64)


def read_mesh(path: str | os.PathLike, frame: str = "LPS") -> trimesh.Trimesh:
    """Read a triangle surface (OBJ, STL, PLY, OFF, VTK, VTP) in LPS millimetres.

    VTK files say their frame in the header (Slicer's ``SPACE=RAS`` or ``LPS``); the other formats
    do not, so ``frame`` says it ("LPS" or "RAS", e.g. surfaces exported in NIfTI world coordinates).
    Rejects missing or unreadable files, meshes with no faces and non-finite coordinates.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    if _suffix(path) not in MESH_SUFFIXES:
        raise InputError(path, f"unsupported mesh format (expected one of {', '.join(MESH_SUFFIXES)})")
    try:
        if _suffix(path) in (".vtk", ".vtp"):
            mesh = _read_vtk(path)
        else:
            mesh = trimesh.load(path, force="mesh", process=False)
    except InputError:
        raise
    except Exception as exc:  # trimesh raises many types on garbage input
        raise InputError(path, f"not a readable mesh ({type(exc).__name__})") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise InputError(path, "mesh has no faces")
    if not np.isfinite(mesh.vertices).all():
        raise InputError(path, "mesh has NaN or infinite coordinates")
    if frame == "RAS" and _suffix(path) not in (".vtk", ".vtp"):
        mesh = trimesh.Trimesh(mesh.vertices * RAS_TO_LPS, mesh.faces, process=False)  # a rotation: faces keep winding
    # Merge duplicated vertices (OBJ exporters split them at seams) without reordering faces.
    mesh.merge_vertices()
    mesh.remove_unreferenced_vertices()
    return mesh


def write_mesh(mesh: trimesh.Trimesh, path: str | os.PathLike, point_data: dict | None = None) -> None:
    """Write ``mesh`` (LPS millimetres) atomically; the format follows the suffix.

    ``point_data`` (name -> (V,) array) is kept in ``.vtk``/``.vtp`` files.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in MESH_SUFFIXES:
        raise InputError(path, f"unsupported mesh format (expected one of {', '.join(MESH_SUFFIXES)})")
    with atomic_output(path) as tmp:
        if suffix in (".vtk", ".vtp"):
            poly = trimesh_to_polydata(mesh, point_data)
            if suffix == ".vtp":
                writer = vtkXMLPolyDataWriter()
            else:
                writer = vtkPolyDataWriter()
                writer.SetHeader("3D Slicer output. SPACE=LPS")
                writer.SetFileVersion(42)  # readable by every Slicer 5 release
            writer.SetFileName(str(tmp))
            writer.SetInputData(poly)
            if not writer.Write():
                raise OSError(f"{path}: VTK writer failed")
        else:
            mesh.export(tmp, file_type=suffix[1:])
