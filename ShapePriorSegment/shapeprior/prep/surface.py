"""Binary mask -> clean surface in LPS millimetres, and mesh repair."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import igl
import numpy as np
import SimpleITK as sitk
import trimesh

from ..geometry.level_set import level_set_mesh
from ..io.frames import index_to_physical

# Slices thicker than this many times the in-plane spacing are interpolated.
THICK_SLICE_RATIO = 1.5


@dataclass
class RepairReport:
    """What :func:`repair_mesh` found and did."""

    components_removed: int = 0
    boundary_edges: int = 0
    nonmanifold_edges: int = 0
    method: str = "none"
    watertight: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def interpolate_slices(mask: sitk.Image) -> sitk.Image:
    """Resample a thick-slice mask to isotropic spacing by signed-distance interpolation.

    Linear interpolation of the signed distance map between slices gives smooth
    shape transitions instead of the staircase of nearest-neighbour upsampling.
    Masks with near-isotropic voxels are returned unchanged.
    """
    spacing = np.array(mask.GetSpacing())
    if spacing.max() <= THICK_SLICE_RATIO * spacing.min():
        return mask
    # ITK's Maurer map puts the object's own boundary voxels at distance 0, so thresholding
    # it at 0 would drop that whole layer (a thick slice at each end). Averaging it with the
    # negated map of the background puts the zero level half-way between inside and outside voxels.
    binary = sitk.Cast(mask > 0, sitk.sitkUInt8)
    maurer = dict(insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    sdf = 0.5 * (sitk.SignedMaurerDistanceMap(binary, **maurer) - sitk.SignedMaurerDistanceMap(1 - binary, **maurer))
    new_spacing = np.full(3, spacing.min())
    new_size = np.maximum(1, np.round(np.array(mask.GetSize()) * spacing / new_spacing)).astype(int)
    # Keep the physical extent centred: shift the origin by half the voxel-size change.
    direction = np.array(mask.GetDirection()).reshape(3, 3)
    origin = np.array(mask.GetOrigin()) + direction @ ((new_spacing - spacing) / 2)
    resampled = sitk.Resample(
        sdf, [int(s) for s in new_size], sitk.Transform(), sitk.sitkLinear,
        origin.tolist(), new_spacing.tolist(), mask.GetDirection(), float(spacing.max() * 10), sitk.sitkFloat32,
    )
    return sitk.Cast(resampled < 0, sitk.sitkUInt8)


def largest_component(mesh: trimesh.Trimesh) -> tuple[trimesh.Trimesh, int]:
    """Keep the connected component with the most faces; return it and how many were dropped."""
    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh, 0
    keep = max(parts, key=lambda p: len(p.faces))
    return keep, len(parts) - 1


def mask_to_surface(
    mask: sitk.Image,
    smoothing_mm: float = 1.0,
    interpolate: bool = True,
    target_vertices: int | None = 4000,
) -> trimesh.Trimesh:
    """Extract the surface of a binary mask in LPS millimetres.

    Steps: optional thick-slice interpolation, Gaussian smoothing (sigma in mm),
    marching cubes at 0.5, largest component, quadric simplification to at most
    ``target_vertices`` vertices. Faces point outward. The mask is padded first so
    organs touching the image border still give a closed surface.
    """
    if interpolate:
        mask = interpolate_slices(mask)
    padded = sitk.ConstantPad(sitk.Cast(mask, sitk.sitkFloat32), [2, 2, 2], [2, 2, 2], 0.0)
    if smoothing_mm > 0:
        padded = sitk.SmoothingRecursiveGaussian(padded, float(smoothing_mm))
    array = sitk.GetArrayFromImage(padded)  # (k, j, i)
    level = 0.5 if array.max() > 0.5 else 0.5 * float(array.max())  # tiny masks blur below 0.5
    mesh = level_set_mesh(array, level, index_to_physical(padded))
    mesh, _ = largest_component(trimesh.Trimesh(mesh.vertices, mesh.faces, process=True))
    if target_vertices and len(mesh.vertices) > target_vertices:
        mesh = simplify(mesh, target_vertices)
    return mesh


def simplify(mesh: trimesh.Trimesh, target_vertices: int) -> trimesh.Trimesh:
    """Quadric decimation to about ``target_vertices`` vertices, keeping the mesh closed.

    Decimating thin parts too far can pinch an edge into a non-manifold one; then
    larger targets are tried, since a closed surface matters more than the exact
    count. If none stays closed, a closed input is returned undecimated.
    """
    for factor in (1.0, 1.1, 1.25, 1.5, 2.0):
        faces = max(8, int(2 * target_vertices * factor) - 4)  # closed genus-0: F = 2V - 4
        out = mesh.simplify_quadric_decimation(face_count=faces)
        out.remove_unreferenced_vertices()
        if out.is_watertight and out.is_winding_consistent:
            return out
    return mesh if mesh.is_watertight else out


def edge_use_counts(mesh: trimesh.Trimesh) -> tuple[int, int]:
    """(edges used by one face, edges used by more than two faces)."""
    _, counts = np.unique(np.sort(mesh.edges, axis=1), axis=0, return_counts=True)
    return int((counts == 1).sum()), int((counts > 2).sum())


def winding_number_remesh(
    mesh: trimesh.Trimesh, voxel_mm: float = 1.5, smoothing_mm: float = 1.0, target_vertices: int | None = None
) -> trimesh.Trimesh:
    """Rebuild a closed manifold surface from the generalised winding number.

    The winding number is ~1 inside and ~0 outside even where the input has holes,
    non-manifold edges or inconsistent faces, so thresholding it at 0.5 on a grid and
    re-extracting the surface repairs any such defect (the grid is ``voxel_mm`` fine).
    """
    lo, hi = mesh.bounds
    axes = [np.arange(lo[i] - 3 * voxel_mm, hi[i] + 3 * voxel_mm, voxel_mm) for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    winding = igl.fast_winding_number(
        np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64), grid
    )
    inside = (winding > 0.5).reshape([len(a) for a in axes])
    image = sitk.GetImageFromArray(np.ascontiguousarray(inside.transpose(2, 1, 0)).astype(np.uint8))
    image.SetSpacing([voxel_mm] * 3)
    image.SetOrigin([float(a[0]) for a in axes])
    return mask_to_surface(image, smoothing_mm=smoothing_mm, interpolate=False, target_vertices=target_vertices)


def repair_mesh(
    mesh: trimesh.Trimesh, voxel_mm: float = 1.5, target_vertices: int | None = None
) -> tuple[trimesh.Trimesh, RepairReport]:
    """Keep the largest component; if it is not a closed manifold, rebuild it.

    Returns the repaired mesh (faces outward) and a report of the defects found.
    """
    report = RepairReport()
    mesh, report.components_removed = largest_component(mesh)
    report.boundary_edges, report.nonmanifold_edges = edge_use_counts(mesh)
    if not (mesh.is_watertight and mesh.is_winding_consistent):
        mesh = winding_number_remesh(mesh, voxel_mm=voxel_mm, target_vertices=target_vertices)
        report.method = f"winding-number remesh at {voxel_mm:g} mm"
    elif target_vertices and len(mesh.vertices) > target_vertices:
        mesh = simplify(mesh, target_vertices)
    if mesh.volume < 0:
        mesh.invert()
    report.watertight = bool(mesh.is_watertight)
    return mesh, report
