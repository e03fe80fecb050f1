"""``shapeprior fit-contours`` and ``fit-points``: outputs in LPS mm, and one-line errors with no output on bad input.

All fits use the tiny random DALS model (``tiny_model``), never a shipped one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import trimesh

import shapeprior.fit.run as fit_run
from shapeprior.cli import main
from shapeprior.fit.dals_fit import FitSettings
from shapeprior.fit.run import fit_curves, fit_points
from shapeprior.io.points import read_point_cloud
from shapeprior.io import read_mesh
from shapeprior.io.labelmaps import mesh_to_labelmap
from shapeprior.io.markups import read_closed_curves, write_closed_curves

FAST = ["--level", "2", "--global-steps", "6", "--vertex-steps", "3"]
SETTINGS = FitSettings(level=2, global_steps=6, vertex_steps=3)  # what FAST gives
CENTRE = np.array([20.0, -30.0, 40.0])
RADII = np.array([100.0, 80.0, 70.0])  # liver-sized: the tiny model's range is 80-130 mm per unit


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def ellipse(axis: int, scale: float = 1.0, count: int = 24) -> np.ndarray:
    """The ellipsoid's outline on its central plane normal to ``axis`` (LPS mm)."""
    t = np.linspace(0.0, 2.0 * np.pi, count, endpoint=False)
    a, b = [i for i in range(3) if i != axis]
    points = np.zeros((count, 3))
    points[:, a] = RADII[a] * np.cos(t)
    points[:, b] = RADII[b] * np.sin(t)
    return scale * points + CENTRE


def curves(scale: float = 1.0) -> list[np.ndarray]:
    return [ellipse(2, scale), ellipse(1, scale), ellipse(0, scale)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, helpers):
    """Input files shared by the tests (never modified by them)."""
    root = tmp_path_factory.mktemp("inputs")
    write_closed_curves(curves(), root / "curves.mrk.json")

    # An image grid around the organ: anisotropic, turned.
    direction = helpers.rotation(15.0)
    spacing, size = np.array([5.0, 6.0, 7.0]), np.array([50, 40, 34])
    reference = sitk.Image([int(s) for s in size], sitk.sitkInt16)
    reference.SetSpacing(spacing.tolist())
    reference.SetDirection(direction.ravel().tolist())
    reference.SetOrigin((CENTRE - direction @ (spacing * (size - 1) / 2)).tolist())
    sitk.WriteImage(reference, str(root / "reference.nii.gz"))

    # A labelmap painted on three slices (one per voxel axis) of a turned, anisotropic grid.
    solid = helpers.ellipsoid_image(RADII, spacing=(4.0, 5.0, 6.0), direction=helpers.rotation(20.0, (0, 1, 1)),
                                    centre=CENTRE, label=3)
    full = sitk.GetArrayFromImage(solid)
    painted = np.zeros_like(full)
    k, j, i = (s // 2 for s in full.shape)
    painted[k], painted[:, j], painted[:, :, i] = full[k], full[:, j], full[:, :, i]
    image = sitk.GetImageFromArray(painted)
    image.CopyInformation(solid)
    sitk.WriteImage(image, str(root / "painted.nii.gz"))
    one_slice = np.zeros_like(full)
    one_slice[k] = full[k]
    image = sitk.GetImageFromArray(one_slice)
    image.CopyInformation(solid)
    sitk.WriteImage(image, str(root / "one-slice.nii.gz"))

    points = trimesh.sample.sample_surface(helpers.ellipsoid_mesh(RADII, centre=CENTRE, subdivisions=3), 300, seed=0)[0]
    np.savetxt(root / "points.xyz", points)
    return root


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("shapeprior: error: ")
    return lines[0]


def _same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


# ------------------------------------------------------------------ successful fits

SUMMARY = re.compile(r"^fitted liver to 3 curves on 3 planes in \d+\.\d s: contour residual mean (\d+\.\d\d) mm, max (\d+\.\d\d) mm$")


def test_fit_contours_from_markups(inputs, tiny_model, tmp_path, capsys, helpers):
    mrk, reference = inputs / "curves.mrk.json", inputs / "reference.nii.gz"
    out = tmp_path / "out"
    code = main(["-q", "fit-contours", str(mrk), "--model", str(tiny_model), *FAST, "--reference", str(reference),
                 "--out-model", str(out / "liver.vtk"), "--out-seg", str(out / "liver.seg.nrrd"),
                 "--report", str(out / "report.json")])

    captured = capsys.readouterr()
    fitted, suggestion = captured.out.strip().split("\n")  # the fit, then where to draw next
    summary = SUMMARY.match(fitted)
    assert summary and suggestion.startswith("next: "), captured.out
    expected = fit_curves(read_closed_curves(mrk), tiny_model, SETTINGS, str(mrk))
    # Only the report's warnings (curves the tiny model's short fit does not follow) go to stderr.
    assert code == 0 and captured.err == "".join(f"shapeprior: warning: {w}\n" for w in expected.report["warnings"])

    mesh = read_mesh(out / "liver.vtk")  # LPS mm, as fitted
    np.testing.assert_allclose(mesh.vertices, expected.mesh.vertices, atol=1e-3)
    np.testing.assert_array_equal(mesh.faces, expected.mesh.faces)
    assert mesh.is_watertight and mesh.volume > 0

    seg = sitk.ReadImage(str(out / "liver.seg.nrrd"))
    _same_grid(seg, sitk.ReadImage(str(reference)))
    array = sitk.GetArrayFromImage(seg)
    assert array.sum() > 100
    np.testing.assert_array_equal(array, sitk.GetArrayFromImage(mesh_to_labelmap(expected.mesh, seg)))
    assert seg.GetMetaData("Segment0_Name") == "liver"

    report = json.loads((out / "report.json").read_text())
    assert report["input"] == str(mrk) and report["model"] == str(tiny_model) and report["frame"] == "LPS mm"
    assert report["planes"] == 3 and report["iterations"] == 9 and report["settings"]["level"] == 2
    assert [r["curve"] for r in report["residuals"]] == [1, 2, 3]
    for row in report["residuals"]:
        assert 0 <= row["mean_mm"] <= row["max_mm"] < 60
    assert float(summary.group(2)) == pytest.approx(max(r["max_mm"] for r in report["residuals"]), abs=0.006)
    assert report["pose_model_to_lps"]["scale"] == pytest.approx(expected.detail.pose.scale, rel=1e-5)
    assert report["mesh"]["vertices"] == 162
    assert helpers.temp_files(tmp_path) == []

    # Existing outputs are replaced with --overwrite.
    assert main(["-q", "fit-contours", str(mrk), "--model", str(tiny_model), *FAST, "--level", "1",
                 "--report", str(out / "report.json"), "--overwrite"]) == 0
    assert json.loads((out / "report.json").read_text())["mesh"]["vertices"] == 42


def test_fit_contours_from_a_painted_labelmap(inputs, tiny_model, tmp_path, capsys):
    painted = inputs / "painted.nii.gz"
    out = tmp_path / "out"
    code = main(["-q", "fit-contours", str(painted), "--model", str(tiny_model), *FAST,
                 "--out-seg", str(out / "seg.nii.gz"), "--report", str(out / "report.json")])

    assert code == 0, capsys.readouterr().err
    assert SUMMARY.match(capsys.readouterr().out.splitlines()[0])
    seg = sitk.ReadImage(str(out / "seg.nii.gz"))  # on the painted labelmap's grid
    labelmap = sitk.ReadImage(str(painted))
    _same_grid(seg, labelmap)
    fitted = sitk.GetArrayFromImage(seg) > 0
    drawn = sitk.GetArrayFromImage(labelmap) > 0
    assert fitted.sum() > drawn.sum()  # a whole organ from three slices
    assert (fitted & drawn).sum() > 0.7 * drawn.sum()
    report = json.loads((out / "report.json").read_text())
    assert report["input"] == str(painted) and report["planes"] == 3 and len(report["residuals"]) == 3
    assert not (out / "liver.vtk").exists() and sorted(p.name for p in out.iterdir()) == ["report.json", "seg.nii.gz"]


def test_fit_points_from_xyz(inputs, tiny_model, tmp_path, capsys):
    xyz, reference = inputs / "points.xyz", inputs / "reference.nii.gz"
    out = tmp_path / "out"
    code = main(["-q", "fit-points", str(xyz), "--model", str(tiny_model), *FAST, "--out-model", str(out / "liver.ply"),
                 "--out-seg", str(out / "liver.nrrd"), "--reference", str(reference), "--report", str(out / "r.json")])

    captured = capsys.readouterr()
    assert code == 0 and captured.err == ""
    assert re.match(r"^fitted liver to 300 points in \d+\.\d s$", captured.out.strip())
    expected = fit_points(read_point_cloud(xyz), tiny_model, SETTINGS, str(xyz))
    mesh = read_mesh(out / "liver.ply")
    np.testing.assert_allclose(mesh.vertices, expected.mesh.vertices, atol=1e-3)
    _same_grid(sitk.ReadImage(str(out / "liver.nrrd")), sitk.ReadImage(str(reference)))
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(out / "liver.nrrd"))).sum() > 100
    report = json.loads((out / "r.json").read_text())
    assert report["input"] == str(xyz) and "residuals" not in report


# ------------------------------------------------------------------ bad inputs
# Each maker writes its bad input under ``tmp`` and returns (command line, what the error
# line must start with after "shapeprior: error: ", a word of the problem, whether the fit runs).


def _markups(tmp: Path, markups: list[dict], name: str = "bad.mrk.json") -> Path:
    path = tmp / name
    path.write_text(json.dumps({"markups": markups}))  # NaN is written as the literal NaN (Slicer does too)
    return path


def _curve(points, kind: str = "ClosedCurve") -> dict:
    return {"type": kind, "coordinateSystem": "LPS", "controlPoints": [{"position": list(map(float, p))} for p in points]}


def _contours(path, *extra):
    return ["fit-contours", str(path), *extra]


def _unknown_model(tmp, inputs, model):
    argv = _contours(inputs / "curves.mrk.json", "--model", "no-such-organ")
    return argv, "unknown model 'no-such-organ' (shipped models: ", "or give a .pt file", False


def _corrupt_model(tmp, inputs, model):
    bad = tmp / "corrupt.pt"
    bad.write_bytes(np.random.default_rng(0).bytes(3000))
    return _contours(inputs / "curves.mrk.json", "--model", str(bad)), f"{bad}: ", "not a readable shapeprior model", False


def _missing_model(tmp, inputs, model):
    return _contours(inputs / "curves.mrk.json", "--model", str(tmp / "absent.pt")), f"{tmp / 'absent.pt'}: ", \
        "no such model file", False


def _open_curve(tmp, inputs, model):
    path = _markups(tmp, [_curve(ellipse(2)), _curve(ellipse(1), "Curve"), _curve(ellipse(0))])
    return _contours(path), f"{path}: ", "markup 2 is an open curve", False


def _two_points(tmp, inputs, model):
    path = _markups(tmp, [_curve(ellipse(2)), _curve(ellipse(1)[:2]), _curve(ellipse(0))])
    return _contours(path), f"{path}: ", "closed curve 2 has 2 points", False


def _parallel_planes(tmp, inputs, model):
    path = _markups(tmp, [_curve(ellipse(2) + [0, 0, dz]) for dz in (-20.0, 0.0, 30.0)])
    return _contours(path), f"{path}: ", "at least two non-parallel planes", False


def _nan_coordinates(tmp, inputs, model):
    nan = ellipse(1)
    nan[4, 0] = np.nan
    path = _markups(tmp, [_curve(ellipse(2)), _curve(nan), _curve(ellipse(0))])
    return _contours(path), f"{path}: ", "markup 2 has NaN", False


def _scaled_x50(tmp, inputs, model):
    path = tmp / "metres.mrk.json"
    write_closed_curves(curves(50.0), path)
    return _contours(path), f"{path}: ", "x the typical liver size", False  # its extent is checked first


def _existing_output(tmp, inputs, model):
    (tmp / "out").mkdir()
    (tmp / "out" / "r.json").write_text('{"earlier": "report"}\n')
    return _contours(inputs / "curves.mrk.json"), f"{tmp / 'out' / 'r.json'}: ", "exists; pass --overwrite", False


def _seg_without_reference(tmp, inputs, model):
    seg = tmp / "out" / "s.nii.gz"
    return _contours(inputs / "curves.mrk.json", "--out-seg", str(seg)), f"{seg}: ", "needs a grid", False


def _scene_not_mrb(tmp, inputs, model):
    scene = tmp / "out" / "scene.zip"
    return _contours(inputs / "curves.mrk.json", "--out-scene", str(scene)), f"{scene}: ", "must end in .mrb", False


def _seg_unknown_format(tmp, inputs, model):
    seg = tmp / "out" / "s.txt"
    argv = _contours(inputs / "curves.mrk.json", "--out-seg", str(seg), "--reference", str(inputs / "reference.nii.gz"))
    return argv, f"{seg}: ", "unsupported", False


def _model_unknown_format(tmp, inputs, model):
    path = tmp / "out" / "m.txt"
    return _contours(inputs / "curves.mrk.json", "--out-model", str(path)), f"{path}: ", "unsupported mesh format", False


def _missing_input(tmp, inputs, model):
    return _contours(tmp / "absent.mrk.json"), f"{tmp / 'absent.mrk.json'}: ", "no such file", False


def _one_painted_slice(tmp, inputs, model):
    path = inputs / "one-slice.nii.gz"
    return _contours(path), f"{path}: ", "at least two non-parallel planes", False


def _empty_labelmap(tmp, inputs, model):
    path = tmp / "empty.nii.gz"
    sitk.WriteImage(sitk.Image(20, 20, 20, sitk.sitkUInt8), str(path))
    return _contours(path), f"{path}: ", "empty mask", False


def _points_with_nan(tmp, inputs, model):
    path = tmp / "nan.xyz"
    points = np.loadtxt(inputs / "points.xyz")
    points[7, 1] = np.nan
    np.savetxt(path, points)
    return ["fit-points", str(path)], f"{path}: ", "NaN", False


def _too_few_points(tmp, inputs, model):
    path = tmp / "few.xyz"
    np.savetxt(path, np.loadtxt(inputs / "points.xyz")[:5])
    return ["fit-points", str(path)], f"{path}: ", "at least 10 points", False


def _points_unknown_format(tmp, inputs, model):
    path = tmp / "points.csv"
    path.write_text("1,2,3\n")
    return ["fit-points", str(path)], f"{path}: ", "unsupported point cloud format", False


def _points_seg_without_reference(tmp, inputs, model):
    seg = tmp / "out" / "s.nii.gz"
    return ["fit-points", str(inputs / "points.xyz"), "--out-seg", str(seg)], f"{seg}: ", "needs a grid", False


BAD_INPUTS = [
    _unknown_model, _corrupt_model, _missing_model, _open_curve, _two_points, _parallel_planes, _nan_coordinates,
    _scaled_x50, _existing_output, _seg_without_reference, _scene_not_mrb, _seg_unknown_format, _model_unknown_format,
    _missing_input, _one_painted_slice, _empty_labelmap, _points_with_nan, _too_few_points, _points_unknown_format,
    _points_seg_without_reference,
]


@pytest.mark.parametrize("make_bad", BAD_INPUTS, ids=lambda f: f.__name__.strip("_"))
def test_bad_input_exit_2_one_line_no_output(make_bad, inputs, tiny_model, tmp_path, capsys, monkeypatch, helpers):
    argv, start, problem, fits = make_bad(tmp_path, inputs, tiny_model)
    out = tmp_path / "out"
    if "--model" not in argv:
        argv += ["--model", str(tiny_model)]
    if "--out-model" not in argv:
        argv += ["--out-model", str(out / "m.vtk")]
    argv += ["--report", str(out / "r.json"), *FAST]
    before = helpers.snapshot(tmp_path)
    fitted = []
    original = fit_run.fit_dals
    monkeypatch.setattr(fit_run, "fit_dals", lambda *a, **k: fitted.append(1) or original(*a, **k))

    code = main(["-q", *argv])

    captured = capsys.readouterr()
    assert code == 2
    line = _one_error_line(captured.err)
    assert line.startswith(f"shapeprior: error: {start}") and problem in line, line
    assert captured.out == ""
    assert helpers.snapshot(tmp_path) == before  # nothing written, an existing output byte-identical
    assert helpers.temp_files(tmp_path) == []
    assert bool(fitted) == fits  # refused before fitting, unless only the fit can tell


def test_nothing_to_write_is_refused(inputs, tiny_model, capsys):
    assert main(["-q", "fit-contours", str(inputs / "curves.mrk.json"), "--model", str(tiny_model)]) == 2
    assert "nothing to write" in _one_error_line(capsys.readouterr().err)


def test_subprocess_bad_input_one_line(tmp_path, tiny_model):
    """The module run as a program: exit code 2 and one stderr line, even after a whole fit."""
    path = tmp_path / "metres.mrk.json"
    write_closed_curves(curves(50.0), path)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "shapeprior.cli", "-q", "fit-contours", str(path), "--model", str(tiny_model), *FAST,
         "--out-model", str(out / "m.vtk"), "--report", str(out / "r.json")],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert result.returncode == 2, result.stderr
    line = _one_error_line(result.stderr)
    assert line.startswith(f"shapeprior: error: {path}: ") and "x the typical liver size" in line
    assert result.stdout == ""
    assert not out.exists()


def test_unreadable_scene_bundle_keeps_the_working_directory(tmp_path):
    """MRML's ReadFromMRB changes into its unpacking folder; a failed read must not leave the process there."""
    pytest.importorskip("slicer_core", reason="needs the slicer-core wheel (real MRML)")
    from shapeprior.errors import InputError
    from shapeprior.mrml.scene import read_scene_bundle

    bad = tmp_path / "not-a-bundle.mrb"
    bad.write_text("hello")
    cwd = os.getcwd()
    with pytest.raises(InputError, match="not a readable Slicer scene bundle"):
        read_scene_bundle(bad)
    assert os.getcwd() == cwd
