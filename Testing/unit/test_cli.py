"""The ``shapeprior`` command line: exit codes, one-line errors naming the file, no partial output."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from shapeprior.cli import main

FAST = ["--sdf-samples", "2000", "--target-vertices", "800"]


def _write_ellipsoid(helpers, path: Path, scale: float = 1.0, angle: float = 0.0, **grid) -> sitk.Image:
    image = helpers.ellipsoid_image(scale * np.array([14.0, 10.0, 6.0]), axes=helpers.rotation(angle, (0, 0, 1)), **grid)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return image


@pytest.fixture
def good_src(tmp_path, helpers) -> Path:
    """Three small, valid masks (the same shape in three poses and grids)."""
    src = tmp_path / "src"
    _write_ellipsoid(helpers, src / "case_1.nii.gz")
    _write_ellipsoid(helpers, src / "case_2.nii.gz", 1.15, 20, spacing=(0.9, 0.9, 1.2), direction=np.diag([-1.0, -1.0, 1.0]))
    _write_ellipsoid(helpers, src / "case_3.nii.gz", 0.9, 15, direction=helpers.rotation(30), centre=(10.0, -20.0, 30.0))
    return src


# ---------------------------------------------------------------- bad inputs
# Each maker writes one bad input into ``src`` (named to be processed first, beside the
# good masks) and returns (the file the error must name, a word of the problem, extra args).


def _empty_mask(src, helpers, tmp_path):
    path = src / "case_0.nii.gz"
    sitk.WriteImage(sitk.Image(16, 16, 16, sitk.sitkUInt8), str(path))
    return path, "empty mask", []


def _several_labels(src, helpers, tmp_path):
    path = src / "case_0.nii.gz"
    array, spacing, origin, direction = helpers.ellipsoid_array([8.0, 6.0, 5.0])
    array[:3, :3, :3] = 2
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing.tolist())
    sitk.WriteImage(image, str(path))
    return path, "--label", []


def _missing_label(src, helpers, tmp_path):
    path = src / "case_0.nii.gz"
    _write_ellipsoid(helpers, path)
    return path, "label 3 not present", ["--label", "3"]


def _not_an_image(src, helpers, tmp_path):
    path = src / "case_0.nii.gz"
    path.write_text("this is a text file, not a NIfTI volume\n")
    return path, "not a readable image", []


def _two_d_image(src, helpers, tmp_path):
    path = src / "case_0.nii.gz"
    array = np.zeros((20, 20), np.uint8)
    array[5:15, 5:15] = 1
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path, "2D image", []


def _mesh_without_faces(src, helpers, tmp_path):
    path = src / "case_0.obj"
    path.write_text("v 0 0 0\nv 10 0 0\nv 0 10 0\nv 0 0 10\n")
    return path, "no faces", []


def _mesh_with_nan(src, helpers, tmp_path):
    path = src / "case_0.obj"
    path.write_text("v 0 0 0\nv nan 0 0\nv 0 10 0\nv 0 0 10\nf 1 2 3\nf 1 3 4\nf 1 4 2\nf 2 4 3\n")
    return path, "NaN", []


def _direction_mismatch(src, helpers, tmp_path):
    path = src / "case_0.nii.gz"
    _write_ellipsoid(helpers, path, direction=helpers.rotation(10))
    images = tmp_path / "images"
    for mask in sorted(src.glob("*.nii.gz")):  # every mask gets its image on the mask's grid...
        reference = sitk.ReadImage(str(mask))
        image = sitk.Image(reference.GetSize(), sitk.sitkInt16)
        image.CopyInformation(reference)
        images.mkdir(exist_ok=True)
        sitk.WriteImage(image, str(images / mask.name))
    bad = sitk.ReadImage(str(images / path.name))  # ...but case_0's image is turned
    bad.SetDirection(helpers.rotation(-10).ravel().tolist())
    sitk.WriteImage(bad, str(images / path.name))
    return path, "direction matrix differs", ["--images", str(images)]


BAD_INPUTS = [
    _empty_mask,
    _several_labels,
    _missing_label,
    _not_an_image,
    _two_d_image,
    _mesh_without_faces,
    _mesh_with_nan,
    _direction_mismatch,
]


def _error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert lines[0].startswith("shapeprior: error: ")
    return lines[0]


@pytest.mark.parametrize("make_bad", BAD_INPUTS, ids=lambda f: f.__name__.strip("_"))
def test_bad_input_exit_2_one_line_no_output(make_bad, good_src, tmp_path, helpers, capsys):
    bad_path, problem, extra = make_bad(good_src, helpers, tmp_path)
    src_before = helpers.snapshot(good_src)
    out = tmp_path / "out"

    code = main(["-q", "prepare", str(good_src), str(out), *FAST, *extra])

    captured = capsys.readouterr()
    assert code == 2
    line = _error_line(captured.err)
    assert line.startswith(f"shapeprior: error: {bad_path}: ") and problem in line
    assert captured.out == ""
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
    assert helpers.temp_files(tmp_path) == []
    assert helpers.snapshot(good_src) == src_before  # inputs untouched


def test_bad_input_with_progress_bars_still_ends_with_one_error_line(good_src, tmp_path, helpers, capsys):
    bad_path, problem, _ = _empty_mask(good_src, helpers, tmp_path)
    assert main(["prepare", str(good_src), str(tmp_path / "out"), *FAST]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if "shapeprior: error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0]
    assert f"{bad_path}: " in errors[0] and problem in errors[0]


def test_existing_non_dataset_output_is_refused_untouched(good_src, tmp_path, helpers, capsys):
    out = tmp_path / "my-results"
    (out / "sub").mkdir(parents=True)
    (out / "notes.txt").write_text("important\n")
    (out / "sub" / "table.csv").write_text("a,b\n1,2\n")
    before = helpers.snapshot(out)

    code = main(["-q", "prepare", str(good_src), str(out), *FAST])

    assert code == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(f"shapeprior: error: {out}: ") and "not empty" in line
    assert helpers.snapshot(out) == before
    assert sorted(p.name for p in out.rglob("*")) == ["notes.txt", "sub", "table.csv"]


def test_unknown_anchor_is_refused_before_any_output(good_src, tmp_path, helpers, capsys):
    out = tmp_path / "out"
    assert main(["-q", "prepare", str(good_src), str(out), *FAST, "--anchor", "case_9"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "--anchor 'case_9'" in line
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


def test_bad_option_values(good_src, tmp_path, capsys):
    assert main(["-q", "prepare", str(good_src), str(tmp_path / "out"), "--label", "one"]) == 2
    assert "--label must be integers" in _error_line(capsys.readouterr().err)
    assert main(["-q", "prepare", str(tmp_path / "absent"), str(tmp_path / "out")]) == 2
    assert _error_line(capsys.readouterr().err).startswith(f"shapeprior: error: {tmp_path / 'absent'}: not a folder")
    assert not (tmp_path / "out").exists()


def test_entry_point_subprocess(good_src, tmp_path, helpers):
    exe = shutil.which("shapeprior")
    if exe is None:
        pytest.skip("the shapeprior entry point is not installed on PATH")
    bad_path, problem, _ = _several_labels(good_src, helpers, tmp_path)
    out = tmp_path / "out"
    result = subprocess.run(
        [exe, "-q", "prepare", str(good_src), str(out), *FAST], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    line = _error_line(result.stderr)
    assert line.startswith(f"shapeprior: error: {bad_path}: ") and problem in line
    assert result.stdout == ""
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
    assert helpers.temp_files(tmp_path) == []


# ---------------------------------------------------------------- successful runs

SUMMARY = re.compile(r"^(\d+) shapes in (.+) \(anchor (\S+), (\d+) repaired\) in \d+\.\d s$")


def test_prepare_success_and_resume(good_src, tmp_path, helpers, capsys):
    out = tmp_path / "dataset"
    assert main(["-q", "prepare", str(good_src), str(out), "--sdf-samples", "2000", "--target-vertices", "800"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    summary = SUMMARY.match(captured.out.strip())
    assert summary and captured.out.count("\n") == 1, captured.out
    assert summary.group(1) == "3" and summary.group(2) == str(out) and summary.group(4) == "0"

    manifest = json.loads((out / "manifest.json").read_text())
    assert summary.group(3) == manifest["anchor"]
    assert manifest["settings"]["sdf_samples"] == 2000 and manifest["settings"]["labels"] is None
    for name in ("case_1", "case_2", "case_3"):
        entry = manifest["shapes"][name]
        for key in ("surface", "unit", "sdf"):
            assert (out / entry[key]).is_file()
        with np.load(out / entry["sdf"]) as sdf:
            assert sdf["pos"].shape == (1000, 4) and sdf["neg"].shape == (1000, 4)
    assert helpers.temp_files(out) == []

    # The same command again resumes: nothing to do, nothing rewritten but the manifest.
    before = helpers.snapshot(out)
    assert main(["-q", "prepare", str(good_src), str(out), "--sdf-samples", "2000", "--target-vertices", "800"]) == 0
    after = helpers.snapshot(out)
    assert {k: v[:2] for k, v in after.items() if k != "manifest.json"} == {
        k: v[:2] for k, v in before.items() if k != "manifest.json"
    }
    assert SUMMARY.match(capsys.readouterr().out.strip())

    # Other settings on the same folder: refused, nothing changed.
    assert main(["-q", "prepare", str(good_src), str(out), "--sdf-samples", "4000", "--target-vertices", "800"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(f"shapeprior: error: {out}: ") and "other settings" in line
    assert helpers.snapshot(out) == after


def test_prepare_hippocampus_with_labels_and_images(hippocampus_paths, tmp_path, capsys):
    """Real labels (1 and 2, merged) on their images' grids (direction diag(-1, -1, 1))."""
    src, images = tmp_path / "labels", tmp_path / "images"
    src.mkdir()
    images.mkdir()
    for label, image in hippocampus_paths:
        (src / label.name).symlink_to(label)
        (images / image.name).symlink_to(image)
    out = tmp_path / "dataset"

    assert main(["-q", "prepare", str(src), str(out), "--label", "1,2", "--images", str(images), *FAST]) == 0
    assert SUMMARY.match(capsys.readouterr().out.strip())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["labels"] == [1, 2]
    assert len(manifest["shapes"]) == 3
    for (label, image), entry in zip(hippocampus_paths, (manifest["shapes"][k] for k in sorted(manifest["shapes"]))):
        assert entry["image"] == str((images / image.name).resolve())
        voxels = (sitk.GetArrayViewFromImage(sitk.ReadImage(str(label))) > 0).sum()  # 1 mm voxels
        assert entry["volume_mm3"] == pytest.approx(voxels, rel=0.25)


def test_a_bad_file_after_good_ones_stops_before_anything_is_written(good_src, tmp_path, capsys):
    bad = good_src / "case_9.nii.gz"  # sorted last: every good mask comes before it
    sitk.WriteImage(sitk.Image(16, 16, 16, sitk.sitkUInt8), str(bad))
    out = tmp_path / "out"

    assert main(["-q", "prepare", str(good_src), str(out), *FAST]) == 2
    assert _error_line(capsys.readouterr().err).startswith(f"shapeprior: error: {bad}: empty mask")
    assert not out.exists()
    bad.unlink()  # fixed: the same command now runs from scratch
    assert main(["-q", "prepare", str(good_src), str(out), *FAST]) == 0
