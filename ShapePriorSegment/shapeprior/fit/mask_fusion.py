"""Trust-weighted fusion of a fitted prior surface with the mask it was fitted to.

On the mask's voxel grid, extended to hold the whole prior surface, with P the prior's
and M the (lightly smoothed) mask's signed distance (mm, negative inside):
``F = P + w (M - P)`` with ``w = 1`` where ``|M - P| <= tau``, falling linearly to 0 at 2 tau.
Where the two agree to within tau the mask is followed exactly; where they disagree by more
than 2 tau (a leak, a hole, a cut-off part) the prior stays; outside the image F = P, so a partial
organ is completed by the prior. The result is the zero level set of F (largest part).
"""

from __future__ import annotations

import igl
import numpy as np
import SimpleITK as sitk
import trimesh
from scipy import ndimage

from ..geometry.level_set import level_set_mesh
from ..io.frames import index_to_lps, index_to_physical, lps_to_index
from ..io.labelmaps import mesh_to_labelmap
from ..prep.mask_distance import PreparedMask, signed_distance_map

# Within this many voxels of the prior surface its distance is computed exactly (point to
# triangle); farther out the voxelised distance map is close enough (only its sign matters there).
EXACT_BAND_VOXELS = 3.0
CHUNK = 200_000  # points per libigl distance query


def extended_grid(reference: sitk.Image, mesh: trimesh.Trimesh, margin: int = 2) -> tuple[sitk.Image, np.ndarray]:
    """A grid with ``reference``'s spacing and direction covering it and ``mesh`` (LPS mm);
    and the (i, j, k) index of ``reference``'s first voxel in it."""
    ijk = lps_to_index(reference, mesh.vertices)
    size = np.array(reference.GetSize())
    lo = np.minimum(0, np.floor(ijk.min(0)).astype(int) - margin)
    hi = np.maximum(size, np.ceil(ijk.max(0)).astype(int) + margin + 1)
    grid = sitk.Image([int(v) for v in hi - lo], sitk.sitkUInt8)
    grid.SetSpacing(reference.GetSpacing())
    grid.SetDirection(reference.GetDirection())
    grid.SetOrigin(reference.TransformContinuousIndexToPhysicalPoint([float(v) for v in lo]))
    return grid, -lo


def mesh_signed_distance(mesh: trimesh.Trimesh, grid: sitk.Image) -> np.ndarray:
    """(K, J, I) signed distance (mm, negative inside) of a closed surface (LPS mm) at ``grid``'s voxels."""
    inside = sitk.GetArrayFromImage(mesh_to_labelmap(mesh, grid)) > 0  # a copy: a view of a temporary dangles
    sdf = signed_distance_map(inside, tuple(grid.GetSpacing()[::-1]), pad_edges=False)
    near = np.abs(sdf) < EXACT_BAND_VOXELS * max(grid.GetSpacing())
    points = index_to_lps(grid, np.argwhere(near)[:, ::-1].astype(np.float64))
    verts, faces = np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)
    # In chunks: libigl crashed on a band of a few million voxels (a 512 x 512 CT grid).
    squared = np.concatenate([igl.point_mesh_squared_distance(np.ascontiguousarray(chunk), verts, faces)[0]
                              for chunk in np.array_split(points, max(1, len(points) // CHUNK + 1))])
    sdf[near] = np.where(inside[near], -1.0, 1.0) * np.sqrt(squared)
    return sdf


def fuse_with_mask(prior: trimesh.Trimesh, prepared: PreparedMask, tau_mm: float,
                   smoothing_voxels: float) -> tuple[trimesh.Trimesh, sitk.Image]:
    """The fused surface (LPS mm) and its segmentation on the mask's grid (uint8)."""
    mask = prepared.mask
    grid, first = extended_grid(mask, prior)
    prior_sdf = mesh_signed_distance(prior, grid)
    spacing = np.array(mask.GetSpacing()[::-1])
    smoothed = ndimage.gaussian_filter(prepared.sdf_mm, smoothing_voxels * spacing.min() / spacing)
    image = tuple(slice(f, f + n) for f, n in zip(first[::-1], sitk.GetArrayViewFromImage(mask).shape))
    fused = prior_sdf.copy()
    difference = smoothed - prior_sdf[image]
    if tau_mm > 0:
        fused[image] += np.clip(2.0 - np.abs(difference) / tau_mm, 0.0, 1.0) * difference
    labels, count = ndimage.label(fused < 0)
    if count > 1:  # one organ: other pieces are lifted just above zero
        largest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
        fused[(labels > 0) & (labels != largest)] = 1e-3
    mesh = level_set_mesh(fused, 0.0, index_to_physical(grid))
    segmentation = sitk.GetImageFromArray((fused[image] < 0).astype(np.uint8))
    segmentation.CopyInformation(mask)
    return mesh, segmentation
