"""DeepSSM end to end on the tiny image dataset: train-pdm, train-deepssm, fit-image, describe, bad input."""

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from shapeprior.cli import main


def test_pdm_holds_the_training_split_and_reconstructs_it(deepssm, image_dataset):
    from shapeprior.models.pdm import PointDistributionModel
    from shapeprior.models.registry import load_model

    bundle, pdm = load_model(str(deepssm[0]), "pdm")
    assert isinstance(pdm, PointDistributionModel)
    assert len(pdm.names) == 8 and len(bundle.metadata["pdm"]["held_out"]) == 2  # every 5th of 10 held out
    assert pdm.mean.shape == (64, 3) and 1 <= pdm.size <= 7
    # Reconstruction from the kept modes explains at least the share asked for (0.95) of the variance.
    assert bundle.metadata["pdm"]["explained"][-1] >= 0.95
    assert bundle.metadata["pdm"]["correspondence_mm"]["mean"] < 1.0  # points lie on each surface


def test_fit_image_writes_surface_loadings_and_points_in_lps(deepssm, image_dataset, tmp_path):
    from shapeprior.io import read_mesh
    from shapeprior.io.markups import read_point_list

    image = image_dataset["images"] / "case_00.nii.gz"
    out = {k: tmp_path / v for k, v in {"seg": "seg.nii.gz", "report": "r.json", "loadings": "z.csv",
                                         "points": "p.csv", "list": "p.mrk.json", "model": "m.vtk"}.items()}
    assert main(["-q", "fit-image", str(image), "--model", str(deepssm[1]), "--out-seg", str(out["seg"]),
                 "--report", str(out["report"]), "--out-loadings", str(out["loadings"]),
                 "--out-points", str(out["points"]), "--out-model", str(out["model"])]) == 0
    assert main(["-q", "fit-image", str(image), "--model", str(deepssm[1]), "--out-points", str(out["list"])]) == 0
    report = json.loads(out["report"].read_text())
    assert report["method"] == "deepssm" and report["frame"] == "LPS mm"
    rows = list(csv.reader(out["loadings"].open()))
    assert rows[0][:3] == ["image", "mahalanobis", "volume_ml"] and len(rows) == 2
    assert np.allclose([float(v) for v in rows[1][3:]], report["loadings"], atol=1e-4)
    assert float(rows[1][1]) == pytest.approx(np.linalg.norm(report["loadings"]), abs=1e-3)
    table = np.loadtxt(out["points"], delimiter=",", skiprows=1)
    assert table.shape == (64, 4) and np.array_equal(table[:, 0], np.arange(64))
    assert np.allclose(read_point_list(out["list"]), table[:, 1:], atol=1e-3)  # the same points, LPS both
    # The points lie where the organ is: inside the image's physical extent, around the segmentation.
    seg = sitk.ReadImage(str(out["seg"]))
    voxels = np.argwhere(sitk.GetArrayFromImage(seg) > 0)[:, ::-1]
    centre = np.mean([seg.TransformContinuousIndexToPhysicalPoint(v.tolist()) for v in voxels.astype(float)], 0)
    assert np.linalg.norm(table[:, 1:].mean(0) - centre) < 2.0
    # The volume is the written surface's, the one the segment is made from.
    assert report["volume_ml"] == pytest.approx(abs(read_mesh(out["model"]).volume) / 1000, rel=1e-3)


def test_describe_writes_one_row_per_image(deepssm, image_dataset, tmp_path, capsys):
    images = [str(image_dataset["images"] / f"case_0{i}.nii.gz") for i in range(3)]
    bright = tmp_path / "bright.nii.gz"  # another modality's range: described, with a warning
    sitk.WriteImage(sitk.ReadImage(images[0]) * 1000.0, str(bright))
    out = tmp_path / "study.csv"
    assert main(["-q", "describe", *images, str(bright), "--model", str(deepssm[1]), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["image"] for r in rows] == [*images, str(bright)]
    assert all(float(r["volume_ml"]) > 0 for r in rows)
    assert "shapeprior: warning: " + str(bright) + ": intensity spread" in capsys.readouterr().err
    assert main(["-q", "describe", *images, "--model", str(deepssm[1]), "--out", str(out)]) == 2  # exists
    # A bad image whose header passes the first check stops the command before anything is written.
    nan = sitk.ReadImage(images[0], sitk.sitkFloat32)
    nan[3, 3, 3] = float("nan")
    sitk.WriteImage(nan, str(tmp_path / "nan.nrrd"))  # ITK reads NaN in NIfTI files as 0
    assert main(["-q", "describe", *images, str(tmp_path / "nan.nrrd"), "--model", str(deepssm[1]), "--out",
                 str(tmp_path / "none.csv")]) == 2
    assert "NaN" in capsys.readouterr().err and not (tmp_path / "none.csv").exists()


def test_bad_deepssm_inputs_get_one_line(deepssm, image_dataset, tmp_path, capsys, helpers):
    image = str(image_dataset["images"] / "case_00.nii.gz")
    tiny = tmp_path / "tiny.nii.gz"
    sitk.WriteImage(sitk.Image([5, 5, 5], sitk.sitkFloat32), str(tiny))
    cases = [
        (["fit-image", str(tiny), "--model", str(deepssm[1]), "--report", str(tmp_path / "a.json")],
         "much smaller than this model's input: a crop around the blob"),
        (["fit-image", image, "--model", str(deepssm[0]), "--report", str(tmp_path / "b.json")],
         "fit-image needs a dissm or deepssm model"),
        (["fit-image", image, "--model", str(deepssm[1]), "--stages", "translation", "--report", str(tmp_path / "c.json")],
         "--stages: not for deepssm models"),
        (["fit-image", image, "--model", str(image_dataset["dissm"]), "--out-points", str(tmp_path / "p.csv")],
         "--out-points: not for dissm models"),
        (["fit-image", image, "--model", str(deepssm[1]), "--out-loadings", str(tmp_path / "z.txt")],
         "end it in .csv"),
        (["describe", image, "--model", str(image_dataset["dissm"]), "--out", str(tmp_path / "d.csv")],
         "describe needs a deepssm model"),
        (["describe", image, str(tiny), "--model", str(deepssm[1]), "--out", str(tmp_path / "e.csv")],
         "tiny.nii.gz: the image is 5 x 5 x 5 mm"),
        (["train-deepssm", str(deepssm[1]), str(image_dataset["data"]), str(tmp_path / "f.pt")], "'pdm'"),
    ]
    for argv, message in cases:
        assert main(["-q", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("shapeprior: error:") and message in err and "\n" not in err, (argv, err)
    assert not list(tmp_path.glob("*.csv")) and not list(tmp_path.glob("*.json"))  # nothing half-written


def test_thin_plate_warp_keeps_an_image_when_points_stay_and_shifts_it_with_them(image_dataset):
    from shapeprior.io import read_image
    from shapeprior.train.deepssm import ImageWarper

    reference = read_image(image_dataset["images"] / "case_00.nii.gz")
    warper = ImageWarper(reference)
    k, j, i = np.meshgrid(*[np.arange(64.0)] * 3, indexing="ij")
    volume = torch.tensor(np.exp(-((i - 30) ** 2 + (j - 32) ** 2 + (k - 34) ** 2) / 40.0), dtype=torch.float32)
    rng = np.random.default_rng(0)
    source = np.asarray(reference.TransformContinuousIndexToPhysicalPoint([15.0, 13.0, 12.0])) + rng.normal(0, 8, (64, 3))
    assert torch.allclose(warper.warp(volume, source, source), volume, atol=1e-4)

    def centroid(v):
        v = v.numpy()
        return np.array([(v * axis).sum() / v.sum() for axis in (i, j, k)])

    shift = np.array([3.0, 0.0, 0.0])  # mm along the network grid's first axis (1 mm voxels, same direction)
    direction = np.array(reference.GetDirection()).reshape(3, 3)
    moved = centroid(warper.warp(volume, source, source + direction @ shift)) - centroid(volume)
    assert np.allclose(moved, shift, atol=0.3)


def test_fit_image_start_from_a_deepssm_prediction_only_refines(deepssm, image_dataset, tmp_path, capsys):
    image, report, seg = image_dataset["images"] / "case_01.nii.gz", tmp_path / "fit.json", tmp_path / "seg.nii.gz"
    assert main(["-q", "fit-image", str(image), "--model", str(image_dataset["refined"]), "--start-from",
                 str(deepssm[1]), "--report", str(report), "--out-seg", str(seg)]) == 0
    fit = json.loads(report.read_text())
    assert [s["stage"] for s in fit["stages"]] == ["start", "refine"] and fit["start_model"] == str(deepssm[1])
    # The start places the model's unit sphere on the predicted points: its scale is the organ's, in mm.
    assert 3.0 < np.mean(fit["stages"][0]["scale_mm_per_unit"]) < 20.0
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(seg))).sum() > 0
    assert main(["-q", "fit-image", str(image), "--model", str(image_dataset["refined"]), "--start-from",
                 str(deepssm[1]), "--stages", "shape,refine", "--report", str(report), "--overwrite"]) == 0
    assert [s["stage"] for s in json.loads(report.read_text())["stages"]] == ["start", "shape", "refine"]
    refined, dissm = str(image_dataset["refined"]), str(image_dataset["dissm"])
    for model, start, more, problem in [
        (refined, dissm, [], "needs a 'deepssm' model"),
        (str(deepssm[1]), str(deepssm[1]), [], "--start-from: not for deepssm models"),
        (refined, str(deepssm[1]), ["--stages", "translation,shape"], "--stages must be a consecutive part of"),
        (refined, str(deepssm[1]), ["--steps", "3"], "--steps: only the pose agent's stages take steps"),
    ]:
        assert main(["-q", "fit-image", str(image), "--model", model, "--start-from", start, *more,
                     "--out-seg", str(tmp_path / "no.nii.gz"), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert problem in err and err.count("\n") == 1 and not (tmp_path / "no.nii.gz").exists()


def test_refinement_averages_the_fitted_sdf_and_its_one_voxel_shifts():
    from shapeprior.models.refiner import build_refiner, refine_sdf, refine_sdf_shifted, voxel_shifts

    volume = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(4, 5, 6)
    shifted = voxel_shifts(volume)
    assert shifted.shape == (7, 4, 5, 6) and torch.equal(shifted[0], volume)
    assert torch.equal(shifted[1][:-1], volume[1:]) and torch.equal(shifted[1][-1], volume[-1])  # axis 0, one way
    assert torch.equal(shifted[6][:, :, 1:], volume[:, :, :-1]) and torch.equal(shifted[6][:, :, 0], volume[:, :, 0])
    torch.manual_seed(0)
    net, image, sdf = build_refiner().eval(), torch.randn(8, 8, 8), torch.randn(8, 8, 8) * 4
    with torch.no_grad():
        each = torch.stack([refine_sdf(net, image[None], s[None])[0] for s in voxel_shifts(sdf)])
        assert torch.allclose(refine_sdf_shifted(net, image, sdf), each.mean(0), atol=1e-5)


def test_benchmark_times_the_whole_command(deepssm, image_dataset):
    from shapeprior.bench.shape_model import command_seconds

    times = command_seconds(str(deepssm[1]), [str(image_dataset["images"] / "case_02.nii.gz")])
    assert len(times) == 1 and 0.5 < times[0] < 120  # a real process: interpreter, imports, model, fit, write


def test_the_mask_offset_is_the_validation_optimum_and_grows_the_surface(deepssm, image_dataset):
    """train-deepssm calibrates how far outward the shape model's surfaces are moved (they lie inside the
    masks' boundary); the chosen offset is the candidate of best mean validation Dice."""
    from dataclasses import replace

    from shapeprior.io import read_image
    from shapeprior.models.registry import load_model
    from shapeprior.train.common import read_manifest
    from shapeprior.train.deepssm import MASK_OFFSETS_MM, calibrate_mask_offset
    from shapeprior.transform import Similarity

    _, pdm = load_model(str(deepssm[0]), "pdm")
    manifest = read_manifest(image_dataset["data"])
    held = np.array([0, 3])  # the shapes' own correspondences stand in for predictions
    offset, scores = calibrate_mask_offset(pdm, held, pdm.points(pdm.loadings[held]), manifest)
    assert list(scores) == [f"{o:.1f}" for o in MASK_OFFSETS_MM] and offset == float(max(scores, key=scores.get))
    assert "mask_offset_mm" not in pdm.metadata  # the loaded (cached) model is left as it was

    image = read_image(manifest["shapes"][pdm.names[0]]["image"])
    points = Similarity.from_dict(pdm.metadata["to_images"][0]).apply(pdm.points(pdm.loadings[0]))
    plain, grown = (sitk.GetArrayFromImage(pdm.segmentation(points, image, o)) > 0 for o in (0.0, 0.5))
    assert grown.sum() > plain.sum() and grown[plain].mean() > 0.99
    calibrated = replace(pdm, metadata={**pdm.metadata, "mask_offset_mm": 0.5})  # as a trained bundle holds it
    assert np.array_equal(sitk.GetArrayFromImage(calibrated.segmentation(points, image)) > 0, grown)
    assert calibrated.mesh(points).volume > pdm.mesh(points).volume > 0
