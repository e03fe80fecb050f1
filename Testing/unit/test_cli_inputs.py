"""The command line as a Slicer user meets it: several curve files, option ranges, outputs checked
before the fit, benchmark tables kept in a document, and a parser that starts without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

import shapeprior.fit.run as fit_run
from shapeprior.cli import main
from shapeprior.cli.benchmarks import replace_marked
from shapeprior.fit.run import fit_curves
from shapeprior.io.markups import SCHEMA, write_closed_curves

from test_cli_fit import FAST, SETTINGS, curves, inputs  # noqa: F401 (a fixture)
from test_hostile_io import write_segmentation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _markups_in_ras(curve_list: list[np.ndarray], path) -> None:
    """A markups file in RAS, as older Slicer versions and some scripts write them."""
    markups = [{"type": "ClosedCurve", "coordinateSystem": "RAS",
                "controlPoints": [{"position": (p * [-1, -1, 1]).tolist()} for p in curve]} for curve in curve_list]
    path.write_text(json.dumps({"@schema": SCHEMA, "markups": markups}))


def test_three_curve_files_in_lps_and_ras_fit_as_one_file_does(tmp_path, tiny_model, capsys):
    axial, coronal, sagittal = curves()
    write_closed_curves([axial], tmp_path / "axial.mrk.json")
    _markups_in_ras([coronal], tmp_path / "coronal.mrk.json")
    write_closed_curves([sagittal], tmp_path / "sagittal.mrk.json")
    files = [str(tmp_path / f"{name}.mrk.json") for name in ("axial", "coronal", "sagittal")]

    code = main(["-q", "fit-contours", *files, "--model", str(tiny_model), *FAST, "--report", str(tmp_path / "r.json")])

    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    expected = fit_curves(curves(), tiny_model, SETTINGS, ", ".join(files))
    assert report["input"] == ", ".join(files) and report["planes"] == 3
    assert report["residuals"] == json.loads(json.dumps(expected.report["residuals"]))


@pytest.mark.parametrize("argv, problem", [
    (["--level", "12"], "--level must be between 1 and 6, got 12"),
    (["--global-steps", "-5"], "--global-steps must be between 1 and 5000, got -5"),
    (["--lambda-dir", "nan"], "--lambda-dir must be between 0 and 1000, got nan"),
    (["--seed", "x"], "--seed must be an integer, got 'x'"),
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
])
def test_option_values_are_checked_by_the_parser(argv, problem, tmp_path, capsys):
    assert main(["fit-contours", "c.mrk.json", "--report", str(tmp_path / "r.json"), *argv]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("shapeprior: error: ") and problem in line


def _fails_before_the_fit(argv, monkeypatch, capsys) -> str:
    fitted = []
    monkeypatch.setattr(fit_run, "fit_planes", lambda *a, **k: fitted.append(1))
    assert main(["-q", *argv]) == 2
    assert fitted == []
    (line,) = capsys.readouterr().err.splitlines()
    return line


def test_unwritable_and_directory_outputs_fail_before_the_fit(tmp_path, tiny_model, monkeypatch, capsys, helpers):
    write_closed_curves(curves(), tmp_path / "c.mrk.json")
    base = ["fit-contours", str(tmp_path / "c.mrk.json"), "--model", str(tiny_model), *FAST]
    (tmp_path / "a-folder").mkdir()
    line = _fails_before_the_fit([*base, "--report", str(tmp_path / "a-folder")], monkeypatch, capsys)
    assert line == f"shapeprior: error: {tmp_path / 'a-folder'}: is a directory; give a file name"
    (tmp_path / "a-file").write_text("x")
    line = _fails_before_the_fit([*base, "--report", str(tmp_path / "a-file" / "r.json")], monkeypatch, capsys)
    assert "cannot be written" in line
    line = _fails_before_the_fit(["fit-contours", str(tmp_path), "--model", str(tiny_model), "--report",
                                  str(tmp_path / "r.json")], monkeypatch, capsys)
    assert line == f"shapeprior: error: {tmp_path}: is a directory, not a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder", "c.mrk.json"]


def test_mixing_curve_files_with_a_labelmap_or_label_options_is_refused(tmp_path, tiny_model, monkeypatch, capsys):
    write_closed_curves(curves(), tmp_path / "c.mrk.json")
    (tmp_path / "mask.nii.gz").write_bytes(b"not an image")  # a file: the mix is refused, not the file
    out = ["--model", str(tiny_model), "--report", str(tmp_path / "r.json")]
    line = _fails_before_the_fit(["fit-contours", str(tmp_path / "c.mrk.json"), str(tmp_path / "mask.nii.gz"), *out],
                                 monkeypatch, capsys)
    assert "not a markups file" in line
    line = _fails_before_the_fit(["fit-contours", str(tmp_path / "c.mrk.json"), "--segment", "liver", *out],
                                 monkeypatch, capsys)
    assert "--label and --segment choose from a labelmap input" in line


def test_dals_only_options_with_an_implicit_model_are_an_error(image_dataset, tmp_path, capsys, helpers):
    label = tmp_path / "mask.nii.gz"
    sitk.WriteImage(helpers.ellipsoid_image((8.0, 6.0, 5.0)), str(label))
    code = main(["-q", "refine-mask", str(label), "--model", str(image_dataset["dissm"]), "--global-only",
                 "--lambda-dir", "2", "--report", str(tmp_path / "r.json")])
    assert code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--lambda-dir and --global-only only apply to DALS models" in line


def test_benchmark_tables_replace_their_marked_part_only():
    document = ("# Benchmarks\n\nintro\n<!-- begin shapeprior benchmark contours -->\nold table\n"
                "<!-- end shapeprior benchmark contours -->\n\n<!-- begin shapeprior benchmark image -->\nkeep\n"
                "<!-- end shapeprior benchmark image -->\n")
    updated = replace_marked(document, "contours", "| new | table |")
    assert "old table" not in updated and "| new | table |" in updated and "keep" in updated
    assert updated.startswith("# Benchmarks\n\nintro\n") and updated.count("<!--") == 4
    assert replace_marked(document, "refine", "x") is None


def test_help_and_errors_start_without_loading_torch_vtk_or_itk():
    code = ("import sys; from shapeprior.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'vtk', 'SimpleITK', 'monai', 'trimesh') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_a_segment_of_a_multi_segment_seg_nrrd_is_chosen_by_name(inputs, tiny_model, tmp_path, capsys):  # noqa: F811
    """A Segment Editor file with the painted organ (label 3) beside another segment: ``--segment``
    picks it by name and the fit equals the one from its label value."""
    painted = sitk.ReadImage(str(inputs / "painted.nii.gz"))
    array = sitk.GetArrayFromImage(painted)
    array[:3, :3, :3] = 5  # a second segment in a corner
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(painted)
    labels = tmp_path / "labels.nrrd"  # NRRD keeps the turned grid in double precision, as .seg.nrrd does
    sitk.WriteImage(image, str(labels))
    segmentation = write_segmentation(tmp_path / "organs.seg.nrrd", array[None], [("Liver", 0, 3), ("spleen", 0, 5)])
    on_grid = sitk.ReadImage(str(segmentation))
    on_grid.CopyInformation(painted)  # keeps the segment metadata
    sitk.WriteImage(on_grid, str(segmentation), useCompression=True)

    reports = []
    for name, choice in (("by-name", ["--segment", "liver"]), ("by-label", ["--label", "3"])):
        source = segmentation if name == "by-name" else labels
        assert main(["-q", "fit-contours", str(source), *choice, "--model", str(tiny_model), *FAST,
                     "--report", str(tmp_path / f"{name}.json")]) == 0, capsys.readouterr().err
        reports.append(json.loads((tmp_path / f"{name}.json").read_text()))
    assert reports[0]["residuals"] == reports[1]["residuals"] and reports[0]["planes"] == 3
    assert main(["-q", "fit-contours", str(segmentation), "--segment", "kidney", "--model", str(tiny_model),
                 "--report", str(tmp_path / "r.json")]) == 2
    assert "no segment named 'kidney' (segments: 'Liver', 'spleen')" in capsys.readouterr().err
