"""shapeprior.prep: surfaces from masks, repair, alignment, normalisation, SDF samples, the dataset pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import trimesh
from scipy.spatial import cKDTree

import shapeprior.prep.dataset as dataset_module
from shapeprior.errors import InputError
from shapeprior.io import read_mesh, write_mesh
from shapeprior.metrics import surface_metrics
from shapeprior.prep.align import align_to_anchor
from shapeprior.prep.dataset import PrepareSettings, find_inputs, prepare_dataset
from shapeprior.prep.normalise import UNIT_RADIUS, transformed, unit_sphere_transform
from shapeprior.prep.sdf import sample_sdf, signed_distance
from shapeprior.prep.surface import interpolate_slices, mask_to_surface, repair_mesh, simplify
from shapeprior.transform import Similarity


def _ellipsoid_volume(radii) -> float:
    return 4.0 / 3.0 * np.pi * float(np.prod(radii))


# ---------------------------------------------------------------- mask -> surface


@pytest.mark.parametrize("handedness", [1, -1], ids=["right-handed", "left-handed"])
def test_mask_to_surface_maps_index_to_lps(helpers, handedness):
    """A rotated, anisotropic grid (spacing ratio 1.6, so slices are interpolated too)."""
    radii, centre = np.array([20.0, 14.0, 9.0]), np.array([-30.4, 26.5, 58.3])
    direction = helpers.rotation(50, axis=(1, -2, 0.5)) @ np.diag([1, 1, handedness])
    image = helpers.ellipsoid_image(radii, spacing=(0.8, 1.1, 1.3), direction=direction, centre=centre)

    surface = mask_to_surface(image)

    assert surface.is_watertight and surface.is_winding_consistent
    assert surface.volume > 0  # outward, whatever the handedness of the grid
    assert surface.volume == pytest.approx(_ellipsoid_volume(radii), rel=0.05)
    # The ellipsoid is axis-aligned in LPS: a wrong index->LPS mapping moves or turns it.
    np.testing.assert_allclose(surface.center_mass, centre, atol=0.3)
    np.testing.assert_allclose(surface.bounds, [centre - radii, centre + radii], atol=1.2)
    assert len(surface.vertices) <= 4000


def test_interpolate_slices_keeps_extent_and_grid(helpers):
    radii = np.array([20.0, 14.0, 11.0])
    image = helpers.ellipsoid_image(radii, spacing=(1.0, 1.0, 4.0), direction=helpers.rotation(30))
    fine = interpolate_slices(image)
    assert fine.GetSpacing() == (1.0, 1.0, 1.0)
    assert fine.GetDirection() == image.GetDirection()
    # Same physical box: the first/last voxel *edges* coincide.
    def box(im):
        d = np.reshape(im.GetDirection(), (3, 3))
        sp, sz = np.array(im.GetSpacing()), np.array(im.GetSize())
        lo = np.array(im.GetOrigin()) - d @ (sp / 2)
        return lo, lo + d @ (sp * sz)
    for a, b in zip(box(image), box(fine)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # Shape-based interpolation must not lose the object's outer slices.
    voxels = sitk.GetArrayViewFromImage(fine).sum()
    assert voxels == pytest.approx(_ellipsoid_volume(radii), rel=0.08)
    iso = helpers.ellipsoid_image(radii, spacing=(1.0, 1.0, 1.2))
    assert interpolate_slices(iso) is iso  # near-isotropic masks are left alone


def test_thick_slices_interpolation_is_closer_to_truth(helpers):
    radii = np.array([20.0, 14.0, 11.0])
    image = helpers.ellipsoid_image(radii, spacing=(1.0, 1.0, 4.0))
    truth = helpers.ellipsoid_mesh(radii, subdivisions=4)

    with_interp = mask_to_surface(image, interpolate=True)
    without = mask_to_surface(image, interpolate=False)

    assert with_interp.is_watertight and without.is_watertight
    m_with = surface_metrics(with_interp, truth, num_points=5000)
    m_without = surface_metrics(without, truth, num_points=5000)
    assert m_with["assd_mm"] < 0.9 * m_without["assd_mm"]
    assert m_with["hd95_mm"] < m_without["hd95_mm"]
    assert with_interp.volume == pytest.approx(truth.volume, rel=0.06)


def test_mask_touching_border_gives_closed_surface():
    array = np.zeros((12, 12, 12), dtype=np.uint8)
    array[:6, 3:9, 3:9] = 1  # touches the k = 0 face of the image
    surface = mask_to_surface(sitk.GetImageFromArray(array), smoothing_mm=0.5)
    assert surface.is_watertight and surface.volume > 0


# ---------------------------------------------------------------- repair and simplification


def _holed_sphere(radius=20.0):
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    fan = np.flatnonzero((sphere.faces == 0).any(axis=1))  # the 5 faces around an icosahedron corner
    keep = np.setdiff1d(np.arange(len(sphere.faces)), fan)
    return trimesh.Trimesh(sphere.vertices, sphere.faces[keep], process=False), len(fan)


def test_repair_closes_a_hole(helpers):
    holed, removed = _holed_sphere()
    assert not holed.is_watertight and removed == 5

    repaired, report = repair_mesh(holed, voxel_mm=1.5)

    assert repaired.is_watertight and repaired.is_winding_consistent and repaired.volume > 0
    assert report.watertight and report.boundary_edges == removed  # the hole's rim
    assert report.nonmanifold_edges == 0 and report.components_removed == 0
    assert "winding-number" in report.method
    assert repaired.volume == pytest.approx(4 / 3 * np.pi * 20.0**3, rel=0.05)
    assert surface_metrics(repaired, trimesh.creation.icosphere(4, radius=20.0), 5000)["hd95_mm"] < 1.0


def test_repair_drops_small_components_and_keeps_clean_meshes():
    big = trimesh.creation.icosphere(3, radius=10.0)
    speck = trimesh.creation.icosphere(1, radius=1.0).apply_translation([30, 0, 0])
    both = trimesh.util.concatenate([big, speck])
    repaired, report = repair_mesh(both)
    assert report.components_removed == 1 and report.method == "none" and report.boundary_edges == 0
    assert report.watertight and len(repaired.vertices) == len(big.vertices)
    assert repaired.volume == pytest.approx(big.volume)
    inward = big.copy()
    inward.invert()
    fixed, _ = repair_mesh(inward)
    assert fixed.volume == pytest.approx(big.volume)  # turned outward


def test_repair_liver_mesh_with_holes(liver_paths):
    liver = read_mesh(liver_paths[0])
    repaired, report = repair_mesh(liver, voxel_mm=3.0, target_vertices=1500)
    assert report.watertight and repaired.is_watertight and repaired.volume > 0
    if not liver.is_watertight:
        assert report.boundary_edges > 0 and report.method != "none"
    assert repaired.volume == pytest.approx(abs(liver.volume), rel=0.05)


def test_simplify_keeps_closed():
    sphere = trimesh.creation.icosphere(5, radius=10.0)  # 10242 vertices
    small = simplify(sphere, 500)
    assert small.is_watertight and small.is_winding_consistent
    assert len(small.vertices) <= 2 * 500
    assert small.volume == pytest.approx(sphere.volume, rel=0.03)


# ---------------------------------------------------------------- alignment


@pytest.fixture(params=["ellipsoid", "liver"])
def anchor_shape(request, helpers):
    if request.param == "liver":
        return read_mesh(request.getfixturevalue("liver_paths")[1])
    # Distinct semi-axes and an off-centre bump, so no symmetry makes the answer ambiguous.
    mesh = helpers.ellipsoid_mesh([30, 18, 10], centre=(5, -3, 40), subdivisions=3)
    v = mesh.vertices.copy()
    v += 6.0 * np.exp(-(((v - [35, -3, 40]) / 12.0) ** 2).sum(1))[:, None] * [1, 0.5, 0]
    return trimesh.Trimesh(v, mesh.faces, process=False)


def test_align_recovers_known_similarity(anchor_shape, helpers):
    known = Similarity(1.3, helpers.rotation(20, axis=(1, 2, 3)), [12.0, -7.0, 25.0])
    moving = transformed(anchor_shape, known)

    estimate = align_to_anchor(moving, anchor_shape, num_points=300, seed=0)

    size = float(anchor_shape.bounding_sphere.primitive.radius)
    error = np.linalg.norm(estimate.apply(moving.vertices) - anchor_shape.vertices, axis=1)
    assert error.max() < 0.015 * size
    assert estimate.scale == pytest.approx(1 / 1.3, rel=0.005)
    composed = estimate.compose(known)  # ~identity
    angle = np.degrees(np.arccos(np.clip((np.trace(composed.rotation) - 1) / 2, -1, 1)))
    assert angle < 1.0
    np.testing.assert_allclose(composed.translation, 0, atol=0.01 * size)


# ---------------------------------------------------------------- normalisation


def test_unit_sphere_transform(helpers):
    mesh = helpers.ellipsoid_mesh([40, 25, 12], centre=(100, -50, 30), axes=helpers.rotation(15), subdivisions=3)
    transform = unit_sphere_transform(mesh)
    assert np.allclose(transform.rotation, np.eye(3))
    unit = transformed(mesh, transform)
    norms = np.linalg.norm(unit.vertices, axis=1)
    assert norms.max() == pytest.approx(UNIT_RADIUS, rel=1e-4) and UNIT_RADIUS == pytest.approx(1 / 1.03)
    assert norms.max() < 1.0
    np.testing.assert_allclose(unit.bounds.mean(0), 0, atol=1e-3)  # symmetric shape: centred
    assert unit.volume == pytest.approx(mesh.volume * transform.scale**3)  # no reflection
    np.testing.assert_allclose(transform.inverse().apply(unit.vertices), mesh.vertices, atol=1e-9)


# ---------------------------------------------------------------- SDF samples


def _check_rows(pos, neg, n):
    assert pos.shape == (n // 2, 4) and neg.shape == (n // 2, 4)
    assert pos.dtype == np.float32 and neg.dtype == np.float32
    assert (pos[:, 3] > 0).all() and (neg[:, 3] <= 0).all()


def test_sample_sdf_sphere_values_and_balance():
    radius, n = 0.5, 20000
    sphere = trimesh.creation.icosphere(4, radius=radius)
    pos, neg = sample_sdf(sphere, n, seed=3)
    _check_rows(pos, neg, n)
    rows = np.concatenate([pos, neg]).astype(np.float64)
    exact = np.linalg.norm(rows[:, :3], axis=1) - radius
    np.testing.assert_allclose(rows[:, 3], exact, atol=3e-3)  # faceting error of the icosphere
    # Samples are reproducible by seed.
    again = sample_sdf(sphere, n, seed=3)
    np.testing.assert_array_equal(again[0], pos)

    # Samples farther than 0.3 from the surface can only come from the uniform part
    # (20% of candidates in the unit ball; near-surface jitter is at most sigma = 0.1).
    # Ball-volume fractions give the expected share after balancing pos/neg halves:
    u = 0.2
    u_in, u_far_in = radius**3, 0.2**3  # |p| < 0.5, |p| < 0.2
    u_out, u_far_out = 1 - radius**3, 1 - 0.8**3  # |p| > 0.5, |p| > 0.8
    near = (1 - u) / 2  # near-surface candidates per side
    expected = 0.5 * u * u_far_out / (u * u_out + near) + 0.5 * u * u_far_in / (u * u_in + near)
    far = np.abs(rows[:, 3]) > 0.3
    assert far.mean() == pytest.approx(expected, abs=0.012)  # ~0.087
    assert (np.linalg.norm(rows[far, :3], axis=1) <= 1 + 1e-6).all()  # uniform samples lie in the unit ball
    no_uniform = np.concatenate(sample_sdf(sphere, 4000, seed=3, uniform_fraction=0.0))
    assert (np.abs(no_uniform[:, 3]) > 0.3).mean() < 0.005


@pytest.fixture(scope="module")
def torus():
    """A non-convex watertight shape inside the unit sphere, with an analytic SDF."""
    mesh = trimesh.creation.torus(major_radius=0.6, minor_radius=0.25, major_sections=48, minor_sections=24)
    assert mesh.is_watertight and mesh.volume > 0
    return mesh


def _torus_sdf(points):
    return np.sqrt((np.hypot(points[:, 0], points[:, 1]) - 0.6) ** 2 + points[:, 2] ** 2) - 0.25


def test_sample_sdf_torus(torus):
    n = 6000
    pos, neg = sample_sdf(torus, n, seed=1)
    _check_rows(pos, neg, n)
    rows = np.concatenate([pos, neg]).astype(np.float64)
    exact = _torus_sdf(rows[:, :3])
    np.testing.assert_allclose(rows[:, 3], exact, atol=6e-3)  # faceting error of the mesh
    clear = np.abs(exact) > 6e-3
    np.testing.assert_array_equal(rows[clear, 3] <= 0, exact[clear] <= 0)


def test_sample_sdf_signs_match_trimesh_contains(torus):
    pytest.importorskip("rtree", reason="trimesh's contains() needs rtree (not a shapeprior dependency)")
    rows = np.concatenate(sample_sdf(torus, 4000, seed=1)).astype(np.float64)
    clear = np.abs(rows[:, 3]) > 1e-3  # ray tests are unreliable right on the surface
    np.testing.assert_array_equal(torus.contains(rows[clear, :3]), rows[clear, 3] <= 0)


def test_sample_sdf_signs_with_a_hole():
    radius = 0.8
    holed, _ = _holed_sphere(radius)
    assert not holed.is_watertight
    hole_centre = holed.vertices[0]  # the removed fan's apex
    n = 8000
    pos, neg = sample_sdf(holed, n, seed=2)
    _check_rows(pos, neg, n)
    rows = np.concatenate([pos, neg]).astype(np.float64)
    r = np.linalg.norm(rows[:, :3], axis=1)
    far_from_hole = np.linalg.norm(rows[:, :3] - hole_centre, axis=1) > 0.3
    clear = np.abs(r - radius) > 5e-3  # off the faceted surface
    mask = far_from_hole & clear
    assert mask.sum() > 0.8 * n
    np.testing.assert_array_equal(rows[mask, 3] <= 0, r[mask] < radius)
    # Also on a regular grid of points, not just the sampler's own.
    grid = np.stack(np.meshgrid(*[np.linspace(-0.95, 0.95, 15)] * 3, indexing="ij"), -1).reshape(-1, 3)
    g = np.linalg.norm(grid, axis=1)
    keep = (np.linalg.norm(grid - hole_centre, axis=1) > 0.3) & (np.abs(g - radius) > 5e-3)
    np.testing.assert_array_equal(signed_distance(holed, grid[keep]) <= 0, g[keep] < radius)


# ---------------------------------------------------------------- dataset pipeline


@pytest.fixture
def three_masks(tmp_path, helpers) -> tuple[Path, np.ndarray]:
    """The same asymmetric ellipsoid in three scans: other pose, size and voxel grid each."""
    src = tmp_path / "masks"
    src.mkdir()
    radii = np.array([14.0, 10.0, 6.0])
    poses = [  # (name, scale, rotation of the shape, centre, spacing, grid direction)
        ("case_a", 1.0, helpers.rotation(0), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3)),
        ("case_b", 1.15, helpers.rotation(20, (0, 0, 1)), (40.0, -10.0, 5.0), (0.9, 0.9, 1.2), np.diag([-1.0, -1.0, 1.0])),
        ("case_c", 0.9, helpers.rotation(15, (1, 1, 0)), (-20.0, 30.0, -60.0), (1.1, 1.0, 1.0), helpers.rotation(30)),
    ]
    for name, scale, axes, centre, spacing, direction in poses:
        image = helpers.ellipsoid_image(scale * radii, spacing=spacing, direction=direction, centre=centre, axes=axes)
        sitk.WriteImage(image, str(src / f"{name}.nii.gz"))
    return src, radii


SMALL = dict(target_vertices=800, align_points=400, sdf_samples=2000)


def test_prepare_dataset_end_to_end(tmp_path, three_masks, helpers):
    src, _ = three_masks
    out = tmp_path / "dataset"
    messages = []
    manifest = prepare_dataset(src, out, PrepareSettings(**SMALL), progress=False, log=messages.append)

    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "shapeprior-dataset/1"
    assert set(manifest["shapes"]) == {"case_a", "case_b", "case_c"}
    assert manifest["anchor"] in manifest["shapes"] and manifest["settings"]["sdf_samples"] == 2000
    assert manifest["anchor"] == "case_a"  # the median volume (scales 0.9, 1.0, 1.15)
    assert messages and "3 shapes" in messages[-1]
    unit_meshes = {}
    for name, entry in manifest["shapes"].items():
        assert entry["kind"] == "mask" and entry["source"] == str((src / f"{name}.nii.gz").resolve())
        surface = read_mesh(out / entry["surface"])
        assert surface.is_watertight and entry["volume_mm3"] == pytest.approx(surface.volume, rel=1e-6)
        to_unit, from_unit = Similarity.from_dict(entry["to_unit"]), Similarity.from_dict(entry["from_unit"])
        # A surface vertex goes to the unit mesh and back.
        vertex = surface.vertices[17]
        np.testing.assert_allclose(from_unit.apply(to_unit.apply(vertex)), vertex, atol=1e-8)
        unit = read_mesh(out / entry["unit"])
        dist, _ = cKDTree(unit.vertices).query(to_unit.apply(surface.vertices))
        assert dist.max() < 1e-5
        assert np.linalg.norm(unit.vertices, axis=1).max() <= UNIT_RADIUS + 1e-6
        assert unit.volume > 0
        with np.load(out / entry["sdf"]) as sdf:
            _check_rows(sdf["pos"], sdf["neg"], 2000)
        unit_meshes[name] = unit
    # Alignment put the three copies of one shape on top of each other in the unit sphere.
    for name in ("case_b", "case_c"):
        assert surface_metrics(unit_meshes[name], unit_meshes["case_a"], 3000)["assd_mm"] < 0.03
    assert helpers.temp_files(out) == []


def test_prepare_dataset_rerun_skips_and_resumes(tmp_path, three_masks, helpers, monkeypatch):
    src, _ = three_masks
    out = tmp_path / "dataset"
    settings = PrepareSettings(**SMALL)
    first = prepare_dataset(src, out, settings, progress=False)
    before = helpers.snapshot(out)

    def forbidden(*args, **kwargs):
        raise AssertionError("finished work was redone")

    for name in ("mask_to_surface", "align_to_anchor", "sample_sdf", "write_mesh"):
        monkeypatch.setattr(dataset_module, name, forbidden)
    assert prepare_dataset(src, out, settings, progress=False) == first
    after = helpers.snapshot(out)
    assert {k: v[:2] for k, v in after.items() if k != "manifest.json"} == {
        k: v[:2] for k, v in before.items() if k != "manifest.json"
    }
    assert after["manifest.json"][2] == before["manifest.json"][2]
    monkeypatch.undo()

    # A lost surface file is rebuilt, and only that one.
    (out / first["shapes"]["case_c"]["surface"]).unlink()
    extracted = []
    real = dataset_module.mask_to_surface
    monkeypatch.setattr(dataset_module, "mask_to_surface", lambda *a, **k: extracted.append(1) or real(*a, **k))
    prepare_dataset(src, out, settings, progress=False)
    assert len(extracted) == 1 and (out / first["shapes"]["case_c"]["surface"]).is_file()


def test_prepare_dataset_other_settings_refused(tmp_path, three_masks, helpers):
    src, _ = three_masks
    out = tmp_path / "dataset"
    prepare_dataset(src, out, PrepareSettings(**SMALL), progress=False)
    before = helpers.snapshot(out)
    with pytest.raises(InputError, match="other settings") as err:
        prepare_dataset(src, out, PrepareSettings(**{**SMALL, "sdf_samples": 4000}), progress=False)
    assert err.value.path == str(out)
    assert helpers.snapshot(out) == before


def test_prepare_dataset_from_meshes(tmp_path, helpers):
    """Mesh inputs go through repair; a holed one is rebuilt and reported."""
    src = tmp_path / "meshes"
    out = tmp_path / "dataset"
    write_mesh(helpers.ellipsoid_mesh([20, 12, 8], subdivisions=3), src / "a.ply")
    write_mesh(helpers.ellipsoid_mesh([22, 13, 9], axes=helpers.rotation(10), subdivisions=3), src / "b.stl")
    holed, _ = _holed_sphere(15.0)
    write_mesh(holed, src / "c.obj")
    manifest = prepare_dataset(src, out, PrepareSettings(**SMALL, anchor="b"), progress=False)
    assert manifest["anchor"] == "b"
    assert manifest["shapes"]["a"]["repair"]["method"] == "none"
    assert manifest["shapes"]["c"]["repair"]["boundary_edges"] == 5
    assert manifest["shapes"]["c"]["repair"]["watertight"]
    assert Similarity.from_dict(manifest["shapes"]["b"]["align"]).scale == 1.0  # the anchor is not moved


def test_find_inputs(tmp_path):
    (tmp_path / "b.nii.gz").write_bytes(b"")
    (tmp_path / "a.seg.nrrd").write_bytes(b"")
    (tmp_path / "c.vtp").write_bytes(b"")
    (tmp_path / ".hidden.obj").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert [(n, k) for n, _, k in find_inputs(tmp_path)] == [("a", "mask"), ("b", "mask"), ("c", "mesh")]
    (tmp_path / "b.obj").write_bytes(b"")
    with pytest.raises(InputError, match="share the name 'b'"):
        find_inputs(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no masks"):
        find_inputs(tmp_path / "empty")
    with pytest.raises(InputError, match="not a folder"):
        find_inputs(tmp_path / "notes.txt")
