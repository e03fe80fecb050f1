"""Contours, painted labelmaps, markups, DALS fitting, model bundles, training and the benchmark baselines.

Every DALS model here is tiny and randomly initialised (the ``tiny_model`` fixture: its mean
shape is close to the unit sphere, 80-130 mm per unit); the shipped models are never used.
"""

from __future__ import annotations

import json
from dataclasses import replace
import pickle
import shutil
from pathlib import Path

import igl
import numpy as np
import pytest
import SimpleITK as sitk
import torch
import trimesh

from shapeprior.bench.baselines import convex_hull, fill_between_slices, rbf_surface
from shapeprior.bench.contours import MAIN_METHOD, cut_curves, run_benchmark, summarise
from shapeprior.errors import InputError
from shapeprior.fit.contour_interpolation import blend_with_contours, contour_interpolant, in_plane_normals
from shapeprior.fit.contours import Plane, group_planes, resample_closed_curve
from shapeprior.fit.dals_fit import (
    ContourTask,
    FitCancelled,
    FitSettings,
    PointTask,
    contour_residuals,
    fit_dals,
    initial_pose,
    laplacian_modes,
)
from shapeprior.fit.run import check_size, fit_curves, fit_points, residual_warnings
from shapeprior.io.points import read_point_cloud
from shapeprior.geometry import icosphere
from shapeprior.io import write_mesh
from shapeprior.io.labelmaps import painted_slice_contours
from shapeprior.io.markups import read_closed_curves, read_point_list, write_closed_curves
from shapeprior.metrics import surface_metrics
from shapeprior.models.bundle import load_bundle, resolve_model, save_bundle
from shapeprior.models.dals import DALSConfig, DALSDecoder, bundle_tensors, decoder_from_bundle, rotated_tensors
from shapeprior.transform import Similarity

FAST = FitSettings(level=2, global_steps=20, vertex_steps=10, vertex_modes=8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ellipse(centre, u, v, a: float, b: float, count: int = 24) -> np.ndarray:
    """Closed curve (count, 3): ``centre + a cos t u + b sin t v``, first point not repeated."""
    t = np.linspace(0.0, 2.0 * np.pi, count, endpoint=False)
    return np.asarray(centre, float) + np.outer(a * np.cos(t), u) + np.outer(b * np.sin(t), v)


def orthogonal_ellipses(rotation=np.eye(3), centre=(20.0, -30.0, 40.0)) -> list[np.ndarray]:
    """Outlines of the ellipsoid with semi-axes (100, 80, 70) mm (along ``rotation``'s columns)
    on its three central planes, normals rotation[:, 2], rotation[:, 1], rotation[:, 0]."""
    e = np.asarray(rotation, float)
    return [
        ellipse(centre, e[:, 0], e[:, 1], 100.0, 80.0),
        ellipse(centre, e[:, 0], e[:, 2], 100.0, 70.0),
        ellipse(centre, e[:, 1], e[:, 2], 80.0, 70.0),
    ]


def closed_curve_gaps(curve: np.ndarray) -> np.ndarray:
    """Distances between consecutive points, the last back to the first included."""
    return np.linalg.norm(np.roll(curve, -1, axis=0) - curve, axis=1)


# ------------------------------------------------------------------ resampling and planes


def test_resample_circle_stays_on_circle_every_millimetre(helpers):
    rot = helpers.rotation(40.0)
    centre, radius = np.array([5.0, -7.0, 12.0]), 30.0
    control = ellipse(centre, rot[:, 0], rot[:, 1], radius, radius, count=24)

    dense = resample_closed_curve(control)

    assert np.abs(np.linalg.norm(dense - centre, axis=1) - radius).max() < 0.05
    assert np.abs((dense - centre) @ rot[:, 2]).max() < 1e-9  # in the circle's plane
    gaps = closed_curve_gaps(dense)  # closed: the last point is ~1 mm before the first
    assert 0.9 < gaps.min() and gaps.max() < 1.05
    assert len(dense) == pytest.approx(2 * np.pi * radius, abs=2)
    # The whole circle is covered: every direction within a millimetre of a point.
    angles = np.sort(np.arctan2((dense - centre) @ rot[:, 1], (dense - centre) @ rot[:, 0]))
    assert np.diff(np.concatenate([angles, angles[:1] + 2 * np.pi])).max() < 1.1 / radius


def test_resample_repeated_end_point_and_dense_polyline(helpers):
    centre, radius = np.zeros(3), 20.0
    control = ellipse(centre, [1.0, 0, 0], [0, 1.0, 0], radius, radius, count=16)
    repeated = np.vstack([control, control[:1]])  # first point again at the end (closed polyline)
    np.testing.assert_allclose(resample_closed_curve(repeated), resample_closed_curve(control), atol=1e-9)
    duplicated = np.insert(control, 5, control[5], axis=0)  # a point given twice
    np.testing.assert_allclose(resample_closed_curve(duplicated), resample_closed_curve(control), atol=1e-9)

    polyline = ellipse(centre, [1.0, 0, 0], [0, 1.0, 0], radius, radius, count=600)  # denser than 1 mm
    dense = resample_closed_curve(polyline, spacing_mm=2.0)
    assert np.abs(np.linalg.norm(dense, axis=1) - radius).max() < 1e-3
    assert closed_curve_gaps(dense).max() < 2.05
    assert len(resample_closed_curve(control[:3] * 0.01)) == 16  # tiny curves still get 16 points


def test_three_orthogonal_ellipses_give_three_planes():
    curves = orthogonal_ellipses()
    planes = group_planes(curves)

    assert len(planes) == 3 and all(isinstance(p, Plane) for p in planes)
    for plane, axis, index in zip(planes, (2, 1, 0), range(3)):
        assert abs(plane.normal @ np.eye(3)[axis]) > 1 - 1e-9
        assert np.linalg.norm(plane.normal) == pytest.approx(1.0)
        assert plane.curve_ids == [index] and len(plane.curves) == 1
        np.testing.assert_allclose(plane.origin, [20.0, -30.0, 40.0], atol=1e-6)
        dense = plane.curves[0]
        assert np.abs((dense - plane.origin) @ plane.normal).max() < 1e-6
        assert closed_curve_gaps(dense).max() < 1.05  # resampled about every millimetre
        assert plane.points.shape == dense.shape


def test_two_lobes_on_one_plane_are_one_plane():
    lobes = [ellipse([-60.0, 0, 10.0], [1.0, 0, 0], [0, 1.0, 0], 40.0, 30.0),
             ellipse([50.0, 5.0, 10.0], [1.0, 0, 0], [0, 1.0, 0], 30.0, 25.0)]
    coronal = ellipse([-10.0, 0, 10.0], [1.0, 0, 0], [0, 0, 1.0], 100.0, 60.0)
    planes = group_planes([lobes[0], coronal, lobes[1]])

    assert len(planes) == 2
    axial = next(p for p in planes if abs(p.normal[2]) > 0.99)
    assert axial.curve_ids == [0, 2] and len(axial.curves) == 2
    assert len(axial.points) == len(axial.curves[0]) + len(axial.curves[1])
    # A parallel plane 20 mm away is a plane of its own.
    planes = group_planes([lobes[0], coronal, lobes[1] + [0, 0, 20.0]])
    assert sorted(len(p.curves) for p in planes) == [1, 1, 1]


def test_oblique_planes_are_accepted(helpers):
    rot = helpers.rotation(35.0, (1.0, -2.0, 0.5))
    planes = group_planes(orthogonal_ellipses(rot))
    assert len(planes) == 3
    for plane, column in zip(planes, (2, 1, 0)):
        assert abs(plane.normal @ rot[:, column]) > 1 - 1e-9
    # Two planes 30 degrees apart are enough.
    tilted = helpers.rotation(30.0, (1.0, 0, 0))
    two = [ellipse([0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], 90, 70),
           ellipse([0, 0, 0], [1.0, 0, 0], tilted @ [0, 1.0, 0], 90, 70)]
    assert len(group_planes(two)) == 2


def test_parallel_planes_only_are_refused(helpers):
    stack = [ellipse([0, 0, z], [1.0, 0, 0], [0, 1.0, 0], 90, 70) for z in (-20.0, 0.0, 25.0)]
    with pytest.raises(InputError, match="at least two non-parallel planes") as caught:
        group_planes(stack, "stack.mrk.json")
    assert str(caught.value).startswith("stack.mrk.json: ")
    with pytest.raises(InputError, match="non-parallel"):
        group_planes(stack[:1], "one")
    # Planes 5 degrees apart count as parallel.
    tilted = helpers.rotation(5.0, (1.0, 0, 0))
    with pytest.raises(InputError, match="non-parallel"):
        group_planes([stack[0], ellipse([0, 0, 40.0], [1.0, 0, 0], tilted @ [0, 1.0, 0], 90, 70)])


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda c: [c[0], c[1][:2], c[2]], "curve 2 has fewer than 3 points"),
        (lambda c: [c[0], c[1], np.empty((0, 3))], "curve 3 has fewer than 3 points"),
        (lambda c: [c[0], c[1], c[2][:, :2]], "curve 3 has fewer than 3 points"),
        (lambda c: [c[0], np.where(np.arange(24)[:, None] == 3, np.nan, c[1]), c[2]], "curve 2 has NaN"),
        (lambda c: [c[0] * np.array([1, 1, np.inf]), c[1], c[2]], "curve 1 has NaN or infinite"),
        (lambda c: [c[0], c[1], np.repeat(c[2][:1], 5, axis=0)], "curve 3 has all its points at one place"),
    ],
    ids=["two-points", "no-points", "2d-points", "nan", "inf", "one-place"],
)
def test_bad_curves_are_refused(make, problem):
    with pytest.raises(InputError, match=problem) as caught:
        group_planes(make(orthogonal_ellipses()), "drawn.mrk.json")
    assert caught.value.path == "drawn.mrk.json"


def test_non_planar_curve_is_refused():
    curves = orthogonal_ellipses()
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    curves[1] = curves[1] + np.outer(8.0 * np.cos(2 * t), [0, 1.0, 0])  # a saddle: +-8 mm off its plane
    with pytest.raises(InputError, match="curve 2 is not planar"):
        group_planes(curves, "saddle")
    curves[1] = orthogonal_ellipses()[1] + np.outer(0.5 * np.cos(2 * t), [0, 1.0, 0])  # hand jitter: accepted
    assert len(group_planes(curves)) == 3


# ------------------------------------------------------------------ painted labelmaps


RADII = np.array([30.0, 22.0, 16.0])
CENTRE = np.array([10.0, -20.0, 30.0])


@pytest.fixture(scope="module")
def ellipsoid_grid(helpers):
    """A solid ellipsoid on an anisotropic grid with a turned direction matrix, and its axes."""
    axes = helpers.rotation(20.0, (0.0, 1.0, 1.0))
    image = helpers.ellipsoid_image(RADII, spacing=(0.9, 1.3, 2.0), direction=helpers.rotation(25.0), centre=CENTRE,
                                    axes=axes)
    return image, axes


def _painted(image: sitk.Image, slices: dict[int, int]) -> sitk.Image:
    """The image with only the given slices ({voxel axis i=0/j=1/k=2: index}) kept."""
    full = sitk.GetArrayFromImage(image)  # (k, j, i)
    painted = np.zeros_like(full)
    for axis, index in slices.items():
        take = [slice(None)] * 3
        take[2 - axis] = index
        painted[tuple(take)] = full[tuple(take)]
    out = sitk.GetImageFromArray(painted)
    out.CopyInformation(image)
    return out


def _continuous_index(image: sitk.Image, lps: np.ndarray) -> np.ndarray:
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return ((lps - np.array(image.GetOrigin())) @ direction) / np.array(image.GetSpacing())


def test_painted_slices_give_one_curve_per_slice_on_the_ellipsoid(ellipsoid_grid):
    image, axes = ellipsoid_grid
    centre_index = [s // 2 for s in image.GetSize()]
    painted = _painted(image, {0: centre_index[0], 1: centre_index[1], 2: centre_index[2] + 2})

    curves = painted_slice_contours(painted, "painted.nii.gz")

    assert len(curves) == 3
    spacing = np.array(image.GetSpacing())
    found = set()
    for curve in curves:
        ijk = _continuous_index(painted, curve)
        axis = int(np.argmin(np.ptp(ijk, axis=0)))
        found.add(axis)
        expected = centre_index[axis] + (2 if axis == 2 else 0)
        np.testing.assert_allclose(ijk[:, axis], expected, atol=1e-6)  # in its slice plane
        # Radial distance to the analytic ellipsoid (an upper bound of the true distance).
        local = (curve - CENTRE) @ axes
        rho = np.linalg.norm(local / RADII, axis=1)
        distance = np.linalg.norm(curve - CENTRE, axis=1) * np.abs(1 - 1 / rho)
        in_plane = spacing[[a for a in range(3) if a != axis]]
        assert distance.max() < 1.0 * in_plane.max(), (axis, distance.max())
        assert distance.mean() < 0.5 * in_plane.max()
        assert len(curve) > 30
    assert found == {0, 1, 2}

    planes = group_planes(curves, "painted.nii.gz")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    normals = sorted(int(np.argmax(np.abs(direction.T @ p.normal))) for p in planes)
    assert len(planes) == 3 and normals == [0, 1, 2]
    for plane in planes:
        assert np.abs(direction.T @ plane.normal).max() > 1 - 1e-6  # normals along the voxel axes


def test_two_regions_in_one_slice_give_two_curves(ellipsoid_grid):
    image, _ = ellipsoid_grid
    k = image.GetSize()[2] // 2
    painted = sitk.GetArrayFromImage(_painted(image, {2: k}))
    j_mid = painted.shape[1] // 2
    painted[k, j_mid - 1:j_mid + 2, :] = 0  # cut the region in two lobes
    split = sitk.GetImageFromArray(painted)
    split.CopyInformation(image)
    curves = painted_slice_contours(split)
    assert len(curves) == 2
    assert all(np.ptp(_continuous_index(split, c)[:, 2]) < 1e-6 for c in curves)


def test_empty_and_single_slice_paintings(ellipsoid_grid):
    image, _ = ellipsoid_grid
    empty = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(image)
    with pytest.raises(InputError, match="no painted slices found") as caught:
        painted_slice_contours(empty, "empty.nii.gz")
    assert caught.value.path == "empty.nii.gz"

    # A one-voxel-thick line is not a painted slice either.
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    array[10, 10, 5:30] = 1
    line = sitk.GetImageFromArray(array)
    line.CopyInformation(image)
    with pytest.raises(InputError, match="no painted slices"):
        painted_slice_contours(line, "line.nii.gz")

    # One slice gives its curve, but the fit refuses it: one plane is not enough.
    single = _painted(image, {1: image.GetSize()[1] // 2})
    curves = painted_slice_contours(single, "single.nii.gz")
    assert len(curves) == 1
    with pytest.raises(InputError, match="non-parallel planes") as caught:
        group_planes(curves, "single.nii.gz")
    assert caught.value.path == "single.nii.gz"
    # Two parallel slices (j and j + 6): two curves, still one orientation.
    j = image.GetSize()[1] // 2
    array = sitk.GetArrayFromImage(single)
    array[:, j + 6] = array[:, j]
    parallel = sitk.GetImageFromArray(array)
    parallel.CopyInformation(image)
    curves = painted_slice_contours(parallel)
    assert len(curves) == 2
    with pytest.raises(InputError, match="non-parallel planes"):
        group_planes(curves, "parallel.nii.gz")


# ------------------------------------------------------------------ markups


def _markups_file(path: Path, markups: list[dict]) -> Path:
    path.write_text(json.dumps({"@schema": "x", "markups": markups}))
    return path


def _markup(kind: str, points, system: str | None = "LPS") -> dict:
    markup = {"type": kind, "controlPoints": [{"id": str(i), "position": list(map(float, p))} for i, p in enumerate(points)]}
    if system is not None:
        markup["coordinateSystem"] = system
    return markup


def test_ras_curves_are_read_as_lps(tmp_path):
    curves = orthogonal_ellipses()
    path = _markups_file(tmp_path / "ras.mrk.json", [
        _markup("ClosedCurve", curves[0] * [-1, -1, 1], "RAS"),
        _markup("ClosedCurve", curves[1], "LPS"),
        _markup("ClosedCurve", curves[2], None),  # no coordinateSystem: LPS (Slicer's default)
        _markup("Fiducial", curves[0][:3]),  # other markup types are skipped
    ])
    read = read_closed_curves(path)
    assert len(read) == 3
    for got, want in zip(read, curves):
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_closed_curves_round_trip(tmp_path):
    curves = orthogonal_ellipses()
    curves[1] = curves[1][:7] + np.pi  # different lengths, non-round numbers
    path = tmp_path / "sub" / "curves.mrk.json"
    write_closed_curves(curves, path, names=["axial", "coronal", "sagittal"])
    data = json.loads(path.read_text())
    assert [m["name"] for m in data["markups"]] == ["axial", "coronal", "sagittal"]
    assert {m["coordinateSystem"] for m in data["markups"]} == {"LPS"}
    assert {m["type"] for m in data["markups"]} == {"ClosedCurve"}
    for got, want in zip(read_closed_curves(path), curves):
        np.testing.assert_array_equal(got, want)
    assert [p.name for p in path.parent.iterdir()] == ["curves.mrk.json"]  # no temporary left


@pytest.mark.parametrize(
    "content, problem",
    [
        ([_markup("Curve", np.eye(3) * 10)], "markup 1 is an open curve"),
        ([_markup("ClosedCurve", np.eye(3) * 10), _markup("ClosedCurve", np.eye(3)[:2] * 10)],
         "closed curve 2 has 2 points"),
        ([_markup("ClosedCurve", [[0, 0, 0], [1, np.nan, 0], [0, 1, 0]])], "markup 1 has NaN"),
        ([_markup("ClosedCurve", np.eye(3), "IJK")], "unknown coordinateSystem"),
        ([_markup("Fiducial", np.eye(3))], "holds no ClosedCurve markups"),
        ([], "holds no markups"),
        ("not json", "not a Slicer markups file"),
        ([{"type": "ClosedCurve", "controlPoints": [{"position": [1, 2]}, {"position": [1, 2, 3]}]}],
         "malformed control points"),
    ],
    ids=["open-curve", "two-points", "nan", "unknown-system", "no-closed-curve", "empty", "not-json", "malformed"],
)
def test_bad_markups_are_refused(tmp_path, content, problem):
    path = tmp_path / "bad.mrk.json"
    if isinstance(content, str):
        path.write_text(content)
    else:
        _markups_file(path, content)
    with pytest.raises(InputError, match=problem) as caught:
        read_closed_curves(path)
    assert caught.value.path == str(path)


def test_point_lists(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)) * 50, rng.normal(size=(7, 3)) * 50
    path = _markups_file(tmp_path / "points.mrk.json", [
        _markup("Fiducial", a, "RAS"), _markup("ClosedCurve", np.eye(3)), _markup("Fiducial", b, "LPS"),
    ])
    expected = np.concatenate([a * [-1, -1, 1], b])
    np.testing.assert_allclose(read_point_list(path), expected, atol=1e-12)
    np.testing.assert_allclose(read_point_cloud(path), expected, atol=1e-12)
    with pytest.raises(InputError, match="no point-list"):
        read_point_list(_markups_file(tmp_path / "curves.mrk.json", [_markup("ClosedCurve", np.eye(3))]))
    with pytest.raises(InputError, match="no point-list"):
        read_point_list(_markups_file(tmp_path / "empty.mrk.json", [_markup("Fiducial", np.empty((0, 3)))]))
    with pytest.raises(InputError, match="no such file"):
        read_point_list(tmp_path / "absent.mrk.json")


def test_point_cloud_files(tmp_path):
    points = np.random.default_rng(1).normal(size=(20, 3)) * 40
    np.savetxt(tmp_path / "p.xyz", np.hstack([points, np.ones((20, 3))]))  # extra columns (normals) ignored
    np.testing.assert_allclose(read_point_cloud(tmp_path / "p.xyz"), points, atol=1e-9)
    trimesh.PointCloud(points).export(tmp_path / "p.ply")
    np.testing.assert_allclose(read_point_cloud(tmp_path / "p.ply"), points, atol=1e-4)
    (tmp_path / "bad.xyz").write_text("1 2 3\nfour five six\n")
    with pytest.raises(InputError, match="not a readable .xyz"):
        read_point_cloud(tmp_path / "bad.xyz")
    (tmp_path / "p.csv").write_text("1,2,3\n")
    with pytest.raises(InputError, match="unsupported point cloud format"):
        read_point_cloud(tmp_path / "p.csv")
    with pytest.raises(InputError, match="no such file"):
        read_point_cloud(tmp_path / "absent.xyz")


# ------------------------------------------------------------------ DALS fitting


@pytest.fixture(scope="module")
def tiny(tiny_model):
    """(decoder, mean latent) of the tiny random model."""
    return decoder_from_bundle(load_bundle(tiny_model, kind="dals"))


@pytest.fixture(scope="module")
def target(tiny, helpers):
    """The tiny model's own mean shape (icosphere level 3) mapped to mm by a known similarity."""
    decoder, mean = tiny
    template, faces = icosphere(3)
    with torch.no_grad():
        unit = decoder(template, mean[None])[0].double().numpy()
    truth = Similarity(100.0, helpers.rotation(8.0, (1.0, -1.0, 2.0)), [12.0, -25.0, 40.0])
    return trimesh.Trimesh(truth.apply(unit), faces.numpy(), process=False), truth


def test_progress_is_monotonic_and_ends_at_one(tiny):
    decoder, mean = tiny
    planes = group_planes(orthogonal_ellipses())
    calls: list[tuple[float, str]] = []
    settings = FitSettings(level=2, global_steps=4, vertex_steps=3, vertex_modes=8)
    result = fit_dals(decoder, mean, lambda u: ContourTask(planes, 100, u), settings, progress=lambda f, s: calls.append((f, s)))

    fractions = [f for f, _ in calls]
    assert len(calls) == 7 == result.iterations == len(result.history)
    assert all(0 < f <= 1 for f in fractions) and fractions[-1] == 1.0
    assert all(b > a for a, b in zip(fractions, fractions[1:]))
    assert [s for _, s in calls] == ["global latent"] * 4 + ["per-vertex latents"] * 3
    assert all(np.isfinite(h["loss"]) for h in result.history)
    # The decoder's weights are left as they were (frozen, not trained by the fit).
    assert all(not p.requires_grad for p in decoder.parameters())


def test_should_stop_cancels(tiny):
    decoder, mean = tiny
    planes = group_planes(orthogonal_ellipses())
    asked, progress = [], []

    def stop() -> bool:
        asked.append(1)
        return len(asked) >= 3

    with pytest.raises(FitCancelled):
        fit_dals(decoder, mean, lambda u: ContourTask(planes, 100, u), FitSettings(level=2, global_steps=5, vertex_steps=5),
                 progress=lambda f, s: progress.append(f), should_stop=stop)
    assert len(asked) == 3 and len(progress) == 2  # stopped before the third step
    progress.clear()
    with pytest.raises(FitCancelled):  # also in the per-vertex stage
        fit_dals(decoder, mean, lambda u: ContourTask(planes, 100, u), FitSettings(level=2, global_steps=2, vertex_steps=5),
                 progress=lambda f, s: progress.append(s), should_stop=lambda: len(progress) >= 4)
    assert progress == ["global latent"] * 2 + ["per-vertex latents"] * 2


def test_initial_pose_matches_bounding_boxes():
    template, _ = icosphere(2)
    mean_verts = template.double().numpy() * [1.0, 0.8, 0.6]
    truth = Similarity(90.0, np.eye(3), [3.0, -4.0, 5.0])
    pose = initial_pose(mean_verts, truth.apply(mean_verts))
    assert pose.scale == pytest.approx(90.0)
    np.testing.assert_allclose(pose.translation, truth.translation, atol=1e-9)
    np.testing.assert_allclose(pose.rotation, np.eye(3))
    # Points on one plane only span two axes: the flat one does not set the scale.
    flat = truth.apply(mean_verts)
    flat[:, 2] = 5.0
    assert initial_pose(mean_verts, flat).scale == pytest.approx(90.0)


def test_laplacian_modes_are_smooth_orthonormal_and_not_constant():
    modes = laplacian_modes(2, 8).double()
    assert modes.shape == (162, 8)
    np.testing.assert_allclose((modes.T @ modes).numpy(), np.eye(8), atol=1e-6)
    np.testing.assert_allclose((modes.T @ torch.ones(162, dtype=torch.float64)).numpy(), 0, atol=1e-6)
    assert laplacian_modes(0, 48).shape == (12, 10)  # capped at V - 2


def test_contour_fit_recovers_the_pose(tiny_model, target):
    mesh, truth = target
    curves = cut_curves(mesh, 3)
    assert len(curves) == 3

    fit = fit_curves(curves, tiny_model, FAST, "cut.mrk.json")

    size = float(mesh.bounding_sphere.primitive.radius)
    metrics = surface_metrics(fit.mesh, mesh, num_points=5000)
    assert metrics["assd_mm"] < 0.03 * size, metrics
    assert fit.detail.pose.scale == pytest.approx(truth.scale, rel=0.10)
    assert np.linalg.norm(fit.detail.pose.translation - truth.translation) < 0.05 * size
    assert fit.mesh.is_watertight and fit.mesh.volume > 0
    residuals = fit.report["residuals"]
    assert [r["curve"] for r in residuals] == [1, 2, 3] and [r["plane"] for r in residuals] == [1, 2, 3]
    assert max(r["mean_mm"] for r in residuals) < 0.015 * size
    assert max(r["max_mm"] for r in residuals) < 0.05 * size
    assert fit.report["warnings"] == []  # every curve followed
    assert fit.report["planes"] == 3 and fit.report["frame"] == "LPS mm" and fit.report["organ"] == "liver"
    assert fit.report["model"] == str(tiny_model) and fit.report["iterations"] == 30
    json.dumps(fit.report)  # the report is plain JSON


def test_residual_warnings_name_the_curves_the_surface_misses():
    rows = [{"curve": 1, "mean_mm": 1.0}, {"curve": 2, "mean_mm": 9.0}, {"curve": 3, "mean_mm": float("inf")}]
    warnings = residual_warnings(rows, mm_per_unit=120.0)  # tolerance 4.8 mm
    assert len(warnings) == 2 and warnings[0].startswith("curve 2 is 9.0 mm") and "4.8 mm" in warnings[0]
    assert warnings[1].startswith("curve 3 is inf mm")
    assert residual_warnings(rows[:1], mm_per_unit=10.0) == []  # at least 2 mm tolerance for small organs


def test_fit_is_reproducible_and_matches_fit_dals(tiny, tiny_model, target):
    mesh, _ = target
    curves = cut_curves(mesh, 3)
    planes = group_planes(curves)
    settings = FitSettings(level=2, global_steps=5, vertex_steps=3, vertex_modes=8)
    decoder, mean = tiny
    direct = fit_dals(decoder, mean, lambda u: ContourTask(planes, settings.samples, u), settings)
    again = fit_curves(curves, tiny_model, settings).detail
    blended = blend_with_contours(direct.mesh, planes, settings.contour_blend_mm)
    np.testing.assert_allclose(again.mesh.vertices, blended.vertices, atol=1e-4)
    np.testing.assert_allclose(again.pose.matrix(), direct.pose.matrix(), atol=1e-6)
    rows = contour_residuals(direct.mesh, planes)
    assert len(rows) == 3 and all(np.isfinite(r["mean_mm"]) and r["mean_mm"] <= r["max_mm"] for r in rows)
    # Without the blend, fit_curves is fit_dals.
    unblended = fit_curves(curves, tiny_model, replace(settings, contour_blend_mm=0.0)).detail
    np.testing.assert_allclose(unblended.mesh.vertices, direct.mesh.vertices, atol=1e-4)



def test_per_vertex_stage_on_a_coarser_icosphere_fits_the_fine_surface(tiny, target):
    # The stage's loss is measured on the level-1 icosphere; its latents (and the surface) live on level 2.
    decoder, mean = tiny
    mesh, _ = target
    planes = group_planes(cut_curves(mesh, 3))
    settings = FitSettings(level=2, vertex_level=1, global_steps=20, vertex_steps=10, vertex_modes=8)
    result = fit_dals(decoder, mean, lambda u: ContourTask(planes, 200, u), settings)
    assert len(result.mesh.vertices) == 162 and result.state.coefficients.shape == (8, mean.shape[0])
    size = float(mesh.bounding_sphere.primitive.radius)
    assert surface_metrics(result.mesh, mesh, num_points=5000)["assd_mm"] < 0.03 * size
    # The surface is the fine icosphere decoded with the fitted state's latents.
    template, _ = icosphere(2)
    latents = torch.tensor(result.state.latent, dtype=torch.float32) + laplacian_modes(2, 8) @ torch.tensor(
        result.state.coefficients, dtype=torch.float32)
    with torch.no_grad():
        unit = decoder(template, latents[None])[0].double().numpy()
    np.testing.assert_allclose(result.pose.apply(unit), result.mesh.vertices, atol=1e-3)

def test_point_fit_recovers_the_pose(tiny_model, target):
    mesh, truth = target
    points = trimesh.sample.sample_surface(mesh, 400, seed=3)[0]

    fit = fit_points(points, tiny_model, FAST, "points.xyz")

    size = float(mesh.bounding_sphere.primitive.radius)
    assert surface_metrics(fit.mesh, mesh, num_points=5000)["assd_mm"] < 0.03 * size
    assert fit.detail.pose.scale == pytest.approx(truth.scale, rel=0.10)
    assert fit.curves == [] and "residuals" not in fit.report


def test_task_losses_are_least_on_the_truth(target):
    mesh, _ = target
    verts = torch.tensor(mesh.vertices, dtype=torch.float32)
    faces = torch.tensor(mesh.faces)
    g = torch.Generator().manual_seed(0)
    shifted = verts + torch.tensor([12.0, -9.0, 6.0])  # 16 mm off
    contours = ContourTask(group_planes(cut_curves(mesh, 3)), 2000, 100.0)
    points = PointTask(trimesh.sample.sample_surface(mesh, 3000, seed=0)[0], 3000, 100.0)
    for task in (contours, points):
        assert float(task.loss(verts, faces, g)) < 0.3 * float(task.loss(shifted, faces, g))
    # Distances are in units of ``unit_mm``: the same geometry at twice the unit gives a smaller loss.
    assert float(contours.loss(shifted, faces, g)) > float(ContourTask(contours.planes, 2000, 200.0).loss(shifted, faces, g))
    far = verts + 1000.0  # planes that miss the surface still give a finite, large loss and a gradient
    far.requires_grad_(True)
    loss = contours.loss(far, faces, g)
    loss.backward()
    assert 10 < loss.item() < float("inf") and torch.isfinite(far.grad).all() and far.grad.abs().sum() > 0


def test_sizes_outside_the_model_range_are_refused(tiny_model, target):
    mesh, _ = target
    bundle = load_bundle(tiny_model)
    check_size(bundle, 100.0, "ok")
    check_size(bundle, 41.0, "ok")  # the range (80-130 mm per unit) widened by a factor of 2
    with pytest.raises(InputError, match="typical liver size") as caught:
        check_size(bundle, 300.0, "big.mrk.json")
    assert caught.value.path == "big.mrk.json"
    with pytest.raises(InputError, match="not this organ, or not in mm"):
        check_size(bundle, 30.0, "small")
    huge = [50.0 * c for c in cut_curves(mesh, 3)]
    with pytest.raises(InputError, match=r"^huge: annotation is \d+\.\d\dx the typical liver size"):
        fit_curves(huge, tiny_model, FitSettings(level=2, global_steps=3, vertex_steps=2), "huge")
    with pytest.raises(InputError, match="at least 10 points"):
        fit_points(np.zeros((5, 3)), tiny_model, FAST, "few.xyz")
    with pytest.raises(InputError, match="NaN"):
        fit_points(np.full((20, 3), np.nan), tiny_model, FAST, "nan.xyz")


# ------------------------------------------------------------------ model bundles


def test_bundle_loads_by_path_and_decodes(tiny_model):
    bundle = load_bundle(tiny_model, kind="dals")
    assert bundle.kind == "dals" and bundle.organ == "liver" and bundle.path == Path(tiny_model)
    assert bundle.metadata["versions"]["shapeprior"] and bundle.metadata["versions"]["torch"]
    assert bundle.tensors["latents"].shape == (4, 16) and bundle.tensors["latent_mean"].shape == (16,)
    decoder, mean = decoder_from_bundle(bundle)
    assert decoder.config == DALSConfig(16, (32, 32)) and not decoder.training
    template, _ = icosphere(1)
    per_shape = decoder(template, mean[None])
    per_vertex = decoder(template, mean.expand(1, len(template), 16))
    torch.testing.assert_close(per_shape, per_vertex)  # the two latent layouts agree
    assert load_bundle(str(tiny_model)).kind == "dals"


def test_shipped_names_and_unknown_names(tiny_model, tmp_path, monkeypatch):
    models = tmp_path / "Models"
    (models / "liver").mkdir(parents=True)
    (models / "kidney").mkdir()  # a folder without model.pt is not a shipped model
    shutil.copy(tiny_model, models / "liver" / "model.pt")
    monkeypatch.setenv("SHAPEPRIOR_MODELS", str(models))

    assert resolve_model("liver") == models / "liver" / "model.pt"
    assert load_bundle("liver", kind="dals").path == models / "liver" / "model.pt"
    with pytest.raises(InputError, match=r"unknown model 'spleen' \(shipped models: liver;") as caught:
        load_bundle("spleen")
    assert caught.value.path is None
    with pytest.raises(InputError, match="no such model file") as caught:
        load_bundle(tmp_path / "absent.pt")
    assert caught.value.path == str(tmp_path / "absent.pt")
    with pytest.raises(InputError, match="no such model file"):
        load_bundle(str(Path("sub") / "model"))  # a path (it has a separator), not a name

    monkeypatch.setenv("SHAPEPRIOR_MODELS", str(tmp_path / "nothing-here"))
    with pytest.raises(InputError, match="none shipped"):
        load_bundle("liver")


class Payload:
    """A class that is not a tensor: unpickling it would import and run test code."""

    def __init__(self):
        self.weights = torch.zeros(2)


class Exploit:
    """Unpickling this would create ``marker`` (a stand-in for running any command)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_corrupt_and_unsafe_model_files_are_refused(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputError, match="not a readable shapeprior model") as caught:
        load_bundle(corrupt)
    assert caught.value.path == str(corrupt)

    custom = tmp_path / "custom.pt"
    torch.save({"format": "shapeprior-model/1", "kind": "dals", "metadata": {}, "tensors": {}, "x": Payload()}, custom)
    with pytest.raises(InputError, match="not a readable shapeprior model"):
        load_bundle(custom)

    marker = tmp_path / "code-ran"
    for name, save in [("torch-exploit.pt", lambda p: torch.save(Exploit(marker), p)),
                       ("pickle-exploit.pt", lambda p: p.write_bytes(pickle.dumps(Exploit(marker), protocol=2)))]:
        save(tmp_path / name)
        with pytest.raises(InputError, match="not a readable shapeprior model"):
            load_bundle(tmp_path / name)
    assert not marker.exists()  # refused by weights_only: the payload never ran
    pickle.loads(pickle.dumps(Exploit(marker)))  # (the exploit is real: unpickling it does run)
    assert marker.exists()

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(Path(tmp_path / "custom.pt").read_bytes()[:200])
    with pytest.raises(InputError, match="not a readable shapeprior model"):
        load_bundle(truncated)


def test_other_files_and_kinds_are_refused(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, other)
    with pytest.raises(InputError, match="not a shapeprior model bundle"):
        load_bundle(other)
    torch.save([torch.zeros(3)], other)
    with pytest.raises(InputError, match="not a shapeprior model bundle"):
        load_bundle(other)

    dissm = tmp_path / "dissm.pt"
    save_bundle(dissm, "dissm", {"organ": "liver"}, {"w": torch.zeros(3)})
    assert load_bundle(dissm).kind == "dissm"  # fine when any kind will do
    with pytest.raises(InputError, match="a 'dissm' model; this command needs a 'dals' model") as caught:
        load_bundle(dissm, kind="dals")
    assert caught.value.path == str(dissm)
    with pytest.raises(InputError, match="'dissm' model"):
        fit_curves(orthogonal_ellipses(), dissm, FAST, "c.mrk.json")


def test_bundle_tensors_round_trip(tmp_path):
    torch.manual_seed(1)
    decoder = DALSDecoder(DALSConfig(4, (8,)))
    latents = torch.randn(3, 4)
    path = tmp_path / "m.pt"
    save_bundle(path, "dals", {"organ": "x", "config": decoder.config.to_dict()}, bundle_tensors(decoder, latents))
    loaded, mean = decoder_from_bundle(load_bundle(path, kind="dals"))
    torch.testing.assert_close(mean, latents.mean(0))
    template, _ = icosphere(1)
    torch.testing.assert_close(loaded(template, latents), decoder(template, latents))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


# ------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, helpers):
    """A prepared dataset of three small ellipsoids (no SDF samples)."""
    from shapeprior.prep.dataset import PrepareSettings, prepare_dataset

    root = tmp_path_factory.mktemp("train")
    src = root / "src"
    src.mkdir()
    for i, (radii, centre) in enumerate([((40, 30, 25), (0, 0, 0)), ((45, 32, 24), (10, 5, -3)), ((38, 28, 27), (-5, 2, 8))]):
        mesh = helpers.ellipsoid_mesh(radii, centre=centre, axes=helpers.rotation(10.0 * i), subdivisions=3)
        write_mesh(mesh, src / f"case_{i}.ply")
    prepare_dataset(src, root / "dataset", PrepareSettings(sdf_samples=0, target_vertices=500, align_points=100),
                    progress=False)
    return root / "dataset"


def _train_settings(**changes):
    from shapeprior.train.dals import DALSTrainSettings

    base = dict(organ="liver", latent_dim=8, hidden=[16, 16], level=1, steps=6, batch=2, points=128, augment=1)
    return DALSTrainSettings(**{**base, **changes})


def test_train_dals_smoke_resume_and_refusal(dataset, tmp_path, monkeypatch, helpers):
    import shapeprior.train.dals as train

    steps_run = []
    original = train.random_rotation
    monkeypatch.setattr(train, "random_rotation", lambda g: steps_run.append(1) or original(g))  # once per step
    out = tmp_path / "models" / "tiny.pt"
    ckpt = out.with_name("tiny.pt.ckpt")

    assert train.train_dals(dataset, out, _train_settings(), progress=False, device="cpu") == out
    assert len(steps_run) == 6
    bundle = load_bundle(out, kind="dals")
    manifest = json.loads((dataset / "manifest.json").read_text())
    scales = [s["from_unit"]["scale"] for s in manifest["shapes"].values()]
    assert bundle.organ == "liver" and bundle.metadata["config"] == {"latent_dim": 8, "hidden": [16, 16]}
    assert bundle.metadata["normalisation"]["mm_per_unit_range"] == pytest.approx([min(scales), max(scales)])
    assert bundle.metadata["training"]["shapes"] == ["case_0", "case_1", "case_2"]
    assert bundle.metadata["training"]["instances"] == 6  # three shapes and one deformed copy of each
    assert bundle.tensors["latents"].shape == (3, 8)  # the real shapes' latents only
    decoder, mean = decoder_from_bundle(bundle)
    template, faces = icosphere(2)
    verts = decoder(template, mean[None])
    assert verts.shape == (1, 162, 3) and torch.isfinite(verts).all()
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 6
    assert helpers.temp_files(tmp_path) == []

    # Same settings again: the checkpoint is complete, nothing is trained.
    steps_run.clear()
    train.train_dals(dataset, out, _train_settings(), progress=False, device="cpu")
    assert steps_run == []
    again = load_bundle(out)
    for name, tensor in bundle.tensors.items():
        torch.testing.assert_close(again.tensors[name], tensor, rtol=0, atol=0)

    # An interrupted run (checkpoint at step 3) resumes at step 3.
    state["step"] = 3
    torch.save(state, ckpt)
    train.train_dals(dataset, out, _train_settings(), progress=False, device="cpu")
    assert len(steps_run) == 3
    assert torch.load(ckpt, weights_only=True)["step"] == 6

    # Other settings: the checkpoint is refused, the bundle and checkpoint stay as they are.
    before = helpers.snapshot(out.parent)
    steps_run.clear()
    with pytest.raises(InputError, match="other settings") as caught:
        train.train_dals(dataset, out, _train_settings(lr=1e-3), progress=False, device="cpu")
    assert caught.value.path == str(ckpt)
    assert steps_run == [] and helpers.snapshot(out.parent) == before


def test_train_dals_bad_dataset(tmp_path, dataset):
    from shapeprior.train.dals import train_dals

    with pytest.raises(InputError, match="not a prepared dataset"):
        train_dals(tmp_path, tmp_path / "m.pt", _train_settings(), progress=False, device="cpu")
    with pytest.raises(InputError, match="no prepared shapes match other-"):
        train_dals(dataset, tmp_path / "m.pt", _train_settings(include=["other-*"]), progress=False, device="cpu")
    assert not (tmp_path / "m.pt").exists()


# ------------------------------------------------------------------ benchmark and baselines


ELLIPSOID_RADII = (40.0, 30.0, 25.0)


@pytest.fixture(scope="module")
def ellipsoid(helpers):
    return helpers.ellipsoid_mesh(ELLIPSOID_RADII, centre=(5.0, -10.0, 20.0))


def _algebraic(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm((points - [5.0, -10.0, 20.0]) / ELLIPSOID_RADII, axis=1)


@pytest.mark.parametrize("count", [3, 5, 9])
def test_cut_curves_one_per_plane(ellipsoid, count):
    curves = cut_curves(ellipsoid, count)
    assert len(curves) == count
    planes = group_planes(curves)
    assert len(planes) == count
    axes = [int(np.argmax(np.abs(p.normal))) for p in planes]
    assert sorted(axes) == sorted([2, 1, 0, 2, 1, 0, 2, 1, 0][:count])
    for curve in curves:
        assert len(curve) >= 4 and np.ptp(curve, axis=0).min() < 1e-9  # on an axis plane
        assert np.abs(_algebraic(curve) - 1).max() < 0.01  # on the (faceted) ellipsoid
    np.testing.assert_allclose(cut_curves(ellipsoid, 1)[0][:, 2], 20.0)  # the first plane: axial, through the centre


def test_convex_hull_contains_every_curve_point(ellipsoid):
    planes = group_planes(cut_curves(ellipsoid, 3))
    hull = convex_hull(planes)
    assert hull.is_watertight and hull.volume > 0
    points = np.concatenate([p.points for p in planes])
    # Inside (or on) every face's plane.
    signed = np.einsum("pfk,fk->pf", points[:, None, :] - hull.triangles[None, :, 0], hull.face_normals)
    assert signed.max() < 1e-6
    assert hull.volume < ellipsoid.volume  # the hull of three cross-sections lies within the convex ellipsoid


def test_rbf_surface_is_close_to_the_ellipsoid(ellipsoid):
    planes = group_planes(cut_curves(ellipsoid, 3))
    surface = rbf_surface(planes)
    assert surface.is_watertight and surface.volume > 0
    metrics = surface_metrics(surface, ellipsoid, num_points=5000)
    assert metrics["assd_mm"] < 0.15 * min(ELLIPSOID_RADII), metrics
    assert surface.volume == pytest.approx(ellipsoid.volume, rel=0.15)


def test_in_plane_normals_point_out_of_the_curve_either_way_round():
    curve = ellipse((0, 0, 5), [1, 0, 0], [0, 1, 0], 30.0, 20.0)
    for c in (curve, curve[::-1]):
        normals = in_plane_normals(c, np.array([0.0, 0.0, 1.0]))
        assert np.allclose(normals[:, 2], 0) and np.allclose(np.linalg.norm(normals, axis=1), 1)
        assert ((normals * (c - [0, 0, 5])).sum(1) > 0).all()


def test_contour_interpolant_is_zero_on_the_curves_and_signed(ellipsoid):
    planes = group_planes(cut_curves(ellipsoid, 3))
    f = contour_interpolant(planes)
    points = np.concatenate([p.points for p in planes])
    assert np.abs(f(points)).max() < 0.3  # mm, the interpolant's smoothing
    assert f(np.array([[5.0, -10.0, 20.0]]))[0] < 0 < f(np.array([[5.0 + 60, -10.0, 20.0]]))[0]


def test_blend_puts_the_surface_on_the_curves_near_the_planes_only(ellipsoid):
    planes = group_planes(cut_curves(ellipsoid, 3))
    # A surface 10% too large: its cuts miss the drawn curves by 2.5-4 mm.
    wrong = trimesh.Trimesh((ellipsoid.vertices - [5.0, -10.0, 20.0]) * 1.1 + [5.0, -10.0, 20.0], ellipsoid.faces)
    blended = blend_with_contours(wrong, planes, sigma_mm=5.0)

    before = [r["mean_mm"] for r in contour_residuals(wrong, planes)]
    after = [r["mean_mm"] for r in contour_residuals(blended, planes)]
    assert min(before) > 2.0 and max(after) < 0.3, (before, after)
    assert np.array_equal(blended.faces, wrong.faces)
    distance = np.min(np.abs(np.stack([(wrong.vertices - p.origin) @ p.normal for p in planes], 1)), 1)
    far, near = distance > 15.0, distance < 2.0
    assert far.any() and np.allclose(blended.vertices[far], wrong.vertices[far], atol=1e-3)
    assert np.abs(_algebraic(blended.vertices[near]) - 1).max() < 0.02  # was 0.1 everywhere


@pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute")  # ITK's SWIG wrappers
def test_fill_between_slices(ellipsoid):
    itk = pytest.importorskip("itk", reason="fill between slices needs ITK (pip install 'shapeprior[bench]')")
    planes = group_planes(cut_curves(ellipsoid, 9))  # three slices per axis: something to fill between
    threads = itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads()
    surface = fill_between_slices(planes)
    # It runs ITK's filter on one thread (multithreaded, it corrupts the heap) and restores the default.
    assert itk.MultiThreaderBase.GetGlobalDefaultNumberOfThreads() == threads
    assert surface.is_watertight and surface.volume > 0
    points = np.concatenate([p.points for p in planes])
    distance = np.sqrt(igl.point_mesh_squared_distance(points, surface.vertices, surface.faces)[0])
    assert distance.max() < 2 * 2.0  # within two grid cells of the drawn curves
    assert 0.7 * ellipsoid.volume < surface.volume < 1.1 * ellipsoid.volume
    assert np.abs(_algebraic(surface.vertices) - 1).max() < 0.3


@pytest.mark.filterwarnings("ignore:builtin type .* has no __module__ attribute")  # ITK's SWIG wrappers
def test_run_benchmark_and_summary(tmp_path, tiny_model, helpers):
    pytest.importorskip("itk", reason="the benchmark's fill-between-slices baseline needs ITK")
    data = tmp_path / "held-out"
    data.mkdir()
    write_mesh(helpers.ellipsoid_mesh((40.0, 30.0, 25.0), subdivisions=3), data / "case_a.ply")
    (data / "notes.txt").write_text("not a case")
    settings = FitSettings(level=2, global_steps=4, vertex_steps=2, vertex_modes=8)

    result = run_benchmark(data, ["case_*"], str(tiny_model), settings, planes_curve=(3, 5), progress=False)

    methods = ["convex hull", "RBF thin-plate", "fill between slices (ITK)", "DALS global latent",
               "DALS per-vertex, no contour blend", MAIN_METHOD]
    assert result["cases"] == ["case_a.ply"]
    assert [r["method"] for r in result["rows"]] == methods
    assert all(r["planes"] == 3 and np.isfinite(r["assd_mm"]) and 0 <= r["fscore_2"] <= 100 for r in result["rows"])
    # The box diagonal is the looser tolerance; near and far from the planes are parts of the whole.
    assert all(r["fscore_2_box"] >= r["fscore_2"] and 0 <= r["fscore_2_near"] <= 100 for r in result["rows"])
    five = sorted(r["method"] for r in result["curve"] if r["planes"] == 5)
    assert five == sorted([MAIN_METHOD, "RBF thin-plate", "fill between slices (ITK)"])
    text = summarise(result)
    for method in methods:
        assert f"| {method} |" in text
    assert "| median F@2% | 3 planes | 5 planes |" in text
    assert "| F@2% box | F@2% <10 mm | F@2% >20 mm |" in text
    assert "1 held-out cases" in text
    with pytest.raises(InputError, match="no meshes match"):
        run_benchmark(data, ["other_*"], str(tiny_model), settings, progress=False)


def test_turning_a_dals_bundle_turns_every_decoded_surface_exactly(tiny_model):
    """The liver model was trained on RAS surfaces and turned into LPS by rotated_tensors: decoding
    the turned model gives the old surfaces turned half a turn about z, to the last bit."""
    bundle = load_bundle(tiny_model, kind="dals")
    half_turn = torch.diag(torch.tensor([-1.0, -1.0, 1.0]))
    turned = replace(bundle, tensors=rotated_tensors(bundle, half_turn))
    (old, mean), (new, _) = decoder_from_bundle(bundle), decoder_from_bundle(turned)
    template, _ = icosphere(3)
    latent = mean + 0.3 * torch.randn(len(mean), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = old(template, latent[None])[0] @ half_turn.T, new(template, latent[None])[0]
    order = torch.cdist(template @ half_turn.T, template).argmin(1)  # the template maps onto itself
    assert torch.equal(got[order], expected)
