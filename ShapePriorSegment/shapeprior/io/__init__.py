"""Reading and writing images, meshes and JSON, with input checks and atomic writes.

Frame convention: every file holds LPS millimetres (what Slicer writes); in-memory
meshes and points in the core are LPS millimetres unless a function says otherwise.
Names are imported on first use: ``shapeprior --help`` must not pay for VTK and ITK.
"""

import importlib

_HOME = {
    "atomic_output": "atomic", "write_json": "atomic", "read_image": "images", "read_mask": "images",
    "check_same_grid": "images", "read_mesh": "meshes", "write_mesh": "meshes", "MESH_SUFFIXES": "formats",
}
__all__ = list(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
