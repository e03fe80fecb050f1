"""File formats by suffix (standard library only: the command line checks outputs before loading anything)."""

from pathlib import Path

MESH_SUFFIXES = (".obj", ".stl", ".ply", ".vtk", ".vtp", ".off")
IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha", ".mhd")
# Single-file volume formats (.seg.nrrd included): a labelmap written as anything else fails or loses slices.
LABELMAP_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


def file_stem(path: Path) -> str:
    """File name without its (possibly double) image or mesh suffix: ``case_01.seg.nrrd`` -> ``case_01``."""
    for suffix in sorted(IMAGE_SUFFIXES + MESH_SUFFIXES, key=len, reverse=True):
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem
