"""Dense correspondences through a template model: every point of a fitted case maps to the
template (``p + dv``, the model's unit sphere), so sub-regions drawn once on the template carry
over to new cases, and two cases' points pair up where their template coordinates meet.

Sub-regions are stored as a label grid over the template's cube [-1, 1]^3: each cell holds the
label most training voxels that map into it carry (cells no voxel reaches take their nearest
voted cell's label).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import SimpleITK as sitk
import trimesh
from scipy import ndimage
from scipy.spatial import cKDTree

from ..errors import InputError
from ..geometry.level_set import level_set_mesh
from ..io.frames import index_to_lps, index_to_physical

LABEL_GRID = 48  # cells per axis of the template's label grid


def grid_cells(template_points: np.ndarray, size: int) -> np.ndarray:
    """(N, 3) template coordinates -> (N, 3) int indices of their cells in a ``size``^3 grid over [-1, 1]^3."""
    return np.clip(np.round((template_points + 1.0) / 2.0 * (size - 1)), 0, size - 1).astype(int)


def labelled_voxels(labels: sitk.Image, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` random labelled voxels: ((N, 3) centres, LPS mm; (N,) their labels)."""
    array = sitk.GetArrayViewFromImage(labels)
    kji = np.argwhere(array > 0)
    kji = kji[rng.choice(len(kji), min(count, len(kji)), replace=False)]
    return index_to_lps(labels, kji[:, ::-1].astype(np.float64)), array[tuple(kji.T)].astype(int)


def vote_label_grid(cases: list[tuple[Callable[[np.ndarray], np.ndarray], sitk.Image]], label_count: int,
                    voxels_per_case: int = 4000, size: int = LABEL_GRID, seed: int = 0) -> np.ndarray:
    """The template's ``size``^3 uint8 label grid, voted by training cases.

    Each case is (its map from LPS mm points (N, 3) to template coordinates (N, 3), its label
    image with values 1..``label_count``).
    """
    rng = np.random.default_rng(seed)
    votes = np.zeros((label_count + 1, size, size, size), dtype=np.int64)
    for to_template, labels in cases:
        points, values = labelled_voxels(labels, voxels_per_case, rng)
        cells = grid_cells(to_template(points), size)
        np.add.at(votes, (values, *cells.T), 1)
    voted = votes.sum(0) > 0
    missing = [value for value in range(1, label_count + 1) if not votes[value].any()]
    if missing:
        raise InputError(None, f"no training voxel carries sub-region label(s) {', '.join(map(str, missing))}")
    grid = np.where(voted, votes[1:].argmax(0) + 1, 0).astype(np.uint8)
    # Cells no voxel reached: the label of the nearest voted cell.
    nearest = ndimage.distance_transform_edt(~voted, return_distances=False, return_indices=True)
    return grid[tuple(nearest)]


def transfer_labels(segmentation: sitk.Image, to_template: Callable[[np.ndarray], np.ndarray],
                    grid: np.ndarray) -> sitk.Image:
    """The template's sub-regions on a case's segmentation (same grid; 0 outside it)."""
    array = sitk.GetArrayViewFromImage(segmentation)
    kji = np.argwhere(array > 0)
    out = np.zeros(array.shape, dtype=np.uint8)
    if len(kji):
        cells = grid_cells(to_template(index_to_lps(segmentation, kji[:, ::-1].astype(np.float64))), grid.shape[0])
        out[tuple(kji.T)] = grid[tuple(cells.T)]
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(segmentation)
    return image


def corresponding_points(template_a: np.ndarray, template_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each point of case A, the point of case B nearest in template coordinates.

    Args:
        template_a, template_b: (Na, 3), (Nb, 3) the cases' points' template coordinates.
    Returns:
        ((Na,) index into B, (Na,) distance between the two in template units).
    """
    distance, index = cKDTree(template_b).query(template_a)
    return index, distance


def subregion_surfaces(subregions: sitk.Image, names: dict[int, str]) -> dict[str, trimesh.Trimesh]:
    """Name -> closed surface (LPS mm) of each sub-region of a label image (values ``names``' keys):
    the half level of its indicator, lightly smoothed (half a voxel) so the surface is not stair-cased."""
    array = sitk.GetArrayViewFromImage(subregions)
    unpad = np.eye(4)
    unpad[:3, 3] = -1.0  # one voxel of padding keeps the surfaces closed at the grid's faces
    padded_to_lps = index_to_physical(subregions) @ unpad
    surfaces = {}
    for value, name in names.items():
        inside = np.pad((array == value).astype(np.float32), 1)
        if inside.any():
            surfaces[name] = level_set_mesh(ndimage.gaussian_filter(inside, 0.5), 0.5, padded_to_lps)
    return surfaces
