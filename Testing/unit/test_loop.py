"""The interactive loop: per-vertex uncertainty, the suggested next plane, refits from an earlier
fit (``--warm-start``), and the simulated-clinician benchmark's scoring."""

from __future__ import annotations

import json

import numpy as np
import pytest
from shapeprior.bench.contours import section_curves
from shapeprior.bench.loop import auroc, noc, plot, run_loop, summarise
from shapeprior.cli import main
from shapeprior.fit.contour_interpolation import plane_distances
from shapeprior.fit.contours import group_planes
from shapeprior.fit.run import UNCERTAINTY_ARRAY, _suggestion, fit_curves
from shapeprior.fit.uncertainty import (
    MIN_GAP_MM,
    describe_plane,
    shape_posterior,
    training_model,
)
from shapeprior.io.markups import read_closed_curves, write_closed_curves
from shapeprior.models.registry import load_model
from shapeprior.settings import FitSettings
from test_cli_fit import CENTRE, FAST, RADII, SETTINGS, curves

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sample_fit():
    """The shipped liver model fitted to the sample's three contours (LPS mm)."""
    from shapeprior import resources_dir

    drawn = read_closed_curves(resources_dir() / "SampleData" / "liver-contours.mrk.json")
    return drawn, fit_curves(drawn, "liver")


def test_uncertainty_is_low_at_the_drawn_planes_and_high_far_from_them(sample_fit):
    drawn, outcome = sample_fit
    uncertainty = outcome.vertex_data[UNCERTAINTY_ARRAY]
    distance = plane_distances(np.asarray(outcome.mesh.vertices), group_planes(drawn))
    assert uncertainty.shape == (len(outcome.mesh.vertices),) and np.all(uncertainty > 0)
    assert np.median(uncertainty[distance < 5]) < 0.5 * np.median(uncertainty[distance > 30])
    summary = outcome.report["uncertainty_mm"]
    assert summary["coverage"] == 0.9 and summary["median"] == pytest.approx(np.median(uncertainty))


def test_the_suggested_plane_is_an_axis_plane_through_the_organ_away_from_the_drawn_ones(sample_fit):
    drawn, outcome = sample_fit
    plane = outcome.report["suggested_plane"]
    assert plane["frame"] == "LPS mm" and plane["axis"] in ("axial", "coronal", "sagittal")
    axis = ("sagittal", "coronal", "axial").index(plane["axis"])
    assert np.allclose(plane["normal"], np.eye(3)[axis])
    lo, hi = outcome.mesh.bounds
    assert lo[axis] < plane["origin"][axis] < hi[axis]
    for p in group_planes(drawn):
        if abs(p.normal[axis]) > 0.98:
            assert abs(plane["origin"][axis] - p.origin[axis]) >= MIN_GAP_MM - 1e-6
    assert 0 < plane["expected_gain"]["rms_uncertainty_mm"] < plane["expected_gain"]["rms_uncertainty_before_mm"]
    assert outcome.summary.splitlines()[-1].startswith(f"next: {describe_plane(plane)}")


def test_a_refit_with_the_suggested_contour_starts_from_the_fit_and_lowers_the_uncertainty(sample_fit):
    drawn, outcome = sample_fit
    plane = outcome.report["suggested_plane"]
    # The clinician's new contour: here the fitted surface's own cut, so the fit can follow it.
    new = section_curves(outcome.mesh, np.array(plane["origin"]), np.array(plane["normal"]))
    refit = fit_curves(drawn + new, "liver", warm_start=outcome.report)
    assert refit.report["iterations"] == sum(FitSettings().refit_steps)
    assert refit.report["warm_start"].startswith("refitted from the previous fit's report: 3 of its 3 curves")
    before = outcome.report["uncertainty_mm"]["median"]
    assert refit.report["uncertainty_mm"]["median"] < 0.8 * before


def test_describe_plane_gives_the_offset_slicer_shows_in_ras():
    origin = [10.0, -20.0, 30.0]  # LPS mm
    assert describe_plane({"axis": "axial", "origin": origin}) == "axial slice at S = 30.0 mm"
    assert describe_plane({"axis": "coronal", "origin": origin}) == "coronal slice at A = 20.0 mm"
    assert describe_plane({"axis": "sagittal", "origin": origin}) == "sagittal slice at R = -10.0 mm"


def test_no_plane_is_suggested_when_nothing_is_uncertain_or_outside_the_image(tiny_model):
    outcome = fit_curves(curves(), tiny_model, SETTINGS, suggest="off")
    assert "suggested_plane" not in outcome.report
    bundle, (decoder, _) = load_model(tiny_model, kind="dals")
    shapes, modes = training_model(bundle, decoder, SETTINGS.level)
    posterior = shape_posterior(outcome.mesh, outcome.detail.pose, shapes, modes, [])
    plane, line = _suggestion(posterior, np.full(len(outcome.mesh.vertices), 0.1), 100.0, "axes", None)
    assert plane is None and line.startswith("next: no contour needed")
    far = np.array([[1e4, 1e4, 1e4], [1e4 + 1, 1e4 + 1, 1e4 + 1]])
    plane, line = _suggestion(posterior, np.full(len(outcome.mesh.vertices), 50.0), 100.0, "axes", far)
    assert plane is None and "no plane inside the reference image" in line
    plane, _ = _suggestion(posterior, np.full(len(outcome.mesh.vertices), 50.0), 100.0, "oblique", None)
    assert np.linalg.norm(plane["normal"]) == pytest.approx(1.0, abs=1e-5)


def test_fit_contours_writes_uncertainty_and_refits_from_its_report(tmp_path, tiny_model, capsys):
    write_closed_curves(curves(), tmp_path / "three.mrk.json")
    extra = np.array([[0.0, 40.0 * np.cos(t), 35.0 * np.sin(t)] for t in np.linspace(0, 2 * np.pi, 20, endpoint=False)])
    write_closed_curves([extra + CENTRE + [50.0, 0.0, 0.0]], tmp_path / "fourth.mrk.json")
    first = ["fit-contours", str(tmp_path / "three.mrk.json"), "--model", str(tiny_model), *FAST]
    assert main([*first, "--out-model", str(tmp_path / "a.vtk"), "--report", str(tmp_path / "a.json")]) == 0
    assert "next: " in capsys.readouterr().out
    mesh_arrays = _point_arrays(tmp_path / "a.vtk")
    assert UNCERTAINTY_ARRAY in mesh_arrays and mesh_arrays[UNCERTAINTY_ARRAY].min() > 0
    report = json.loads((tmp_path / "a.json").read_text())
    assert set(report["fit_state"]) >= {"model_sha256", "organ", "frame", "curves", "latent", "coefficients"}
    assert main(["fit-contours", str(tmp_path / "three.mrk.json"), str(tmp_path / "fourth.mrk.json"), "--model",
                 str(tiny_model), *FAST, "--warm-start", str(tmp_path / "a.json"), "--report",
                 str(tmp_path / "b.json")]) == 0
    refit = json.loads((tmp_path / "b.json").read_text())
    assert refit["warm_start"] == f"refitted from {tmp_path / 'a.json'}: 3 of its 3 curves are among these 4"
    assert refit["iterations"] == sum(FitSettings().refit_steps)
    # A report of other curves is only a starting point, and says so.
    assert main(["fit-contours", str(tmp_path / "fourth.mrk.json"), str(tmp_path / "three.mrk.json"), "--model",
                 str(tiny_model), *FAST, "--warm-start", str(tmp_path / "b.json"), "--report",
                 str(tmp_path / "c.json")]) == 0
    assert "4 of its 4 curves" in json.loads((tmp_path / "c.json").read_text())["warm_start"]


def _point_arrays(path) -> dict:
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOLegacy import vtkPolyDataReader

    reader = vtkPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    data = reader.GetOutput().GetPointData()
    return {data.GetArrayName(i): vtk_to_numpy(data.GetArray(i)) for i in range(data.GetNumberOfArrays())}


@pytest.mark.parametrize("problem", ["not json", "no fit state", "other frame", "other model", "other level",
                                     "short coefficients", "curves not a list", "missing"])
def test_a_bad_warm_start_report_is_one_line_and_exit_2(tmp_path, tiny_model, capsys, problem):
    write_closed_curves(curves(), tmp_path / "three.mrk.json")
    command = ["fit-contours", str(tmp_path / "three.mrk.json"), "--model", str(tiny_model), *FAST]
    assert main([*command, "--report", str(tmp_path / "good.json")]) == 0
    good = json.loads((tmp_path / "good.json").read_text())
    bad = tmp_path / "bad.json"
    if problem == "not json":
        bad.write_text("{ this is not")
    elif problem == "no fit state":
        bad.write_text(json.dumps({k: v for k, v in good.items() if k != "fit_state"}))
    elif problem == "other frame":
        bad.write_text(json.dumps({**good, "fit_state": {**good["fit_state"], "frame": "RAS mm"}}))
    elif problem == "other model":
        bad.write_text(json.dumps({**good, "fit_state": {**good["fit_state"], "model_sha256": "0" * 16}}))
    elif problem == "other level":
        bad.write_text(json.dumps({**good, "fit_state": {**good["fit_state"], "level": 3}}))
    elif problem == "short coefficients":
        bad.write_text(json.dumps({**good, "fit_state": {**good["fit_state"],
                                                         "coefficients": good["fit_state"]["coefficients"][:-1]}}))
    elif problem == "curves not a list":
        bad.write_text(json.dumps({**good, "fit_state": {**good["fit_state"], "curves": 7}}))
    capsys.readouterr()
    assert main([*command, "--warm-start", str(bad), "--report", str(tmp_path / "out.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"shapeprior: error: {bad}: ")
    assert not (tmp_path / "out.json").exists()


def test_auroc_and_noc_score_as_defined():
    assert auroc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([False, False, True, True])) == 1.0
    assert auroc(np.array([0.9, 0.1, 0.8, 0.2]), np.array([False, False, True, True])) == 0.5
    rows = [{"case": "a", "strategy": "s", "contours": 4, "fscore_2": 91.0},
            {"case": "a", "strategy": "s", "contours": 5, "fscore_2": 95.0},
            {"case": "b", "strategy": "s", "contours": 4, "fscore_2": 80.0}]
    assert noc(rows, "s", ["a", "b"], cap=8) == 6.0  # 4 for a; b never reaches 90: the cap


def test_the_loop_benchmark_runs_every_strategy_on_a_small_organ(tmp_path, tiny_model, helpers):
    organ = helpers.ellipsoid_mesh(RADII, CENTRE, subdivisions=3)
    organ.export(tmp_path / "LiTS-1.obj")
    result = run_loop(tmp_path, ["LiTS-*"], str(tiny_model), SETTINGS, limit=1, stride=1, max_contours=4,
                      progress=False)
    strategies = {(r["strategy"], r["contours"]) for r in result["rows"]}
    assert {("suggested", 3), ("suggested", 4), ("fixed", 4), ("oracle", 4), ("RBF oracle", 3)} <= strategies
    suggested = [r for r in result["rows"] if r["strategy"] == "suggested" and r["contours"] == 4][0]
    assert 0 <= suggested["fscore_2"] <= 100 and suggested["cold_fscore_2"] >= 0 and 0 <= suggested["auroc"] <= 1
    table = summarise(result)
    assert "| suggested |" in table and "NoC@90" in table and "LiTS-1.obj" in table
    plot(result, tmp_path / "loop.png")
    assert (tmp_path / "loop.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_laplacian_modes_are_the_same_in_every_process():
    """--warm-start's coefficients weigh these modes: a new process must rebuild the same basis."""
    import subprocess
    import sys

    from shapeprior.fit.dals_fit import laplacian_modes

    code = "from shapeprior.fit.dals_fit import laplacian_modes; print(laplacian_modes(3, 16).numpy().tobytes().hex())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert bytes.fromhex(other) == laplacian_modes(3, 16).numpy().tobytes()
