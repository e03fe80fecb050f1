"""File formats by suffix (no imports: the command line checks outputs before loading anything)."""

MESH_SUFFIXES = (".obj", ".stl", ".ply", ".vtk", ".vtp", ".off")
# Single-file volume formats (.seg.nrrd included): a labelmap written as anything else fails or loses slices.
LABELMAP_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
