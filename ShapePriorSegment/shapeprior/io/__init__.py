"""Reading and writing images, meshes and JSON, with input checks and atomic writes.

Frame convention: every file holds LPS millimetres (what Slicer writes); in-memory
meshes and points in the core are LPS millimetres unless a function says otherwise.
"""

from .atomic import atomic_output, write_json
from .images import read_image, read_mask, check_same_grid
from .meshes import read_mesh, write_mesh, MESH_SUFFIXES

__all__ = [
    "atomic_output",
    "write_json",
    "read_image",
    "read_mask",
    "check_same_grid",
    "read_mesh",
    "write_mesh",
    "MESH_SUFFIXES",
]
