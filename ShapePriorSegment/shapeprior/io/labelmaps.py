"""Contours from sparsely painted labelmaps, and surfaces -> labelmaps on a grid."""

from __future__ import annotations

import os
from typing import Iterator

import igl
import numpy as np
import SimpleITK as sitk
import trimesh
from scipy import ndimage
from skimage.measure import find_contours

from ..errors import InputError
from .atomic import atomic_output
from .frames import index_to_lps, lps_to_index

# A slice counts as painted if a 2D region survives one in-plane erosion: slices of
# other planes cross it only as one-voxel lines.
MIN_PAINTED_PIXELS = 4
# A contour annotation is a few painted slices; more is a whole segmentation, whose
# every slice would become a curve (use it as a mask instead).
MAX_PAINTED_SLICES = 64


def _painted_slices(array: np.ndarray, source: str | os.PathLike) -> Iterator[tuple[int, int, np.ndarray]]:
    """(axis, index, 2D boolean plane) of each painted slice of ``array`` (i, j, k); at most MAX_PAINTED_SLICES."""
    count = 0
    for axis in range(3):
        for index in range(array.shape[axis]):
            plane = np.take(array, index, axis=axis)
            if ndimage.binary_erosion(plane).sum() < MIN_PAINTED_PIXELS:
                continue
            count += 1
            if count > MAX_PAINTED_SLICES:
                raise InputError(source, f"more than {MAX_PAINTED_SLICES} painted slices: a whole segmentation, "
                                 "not a few painted slices?")
            yield axis, index, plane


def painted_slice_contours(mask: sitk.Image, source: str | os.PathLike = "mask") -> list[np.ndarray]:
    """Closed curves (N_i, 3) in LPS mm around the painted regions of each painted slice.

    Slices along any of the three voxel axes are found (at most :data:`MAX_PAINTED_SLICES`);
    each connected region of a painted slice gives one curve (its outer boundary, at the
    half-voxel level).
    """
    array = sitk.GetArrayViewFromImage(mask).transpose(2, 1, 0) > 0  # (i, j, k)
    curves: list[np.ndarray] = []
    for axis, index, plane in _painted_slices(array, source):
        core = ndimage.binary_opening(plane)  # drop crossing lines of the other planes
        labels, count = ndimage.label(core)
        for region in range(1, count + 1):
            filled = ndimage.binary_fill_holes(labels == region)
            padded = np.pad(filled.astype(float), 1)
            loops = find_contours(padded, 0.5)
            loop = max(loops, key=len) - 1.0  # outer boundary, back to unpadded indices
            ijk = np.insert(loop, axis, float(index), axis=1)
            curves.append(index_to_lps(mask, ijk))
    if not curves:
        raise InputError(source, "no painted slices found (paint at least two slices on different axes)")
    return curves


def mesh_to_labelmap(mesh: trimesh.Trimesh, reference: sitk.Image, label: int = 1) -> sitk.Image:
    """Voxelise a closed surface (LPS mm) on ``reference``'s grid (uint8, ``label`` inside).

    Voxel centres inside the surface by generalised winding number; only the voxels in
    the surface's bounding box are tested.
    """
    size = np.array(reference.GetSize())
    corners = np.array(np.meshgrid(*[mesh.bounds[:, a] for a in range(3)], indexing="ij")).reshape(3, -1).T
    ijk = lps_to_index(reference, corners)
    lo = np.clip(np.floor(ijk.min(0)).astype(int) - 1, 0, size)
    hi = np.clip(np.ceil(ijk.max(0)).astype(int) + 2, 0, size)
    out = np.zeros(size[::-1], dtype=np.uint8)  # (k, j, i)
    if np.all(hi > lo):
        grid = np.stack(np.meshgrid(*[np.arange(lo[a], hi[a]) for a in range(3)], indexing="ij"), -1).reshape(-1, 3)
        winding = igl.fast_winding_number(
            np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64),
            index_to_lps(reference, grid.astype(np.float64)),
        )
        inside = (winding > 0.5).reshape(hi - lo).transpose(2, 1, 0)
        out[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = inside.astype(np.uint8) * label
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(reference)
    return image


def write_labelmap(image: sitk.Image, path: str | os.PathLike, name: str = "segment",
                   names: dict[int, str] | None = None) -> None:
    """Write a labelmap atomically; ``.seg.nrrd`` gets Slicer segmentation metadata (segment names:
    ``name``, or ``name value`` with several labels, or ``name names[value]``)."""
    if str(path).lower().endswith(".seg.nrrd"):
        image = sitk.Image(image)
        labels = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(image)) if v] or [1]
        for i, value in enumerate(labels):
            image.SetMetaData(f"Segment{i}_ID", f"{name}_{value}" if len(labels) > 1 else name)
            label = (names or {}).get(value, value)
            image.SetMetaData(f"Segment{i}_Name", name if len(labels) == 1 and not names else f"{name} {label}")
            image.SetMetaData(f"Segment{i}_LabelValue", str(value))
            image.SetMetaData(f"Segment{i}_Layer", "0")
            image.SetMetaData(f"Segment{i}_Color", "0.87 0.55 0.39")
        image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
        image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    with atomic_output(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
