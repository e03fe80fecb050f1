"""Mask refinement: distance maps, sampling, CNN-like failures, the snap, both routes and the command.

The end-to-end tests refine masks made from the shipped models' own mean shapes (so they
need no data download) with a leak or a cut-off part; the quality on real held-out masks
is measured by `shapeprior benchmark refine`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import trimesh
from shapeprior.bench.image import mask_metrics
from shapeprior.bench.mask_failures import FAILURES, failure_mask
from shapeprior.bench.refine import summarise
from shapeprior.cli import main
from shapeprior.errors import InputError
from shapeprior.fit.mask_fusion import fuse_with_mask
from shapeprior.fit.refine_mask import DISTANCE_ARRAY, refine_mask
from shapeprior.geometry import icosphere
from shapeprior.io import read_mesh
from shapeprior.io.labelmaps import mesh_to_labelmap
from shapeprior.models.bundle import load_bundle
from shapeprior.models.dals import decoder_from_bundle as dals_decoder
from shapeprior.models.sdf import decoder_from_bundle, extract_mesh
from shapeprior.prep.mask_distance import (
    DistanceSampler,
    border_faces,
    boundary_points,
    prepare_mask,
    signed_distance_map,
)
from shapeprior.io.frames import index_to_physical


def _grid(size, spacing=1.0, centre=(0.0, 0.0, 0.0)) -> sitk.Image:
    reference = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    reference.SetSpacing([spacing] * 3)
    reference.SetOrigin((np.asarray(centre) - spacing * (np.asarray(size) - 1) / 2).tolist())
    return reference


@pytest.fixture(scope="module")
def hippocampus_truth() -> sitk.Image:
    """The shipped hippocampus model's mean shape under its mean pose, voxelised at 1 mm."""
    bundle = load_bundle("hippocampus")
    decoder, space = decoder_from_bundle(bundle)
    unit = extract_mesh(decoder, space.mean, resolution=48)
    rotation = np.array(bundle.metadata["agent"]["mean_rotation"])
    scale = bundle.metadata["agent"]["median_scale_mm"]
    mesh = trimesh.Trimesh(scale * unit.vertices @ rotation.T, unit.faces, process=False)
    return mesh_to_labelmap(mesh, _grid((40, 56, 40)))


def test_signed_distance_of_a_ball_and_no_boundary_at_the_image_border(helpers):
    ball = helpers.ellipsoid_image((8.0, 8.0, 8.0), size=(24, 24, 24))
    sdf = signed_distance_map(sitk.GetArrayFromImage(ball) > 0, (1.0, 1.0, 1.0))
    kji = np.stack(np.meshgrid(*[np.arange(24)] * 3, indexing="ij"), -1)
    exact = np.linalg.norm(kji - 11.5, axis=-1) - 8.0  # the ball is centred between voxels 11 and 12
    near = np.abs(exact) < 4
    assert np.abs(sdf - exact)[near].max() < 0.75
    assert sdf[0, 0, 0] > 0 and sdf.min() < 0
    # A half-space mask touching the border: the border is not boundary, so depth grows away from the cut only.
    half = np.zeros((10, 10, 10), bool)
    half[:, :, :5] = True
    sdf_half = signed_distance_map(half, (1.0, 1.0, 1.0))
    assert sdf_half[5, 5, 0] == pytest.approx(-4.5)
    assert sdf_half[5, 5, 4] == pytest.approx(-0.5) and sdf_half[5, 5, 5] == pytest.approx(0.5)
    assert border_faces(half) == ["i-", "j-", "j+", "k-", "k+"]


def test_distance_sampler_values_and_gradients_in_lps():
    reference = _grid((24, 22, 20))
    reference.SetSpacing((0.8, 1.2, 3.0))
    reference.SetDirection(np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1.0]]).ravel().tolist())
    ijk = np.stack(np.meshgrid(np.arange(24), np.arange(22), np.arange(20), indexing="ij"), -1).reshape(-1, 3)
    lps = ijk @ index_to_physical(reference)[:3, :3].T + index_to_physical(reference)[:3, 3]
    field = (lps @ np.array([2.0, 3.0, -1.0])).reshape(24, 22, 20).transpose(2, 1, 0).astype(np.float32)
    sampler = DistanceSampler(field, reference)
    points = torch.tensor(lps[[4610, 2367, 6852]] + 0.3, dtype=torch.float32, requires_grad=True)
    values, valid = sampler(points)
    values.sum().backward()
    assert valid.all()
    np.testing.assert_allclose(values.detach().numpy(), points.detach().numpy() @ np.array([2.0, 3.0, -1.0]),
                               atol=1e-3)
    np.testing.assert_allclose(points.grad.numpy(), np.tile([2.0, 3.0, -1.0], (3, 1)), atol=1e-4)
    outside, valid_outside = sampler(torch.tensor([[500.0, 0.0, 0.0]]))
    assert not valid_outside[0]


def test_prepare_mask_keeps_the_largest_part_and_refuses_empty_masks(helpers):
    array = np.zeros((20, 20, 30), np.uint8)
    array[5:15, 5:15, 2:12] = 1
    array[8:11, 8:11, 20:23] = 1
    mask = sitk.GetImageFromArray(array)
    prepared = prepare_mask(mask, "m.nii.gz")
    assert prepared.parts == 2 and sitk.GetArrayViewFromImage(prepared.mask).sum() == 1000
    assert "2 disconnected parts" in prepared.warnings[0]
    assert prepare_mask(mask, "m.nii.gz", all_parts=True).mask is not None
    assert sitk.GetArrayViewFromImage(prepare_mask(mask, all_parts=True).mask).sum() == 1027
    points = boundary_points(prepared)
    assert len(points) == 600 and points[:, 0].min() == pytest.approx(1.5)
    with pytest.raises(InputError, match="empty mask"):
        prepare_mask(sitk.GetImageFromArray(np.zeros((5, 5, 5), np.uint8)), "e.nii.gz")


@pytest.mark.parametrize("failure", FAILURES)
def test_failures_change_the_mask_reproducibly(helpers, failure):
    truth = helpers.ellipsoid_image((12.0, 8.0, 7.0), size=(32, 24, 24))
    a, b = failure_mask(truth, failure, 3), failure_mask(truth, failure, 3)
    before, after = sitk.GetArrayViewFromImage(truth) > 0, sitk.GetArrayViewFromImage(a) > 0
    assert np.array_equal(after, sitk.GetArrayViewFromImage(b) > 0)
    if failure.startswith("thick slices"):
        axis = 2 - "ijk".index(failure[-1])
        last = after.shape[axis] - 1
        assert all(np.array_equal(np.take(after, k, axis), np.take(before, min((k + 2) // 4 * 4, last), axis))
                   for k in range(last + 1))
    elif failure == "leak":
        assert (after & ~before).sum() > 0.05 * before.sum() and (before & ~after).sum() == 0
    else:
        assert (before & ~after).sum() > 0.02 * before.sum() and (after & ~before).sum() == 0


def test_fusion_follows_the_mask_where_it_agrees_and_the_prior_where_it_does_not(helpers):
    ball = helpers.ellipsoid_image((11.0, 11.0, 11.0), size=(32, 32, 32))
    prepared = prepare_mask(ball)
    sphere = trimesh.creation.icosphere(4, radius=10.0)
    near, near_seg = fuse_with_mask(sphere, prepared, tau_mm=3.0, smoothing_voxels=0.0)
    far, far_seg = fuse_with_mask(sphere, prepared, tau_mm=0.2, smoothing_voxels=0.0)
    assert np.median(np.linalg.norm(near.vertices, axis=1)) == pytest.approx(11.0, abs=0.3)
    assert np.median(np.linalg.norm(far.vertices, axis=1)) == pytest.approx(10.0, abs=0.2)
    assert mask_metrics(near_seg, ball)["dice"] > 0.97 > mask_metrics(far_seg, ball)["dice"]
    # A prior reaching beyond the image is kept there: the surface leaves the 32 mm box.
    big = trimesh.creation.icosphere(4, radius=20.0)
    beyond, _ = fuse_with_mask(big, prepared, tau_mm=0.2, smoothing_voxels=0.5)
    assert np.abs(beyond.vertices).max() > 19.0


def test_implicit_route_removes_a_leak(hippocampus_truth, one_torch_thread):
    leaky = failure_mask(hippocampus_truth, "leak", 1)
    refined = refine_mask(leaky, "hippocampus", "leaky.nii.gz")
    before, after = mask_metrics(leaky, hippocampus_truth), mask_metrics(refined.labelmap, hippocampus_truth)
    assert after["dice"] > before["dice"] + 0.03 and after["hd95_mm"] < before["hd95_mm"] / 2
    assert refined.report["route"] == "dissm" and refined.report["removed_ml"] > 0
    assert len(refined.vertex_data[DISTANCE_ARRAY]) == len(refined.mesh.vertices)
    assert refined.report["distance_to_mask_boundary_mm"]["max_abs"] > 2.0  # the leak's rim is reported
    (region, *_) = refined.report["distance_to_mask_boundary_mm"]["regions"]
    assert region["mean_distance_mm"] < 0 and "leaks" in region["reading"] and region["area_mm2"] > 5


def test_dals_route_completes_a_partial_liver_at_the_border(one_torch_thread):
    bundle = load_bundle("liver")
    decoder, latent = dals_decoder(bundle)
    template, faces = icosphere(4)
    with torch.no_grad():
        unit = decoder(template, latent[None])[0].double().numpy()
    scale = bundle.metadata["normalisation"]["mm_per_unit_median"]
    mesh = trimesh.Trimesh(scale * unit, faces.numpy(), process=False)
    truth = mesh_to_labelmap(mesh, _grid((96, 84, 80), spacing=3.0))
    array = sitk.GetArrayFromImage(truth)
    top = np.argwhere(array)[:, 0].max()
    partial = sitk.GetImageFromArray(array[: top - 10])  # the scan stops 30 mm below the liver's top
    partial.CopyInformation(_grid((96, 84, top - 10), spacing=3.0))
    partial.SetOrigin(truth.GetOrigin())
    refined = refine_mask(partial, "liver", "partial.nii.gz")
    assert refined.report["border_faces"] == ["k+"] and "partial organ" in refined.warnings[0]
    assert refined.report["distance_to_mask_boundary_mm"]["vertices_outside_image"] > 0
    # The prior goes on above the scan: the surface reaches well beyond the last slice.
    last_slice_z = partial.TransformIndexToPhysicalPoint((0, 0, partial.GetSize()[2] - 1))[2]
    assert refined.mesh.vertices[:, 2].max() > last_slice_z + 15.0
    assert mask_metrics(refined.labelmap, partial)["dice"] > 0.9
    # Where the prior completed the organ beyond the scan, it is less sure than where the mask shows it.
    uncertainty = refined.vertex_data["Uncertainty_mm"]
    beyond = refined.mesh.vertices[:, 2] > last_slice_z + 5.0
    assert uncertainty.shape == (len(refined.mesh.vertices),)
    assert np.median(uncertainty[beyond]) > 2 * np.median(uncertainty[~beyond])


def test_refine_mask_command_writes_everything_and_fails_cleanly(hippocampus_truth, tmp_path, one_torch_thread):
    labels = sitk.Cast(failure_mask(hippocampus_truth, "leak", 1), sitk.sitkUInt8) * 3
    mask_path = tmp_path / "mask.nii.gz"
    sitk.WriteImage(labels, str(mask_path))
    out = tmp_path / "out"
    args = ["-q", "refine-mask", str(mask_path), "--model", "hippocampus", "--label", "3",
            "--out-model", str(out / "h.vtk"), "--out-seg", str(out / "h.seg.nrrd"), "--report", str(out / "h.json")]
    assert main(args) == 0
    report = json.loads((out / "h.json").read_text())
    assert report["organ"] == "hippocampus" and report["frame"] == "LPS mm"
    seg = sitk.ReadImage(str(out / "h.seg.nrrd"))
    assert seg.GetSize() == labels.GetSize() and sitk.GetArrayViewFromImage(seg).sum() > 0
    import vtk

    reader = vtk.vtkPolyDataReader()
    reader.SetFileName(str(out / "h.vtk"))
    reader.Update()
    assert reader.GetOutput().GetPointData().GetArray(DISTANCE_ARRAY) is not None
    assert len(read_mesh(out / "h.vtk").vertices) == reader.GetOutput().GetNumberOfPoints()
    assert main(args) == 2  # outputs exist, no --overwrite

    empty = tmp_path / "empty.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkUInt8), str(empty))
    for bad, model in [(empty, "hippocampus"), (mask_path, str(tmp_path / "missing.pt"))]:
        target = tmp_path / "bad"
        assert main(["-q", "refine-mask", str(bad), "--model", model, "--out-seg", str(target / "s.nii.gz")]) == 2
        assert not target.exists()


def test_refining_on_the_image_follows_it_where_the_mask_is_wrong(data_dir, tmp_path, capsys, one_torch_thread):
    """A held-out hippocampus whose mask lost a voxel all round (an under-segmenting CNN): the mask alone
    cannot show what is missing, the image can. Bad images fail cleanly."""
    from shapeprior.io import read_image, read_mask

    case = load_bundle("hippocampus").metadata["sdf_training"]["held_out"][0]
    image_path = data_dir / "hippocampus" / "images" / f"{case}.nii.gz"
    truth = read_mask(data_dir / "hippocampus" / "labels" / f"{case}.nii.gz", [1, 2])
    eroded = sitk.BinaryErode(truth, [1, 1, 1])
    mask_only = mask_metrics(refine_mask(eroded, "hippocampus", "eroded").labelmap, truth)["dice"]
    on_image = refine_mask(eroded, "hippocampus", "eroded", image=read_image(image_path), image_source="scan")
    assert mask_metrics(eroded, truth)["dice"] < 0.6 and mask_only < 0.65  # measured 0.57, 0.60
    assert mask_metrics(on_image.labelmap, truth)["dice"] > 0.8  # measured 0.85
    assert on_image.report["image"] == "scan" and on_image.report["trust_mm"] == pytest.approx(0.5)
    # A scan larger than a crop, stored with other axes: cut around the mask, resampled into the grids' axes.
    head = sitk.PermuteAxes(sitk.MirrorPad(read_image(image_path), [30, 20, 10], [10, 25, 30]), [2, 0, 1])
    assert mask_metrics(refine_mask(eroded, "hippocampus", "eroded", image=head).labelmap, truth)["dice"] > 0.8

    with pytest.raises(InputError, match="only a DISSM model"):
        refine_mask(eroded, "liver", "eroded", image=read_image(image_path))
    far = read_image(image_path)
    far.SetOrigin([v + 500.0 for v in far.GetOrigin()])
    far_path, mask_path, out = tmp_path / "far.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "out"
    sitk.WriteImage(far, str(far_path))
    sitk.WriteImage(eroded, str(mask_path))
    capsys.readouterr()
    assert main(["-q", "refine-mask", str(mask_path), "--model", "hippocampus", "--image", str(far_path),
                 "--out-seg", str(out / "s.nii.gz")]) == 2
    assert capsys.readouterr().err.strip() == f"shapeprior: error: {far_path}: does not cover the mask (another scan, " \
                                              "or another frame?)"
    assert not out.exists()


def test_thick_slices_are_detected_and_interpolated(helpers):
    truth = helpers.ellipsoid_image((14.0, 9.0, 16.0), size=(32, 24, 40), axes=helpers.rotation(30.0))
    for axis in "ij":
        assert prepare_mask(failure_mask(truth, f"thick slices {axis}", 0)).repeated_slices == (axis, 4)
    thick = failure_mask(truth, "thick slices k", 0)
    prepared = prepare_mask(thick, "thick.nii.gz")
    assert prepared.repeated_slices == ("k", 4) and "interpolating" in prepared.warnings[-1]
    assert prepare_mask(truth).repeated_slices is None
    interpolated = sitk.GetImageFromArray((prepared.sdf_mm < 0).astype(np.uint8))
    interpolated.CopyInformation(truth)
    assert mask_metrics(interpolated, truth)["dice"] > mask_metrics(thick, truth)["dice"] + 0.01


def test_a_mask_far_from_the_model_size_warns_and_is_still_fitted(helpers, one_torch_thread):
    big = helpers.ellipsoid_image((45.0, 30.0, 25.0), spacing=(2.0, 2.0, 2.0))  # a hippocampus is ~ 40 x 20 x 15 mm
    refined = refine_mask(big, "hippocampus", "big.nii.gz")
    assert any("typical hippocampus size" in w for w in refined.warnings)
    assert refined.report["warnings"] == refined.warnings and len(refined.mesh.faces) > 0


def test_benchmark_summary_medians_and_per_case_counts():
    def row(case, method, dice, hd95, surface, chamfer, seconds=None):
        return {"setting": "toy", "case": case, "method": method, "seconds": seconds, "dice": dice,
                "hd95_mm": hd95, "assd_mm": hd95 / 2, "hd95_surface_mm": surface, "assd_surface_mm": surface / 2,
                "chamfer_normalised": chamfer, "prior_parts": 1}

    rows = [row("a", "mask", 0.80, 2.0, 1.9, 0.004), row("a", "refined", 0.90, 1.0, 1.2, 0.002, 3.0),
            row("b", "mask", 0.85, 1.41, 1.5, 0.003), row("b", "refined", 0.84, 1.41, 1.6, 0.003, 5.0),
            row("c", "mask", 0.70, 3.0, 3.0, 0.010), row("c", "refined", 0.75, 2.0, 4e-14, 0.001, 4.0)]
    lines = summarise({"rows": rows, "peak_rss_mb": 100.0}).splitlines()
    # Medians: Dice 0.84, HD95 1.41, surface HD95 1.2 (mask 1.9: -37%), surface ASSD 0.6, CD 0.002
    # (mask 0.004: -50%); time 4 s; the mask's own row has no change and no time.
    assert "| toy | mask | 3 | 0.800 | 2 | 1.9 | 0.95 | 4 |  |  |" in lines
    assert "| toy | **refined** | 3 | 0.840 | 1.41 | 1.2 | 0.6 | 2 | -50% / -37% | 4.0 |" in lines
    # HD95 lower in a and c, higher in none; surface HD95 lower in a and c, higher in b;
    # Dice higher in a and c, lower in b; worst Dice 0.75 after vs 0.70 before; slowest 5 s.
    assert "| toy | refined | 2 / 0 | 2 / 1 | 2 / 1 | 0.750 vs 0.700 | 5.0 |" in lines
    assert not any(line.startswith("Template models") for line in lines)  # no template_parts (older files)
    # Parts: only the hippocampus rows of a template model count (a liver model may share its name).
    split = [{**r, "setting": f"hippocampus {r['setting']}", "prior_parts": 1 + (r["case"] == "c")} for r in rows]
    liver = [{**r, "setting": "liver toy", "prior_parts": 3} for r in rows]
    lines = summarise({"rows": split + liver, "peak_rss_mb": 1.0, "template_parts": {"refined": 1, "other": 2}})
    assert "Template models (connected parts, decoded at 64^3): refined: template 1 part, 1 of 3 fits" in lines
    assert "other:" not in lines  # a model with no rows of its own (an ablation) is left out
