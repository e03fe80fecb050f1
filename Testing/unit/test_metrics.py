"""shapeprior.metrics, checked against analytic values, hand counts and brute-force computations."""

from __future__ import annotations

import time

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from shapeprior.metrics import (
    assd_voxel,
    dice,
    hd95_voxel,
    mask_surface,
    mesh_quality,
    self_intersection_fraction,
    surface_distances_of_masks,
    surface_metrics,
)


def _sphere(radius: float = 1.0, centre=(0.0, 0.0, 0.0), level: int = 5) -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=level, radius=radius).apply_translation(centre)


# ---------------------------------------------------------------- surface distances


def test_identical_meshes():
    mesh = _sphere(10, level=4)
    m = surface_metrics(mesh, mesh.copy(), num_points=5000)
    assert m["assd_mm"] < 1e-9 and m["hd95_mm"] < 1e-9 and m["hausdorff_mm"] < 1e-9
    assert m["fscore_1"] == 100 and m["fscore_2"] == 100 and m["chamfer_normalised"] < 1e-18


def test_concentric_spheres():
    ref = _sphere(10)
    m = surface_metrics(_sphere(11), ref)
    # Every point of either sphere is 1 mm from the other (faceting error ~1e-3 mm).
    for key in ("assd_mm", "hd95_mm", "hausdorff_mm"):
        assert m[key] == pytest.approx(1.0, abs=5e-3)
    # tau = 1 % / 2 % of the 20 mm diameter = 0.2 / 0.4 mm < 1 mm.
    assert m["fscore_1"] == 0 and m["fscore_2"] == 0
    assert m["chamfer_normalised"] == pytest.approx(2 * (1 / 10) ** 2, rel=1e-2)
    # A 0.3 mm gap lies between the two thresholds.
    closer = surface_metrics(_sphere(10.3), ref)
    assert closer["fscore_1"] == 0 and closer["fscore_2"] == 100
    # The box convention: 2 % of the 20 mm cube's diagonal (0.69 mm) also admits 0.6 mm.
    looser = surface_metrics(_sphere(10.6), ref)
    assert looser["fscore_2"] == 0 and looser["fscore_2_box"] == 100


def test_fscore_within_regions():
    """Pred = ref on the x > 0 half, 1 mm outside it on the x < 0 half (tau 0.4 mm)."""
    ref = _sphere(10, level=5)
    verts = ref.vertices.copy()
    verts[verts[:, 0] < 0] *= 1.1
    pred = trimesh.Trimesh(verts, ref.faces, process=False)
    m = surface_metrics(pred, ref, regions={"right": lambda p: p[:, 0] > 1, "left": lambda p: p[:, 0] < -1,
                                            "nowhere": lambda p: p[:, 0] > 100})
    assert m["fscore_2_right"] == 100 and m["fscore_2_left"] == 0
    assert 0 < m["fscore_2"] < 100 and np.isnan(m["fscore_2_nowhere"])
    # Where only the reference has surface, nothing of it is recalled.
    inner = {"inner": lambda p: np.linalg.norm(p, axis=1) < 10.5}
    assert surface_metrics(_sphere(11), ref, num_points=2000, regions=inner)["fscore_2_inner"] == 0


def test_shifted_spheres_match_analytic_distances():
    """Distances to a sphere are | |p - c| - r |; estimate the metrics from independent samples."""
    ref, pred = _sphere(10), _sphere(10, centre=(1.5, 0, 0))
    m = surface_metrics(pred, ref, num_points=30000, seed=5)
    pred_points = trimesh.sample.sample_surface(pred, 50000, seed=100)[0]
    ref_points = trimesh.sample.sample_surface(ref, 50000, seed=101)[0]
    pred_to_ref = np.abs(np.linalg.norm(pred_points, axis=1) - 10)
    ref_to_pred = np.abs(np.linalg.norm(ref_points - [1.5, 0, 0], axis=1) - 10)
    assert m["assd_mm"] == pytest.approx(np.r_[pred_to_ref, ref_to_pred].mean(), rel=0.02)
    expected_hd95 = max(np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95))
    assert m["hd95_mm"] == pytest.approx(expected_hd95, rel=0.02)
    assert m["hausdorff_mm"] == pytest.approx(1.5, abs=0.01)
    tau = 0.02 * 20
    precision, recall = np.mean(pred_to_ref < tau), np.mean(ref_to_pred < tau)
    assert m["fscore_2"] == pytest.approx(200 * precision * recall / (precision + recall), abs=1.5)
    expected_chamfer = np.mean((pred_to_ref / 10) ** 2) + np.mean((ref_to_pred / 10) ** 2)
    assert m["chamfer_normalised"] == pytest.approx(expected_chamfer, rel=0.03)


def test_box_vs_sphere_matches_dense_point_cloud():
    """Point-to-surface distances approximated by the nearest of very many surface samples."""
    ref, pred = trimesh.creation.box(extents=(16, 16, 16)), _sphere(10, level=4)
    m = surface_metrics(pred, ref, num_points=20000)
    dense_ref = cKDTree(trimesh.sample.sample_surface(ref, 400000, seed=1)[0])
    dense_pred = cKDTree(trimesh.sample.sample_surface(pred, 400000, seed=2)[0])
    pred_to_ref = dense_ref.query(trimesh.sample.sample_surface(pred, 20000, seed=3)[0])[0]
    ref_to_pred = dense_pred.query(trimesh.sample.sample_surface(ref, 20000, seed=4)[0])[0]
    assert m["assd_mm"] == pytest.approx(np.r_[pred_to_ref, ref_to_pred].mean(), rel=0.03)
    expected_hd95 = max(np.percentile(pred_to_ref, 95), np.percentile(ref_to_pred, 95))
    assert m["hd95_mm"] == pytest.approx(expected_hd95, rel=0.03)
    # The box's bounding sphere has radius 8 sqrt(3).
    radius = 8 * np.sqrt(3)
    expected_chamfer = np.mean((pred_to_ref / radius) ** 2) + np.mean((ref_to_pred / radius) ** 2)
    assert m["chamfer_normalised"] == pytest.approx(expected_chamfer, rel=0.05)


# ---------------------------------------------------------------- mesh quality and self-intersection


def test_mesh_quality():
    tetrahedron = trimesh.Trimesh(
        [[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], [[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]]
    )
    assert mesh_quality(tetrahedron) == pytest.approx(1.0)
    sphere = _sphere(level=3)
    edges = sphere.triangles - np.roll(sphere.triangles, 1, axis=1)
    expected = np.mean(4 * np.sqrt(3) * sphere.area_faces / (edges**2).sum((1, 2)))
    assert mesh_quality(sphere) == pytest.approx(expected, rel=1e-9)


def test_self_intersection_free_meshes():
    sphere = _sphere(level=4)  # 2562 vertices
    start = time.perf_counter()
    assert self_intersection_fraction(sphere) == 0
    assert time.perf_counter() - start < 1.0
    disjoint = trimesh.util.concatenate([sphere, _sphere(centre=(2.5, 0, 0), level=4)])
    assert self_intersection_fraction(disjoint) == 0


def test_self_intersection_of_overlapping_spheres():
    first, second = _sphere(level=4), _sphere(centre=(1.0, 0, 0), level=4)
    start = time.perf_counter()
    fraction = self_intersection_fraction(trimesh.util.concatenate([first, second]))
    assert time.perf_counter() - start < 1.0

    # Independently: the faces of one sphere with corners both inside and outside the other.
    def straddling(mesh, centre):
        r = np.linalg.norm(mesh.triangles - centre, axis=2)
        return np.sum((r < 1).any(1) & (r > 1).any(1))

    expected = (straddling(first, [1.0, 0, 0]) + straddling(second, [0, 0, 0])) / (2 * len(first.faces))
    assert fraction > 0
    assert fraction == pytest.approx(expected, rel=0.2)


# ---------------------------------------------------------------- voxel metrics


def _cubes() -> tuple[np.ndarray, np.ndarray]:
    a = np.zeros((12, 12, 12), dtype=bool)
    b = a.copy()
    a[2:7, 2:7, 2:7] = True
    b[4:9, 2:7, 2:7] = True  # a shifted by 2 voxels along axis 0
    return a, b


def test_voxel_metrics_on_shifted_cubes():
    a, b = _cubes()
    # Overlap 3 x 5 x 5 = 75 of 125 voxels each.
    assert dice(a, b) == pytest.approx(2 * 75 / 250)
    # Each cube has 98 surface voxels. Distances from a's to b's (by symmetry the same the
    # other way), spacing (1, 1, 2) mm: x=2 face 25 x 2 mm; x=3 ring 16 x 1 mm; x=4, 5 rings
    # 0; x=6 face: its ring 16 x 0, (y in {3, 5}) 6 x 1 mm, (y=4) 3 x 2 mm.
    # So 48 x 0, 22 x 1, 28 x 2 mm: the 95th percentile is 2 mm and the mean 78/98 mm.
    assert hd95_voxel(a, b, (1, 1, 2)) == pytest.approx(2.0)
    assert assd_voxel(a, b, (1, 1, 2)) == pytest.approx(78 / 98)
    # With isotropic spacing (6, 4, 3) and (6, 4, 5) are 1 mm from b's ring instead of 2.
    assert assd_voxel(a, b, (1, 1, 1)) == pytest.approx(76 / 98)


def test_voxel_metrics_identical_and_empty():
    a, _ = _cubes()
    empty = np.zeros_like(a)
    assert dice(a, a) == 1 and hd95_voxel(a, a, (1, 1, 1)) == 0 and assd_voxel(a, a, (1, 1, 1)) == 0
    assert dice(empty, empty) == 1.0 and dice(a, empty) == 0.0
    assert np.isnan(hd95_voxel(a, empty, (1, 1, 1))) and np.isnan(assd_voxel(empty, empty, (1, 1, 1)))
    with pytest.raises(ValueError):
        dice(a, a[1:])


def test_mask_surface_runs_midway_between_voxel_centres_in_mm():
    a, _ = _cubes()  # voxels 2..6 along each axis
    surface = mask_surface(a, (1, 1, 2))
    assert surface.is_watertight
    np.testing.assert_allclose(surface.bounds, [[1.5, 1.5, 3.0], [6.5, 6.5, 13.0]])


def test_surface_distances_of_masks_one_extra_layer():
    a = np.zeros((12, 10, 10), dtype=bool)
    b = a.copy()
    a[2:7, 2:7, 2:7] = True
    b[2:8, 2:7, 2:7] = True  # one more layer along axis 0
    # b's top face (25 of its 170 voxel-face units, 15%) is one voxel above a's; the rest
    # of either surface lies on or within a voxel of the other: HD95 is one voxel along axis 0.
    assert surface_distances_of_masks(a, b, (1, 1, 1))["hd95_mm"] == pytest.approx(1.0)
    assert surface_distances_of_masks(a, b, (2, 1, 1))["hd95_mm"] == pytest.approx(2.0)
    assert 0 < surface_distances_of_masks(a, b, (1, 1, 1))["assd_mm"] < 0.5
    same = surface_distances_of_masks(a, a, (1, 1, 1))
    assert same["hd95_mm"] == pytest.approx(0, abs=1e-9) and same["assd_mm"] == pytest.approx(0, abs=1e-9)
    assert np.isnan(surface_distances_of_masks(a, np.zeros_like(a), (1, 1, 1))["hd95_mm"])


def test_surface_hd95_of_masks_resolves_what_voxel_hd95_ties():
    # Balls of radius 10 and 10.4 voxels: voxel HD95 can only say 0 or 1 voxel; the
    # marching-cubes surfaces are about 0.4 voxels apart.
    grid = np.indices((30, 30, 30)) - 14.5
    radius = np.sqrt((grid**2).sum(0))
    small, large = radius < 10, radius < 10.4
    assert hd95_voxel(small, large, (1, 1, 1)) in (0.0, 1.0)
    surface = surface_distances_of_masks(small, large, (1, 1, 1))
    assert 0.2 < surface["assd_mm"] < 0.6
