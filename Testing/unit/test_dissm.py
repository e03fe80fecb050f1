"""DISSM: implicit decoder, PCA space, meshing, agent grid, pose state, and the image commands end to end.

The end-to-end tests train tiny models on a synthetic dataset of ellipsoid images
(a few steps) so they exercise every file and option, not the trained quality; the
shipped model's quality is measured by `shapeprior benchmark image`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from shapeprior.cli import main
from shapeprior.io import read_mesh
from shapeprior.io.labelmaps import mesh_to_labelmap
from shapeprior.models.pose_agent import (
    PoseAgent, PoseState, apply_correction, build_canonical_sdf, render_state,
)
from shapeprior.models.sdf import SDFConfig, SDFDecoder, ShapeSpace, evaluate_grid, extract_mesh
from shapeprior.prep.crops import GridSpec, agent_input, centred_grid, grid_points
from shapeprior.prep.dataset import split_names


class SphereSDF(nn.Module):
    """f(u, z) = |u - z[:3]| - (0.5 + z[3]): an analytic stand-in for a trained decoder."""

    def forward(self, points, latent):
        if latent.dim() == points.dim() - 1:
            latent = latent.unsqueeze(-2).expand(*points.shape[:-1], latent.shape[-1])
        return (points - latent[..., :3]).norm(dim=-1) - (0.5 + latent[..., 3])


def test_sdf_decoder_shapes_and_skip_layer():
    torch.manual_seed(0)
    decoder = SDFDecoder(SDFConfig(latent_dim=8, width=32, layers=4, skip_layer=2, dropout=0.0))
    assert decoder.hidden[1].weight.shape == (32 - 11, 32)  # shrinks so the skip concat is 32 wide
    points, latent = torch.randn(2, 50, 3), torch.randn(2, 8)
    out = decoder(points, latent)
    assert out.shape == (2, 50)
    per_point = decoder(points, latent[:, None].expand(2, 50, 8))
    assert torch.allclose(out, per_point, atol=1e-6)
    state = decoder.state_dict()
    again = SDFDecoder(decoder.config)
    again.load_state_dict(state)
    assert torch.allclose(again(points, latent), out)


def test_shape_space_keeps_requested_variance_and_whitens():
    g = torch.Generator().manual_seed(0)
    directions = torch.linalg.qr(torch.randn(16, 16, generator=g))[0][:, :4].T  # 4 orthonormal rows
    latents = (torch.randn(200, 4, generator=g) * torch.tensor([4.0, 2.0, 1.0, 0.1])) @ directions + 3.0
    space = ShapeSpace.fit(latents, variance=0.9)
    assert space.basis.shape == (2, 16)  # 16/21.01 = 0.76 < 0.9 <= 20/21.01
    assert 0.9 <= space.explained < 0.999
    loadings = torch.linalg.lstsq(space.basis.T, (latents - space.mean).T).solution.T
    assert loadings.std(0) == pytest.approx(torch.ones(2), abs=0.02)  # whitened: about N(0, 1)
    full = ShapeSpace.fit(latents, variance=0.9999)
    recon = full.latent(torch.linalg.lstsq(full.basis.T, (latents - full.mean).T).solution.T)
    assert torch.allclose(recon, latents, atol=1e-3)


def test_coarse_to_fine_grid_matches_dense_evaluation_near_the_surface():
    latent = torch.tensor([0.1, -0.2, 0.05, 0.1])
    values, spacing = evaluate_grid(SphereSDF(), latent, resolution=48, radius=1.0)
    axis = torch.linspace(-1, 1, 48)
    dense = SphereSDF()(torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3), latent)
    dense = dense.reshape(48, 48, 48).numpy()
    assert spacing == pytest.approx(2 / 47)
    near = np.abs(dense) < 0.05
    assert np.allclose(values[near], dense[near], atol=1e-5)
    assert np.array_equal(values < 0, dense < 0)


def test_extract_mesh_is_closed_outward_and_accurate():
    latent = torch.tensor([0.1, -0.2, 0.05, 0.1])
    mesh = extract_mesh(SphereSDF(), latent, resolution=64, radius=1.0)
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * 0.6**3, rel=0.02)  # positive: faces point outward
    radii = np.linalg.norm(mesh.vertices - [0.1, -0.2, 0.05], axis=1)
    assert np.abs(radii - 0.6).max() < 0.01
    assert len(extract_mesh(SphereSDF(), torch.tensor([0.0, 0, 0, 2.0]), resolution=16).faces) == 0  # no surface


def test_split_names_holds_out_every_nth():
    names = [f"case_{i:03d}" for i in range(10)]
    train, held = split_names(names[::-1], 5)
    assert held == ["case_000", "case_005"]
    assert train == [n for n in names if n not in held]
    assert split_names(names, 0) == (names, [])


def test_centred_grid_geometry(helpers):
    direction = helpers.rotation(30)
    image = helpers.ellipsoid_image((8, 6, 5), spacing=(1.0, 0.8, 1.2), direction=direction, centre=(5, -3, 2))
    spec = GridSpec((10, 12, 8), 1.5)
    reference = centred_grid(image, spec)
    points = grid_points(reference)
    assert points.shape == (8, 12, 10, 3)
    centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in image.GetSize()])
    assert points.reshape(-1, 3).mean(0) == pytest.approx(centre, abs=1e-6)
    assert points[2, 3, 4] == pytest.approx(reference.TransformIndexToPhysicalPoint((4, 3, 2)))
    array, grid_mm, _ = agent_input(sitk.Cast(image, sitk.sitkFloat32) * 100.0, spec)
    assert array.shape == (8, 12, 10) and grid_mm.dtype == np.float32
    assert array.max() > array.min()


@pytest.mark.parametrize("size", [(35, 51, 35), (34, 50, 31)])
def test_fine_grid_copies_voxels_of_an_image_with_its_spacing(size, helpers):
    """No half-voxel shift: a mask goes onto the 1 mm grid and back unchanged."""
    from shapeprior.prep.crops import FINE_GRID, resample_to

    mask = helpers.ellipsoid_image((9, 14, 8), size=size, direction=np.diag([-1.0, -1.0, 1.0]))
    reference = centred_grid(mask, FINE_GRID)
    on_grid = sitk.GetImageFromArray(resample_to(mask, reference, nearest=True))
    on_grid.CopyInformation(reference)
    back = sitk.Resample(on_grid, mask, sitk.Transform(), sitk.sitkNearestNeighbor, 0, mask.GetPixelID())
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(mask))
    centre = mask.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size])
    assert np.abs(grid_points(reference).reshape(-1, 3).mean(0) - centre).max() <= 0.5  # off centre by <= half a voxel


def test_pose_state_round_trip_and_zero_correction_is_identity(helpers):
    rot = torch.tensor(helpers.rotation(25), dtype=torch.float32)[None]
    state = PoseState(torch.tensor([[5.0, -2.0, 1.0]]), torch.tensor([[20.0, 22.0, 25.0]]), rot, torch.zeros(1, 3))
    points = torch.randn(1, 30, 3)
    assert torch.allclose(state.to_unit(state.from_unit(points)), points, atol=1e-5)
    assert state.mm_per_unit() == pytest.approx((20 * 22 * 25) ** (1 / 3))
    same, penalty = apply_correction(state, torch.zeros(1, 15), "shape", median_scale=22.0)
    for a, b in zip((same.translation, same.scale, same.rotation), (state.translation, state.scale, state.rotation)):
        assert torch.allclose(a, b, atol=1e-6)
    assert penalty.item() == 0.0


def test_stages_only_move_their_parameters_and_scale_is_clipped():
    state = PoseState(torch.zeros(1, 3), torch.full((1, 3), 22.0), torch.eye(3)[None], torch.zeros(1, 2))
    output = torch.ones(1, 14)
    moved, _ = apply_correction(state, output, "translation", 22.0)
    assert torch.allclose(moved.translation, torch.full((1, 3), 4.0))
    assert torch.equal(moved.scale, state.scale) and torch.equal(moved.rotation, state.rotation)
    moved, _ = apply_correction(state, output, "rotation", 22.0)
    assert not torch.allclose(moved.rotation, state.rotation)
    assert torch.allclose(moved.rotation @ moved.rotation.transpose(1, 2), torch.eye(3), atol=1e-5)
    assert torch.equal(moved.loadings, state.loadings)
    moved, _ = apply_correction(state, output, "shape", 22.0)
    assert torch.equal(moved.loadings, torch.ones(1, 2))
    big = torch.zeros(1, 14)
    big[0, 3:6] = 20.0  # log-scale +2: exp(2) > 2x the median
    clipped, penalty = apply_correction(state, big, "scale", 22.0)
    assert torch.allclose(clipped.scale, torch.full((1, 3), 44.0))
    assert penalty.item() == pytest.approx(3 * (2 - np.log(2)) ** 2, rel=1e-4)


def test_canonical_sdf_renders_a_posed_sphere_in_mm(helpers):
    decoder, mean = SphereSDF(), torch.tensor([0.0, 0.0, 0.0, 0.0])
    basis = torch.tensor([[0.0, 0.0, 0.0, 0.1], [0.1, 0.0, 0.0, 0.0]])  # radius, then x shift
    canonical = build_canonical_sdf(decoder, mean, basis, resolution=41, radius=1.0)
    assert canonical.grids.shape == (3, 41, 41, 41)
    u = torch.tensor([[[0.3, 0.1, -0.2], [0.0, 0.0, 0.45], [1.6, 0.0, 0.0]]])
    expected = u.norm(dim=-1) - 0.5
    assert torch.allclose(canonical(u), expected, atol=0.01)  # linear continuation beyond the cube too
    loadings = torch.tensor([[1.0, 0.0]])  # radius 0.6
    assert torch.allclose(canonical(u[:, :2], loadings), u[:, :2].norm(dim=-1) - 0.6, atol=0.01)
    grid_mm = torch.stack(torch.meshgrid(*[torch.linspace(-15, 15, 7)] * 3, indexing="ij"), -1)[None]
    state = PoseState(torch.tensor([[2.0, -1.0, 0.5]]), torch.full((1, 3), 20.0),
                      torch.tensor(helpers.rotation(40), dtype=torch.float32)[None], torch.zeros(1, 2))
    rendered = render_state(canonical, state, grid_mm, use_loadings=False)
    analytic = (grid_mm[0] - state.translation[0]).norm(dim=-1) - 10.0  # sphere of 0.5 units * 20 mm
    inside_cube = state.to_unit(grid_mm.reshape(1, -1, 3)).abs().amax(-1).reshape(analytic.shape) <= 1.0
    assert torch.allclose(rendered[0][inside_cube], analytic[inside_cube], atol=0.3)


def test_pose_agent_starts_with_no_correction():
    agent = PoseAgent(num_loadings=3, channels=(4, 8))
    out = agent(torch.randn(2, 12, 16, 12), torch.randn(2, 12, 16, 12))
    assert out.shape == (2, 15) and torch.count_nonzero(out) == 0


# --- the commands, end to end on tiny models ---------------------------------------------------------------

def test_train_sdf_records_split_pca_and_resumes(image_dataset, capsys):

    from shapeprior.models.bundle import load_bundle

    bundle = load_bundle(image_dataset["sdf"], kind="sdf")
    training = bundle.metadata["training"]
    assert training["held_out"] == ["case_00", "case_05"]
    assert sorted(training["shapes"] + training["held_out"]) == [f"case_{i:02d}" for i in range(10)]
    assert bundle.tensors["latents"].shape == (8, 8)
    k = bundle.metadata["pca"]["components"]
    assert bundle.tensors["pca_basis"].shape == (k, 8) and bundle.metadata["pca"]["explained_variance"] >= 0.9
    # A re-run with the same settings resumes from the finished checkpoint: nothing left to do, same weights.
    before = {k: v.clone() for k, v in bundle.tensors.items()}
    assert main(["-q", "train-sdf", str(image_dataset["data"]), str(image_dataset["sdf"]), *image_dataset["sdf_args"]]) == 0
    after = load_bundle(image_dataset["sdf"], kind="sdf").tensors
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Other settings against that checkpoint: refused with one line.
    assert main(["-q", "train-sdf", str(image_dataset["data"]), str(image_dataset["sdf"]), "--steps", "31"]) == 2
    assert "other settings" in capsys.readouterr().err


def test_fit_image_writes_lps_outputs_on_the_image_grid(image_dataset, tmp_path, capsys):
    image_path = image_dataset["images"] / "case_00.nii.gz"
    out = {k: tmp_path / n for k, n in [("model", "m.vtk"), ("seg", "s.nii.gz"), ("report", "r.json")]}
    assert main(["-q", "fit-image", str(image_path), "--model", str(image_dataset["dissm"]), "--out-model",
                 str(out["model"]), "--out-seg", str(out["seg"]), "--report", str(out["report"])]) == 0
    assert "fitted blob" in capsys.readouterr().out
    report = json.loads(out["report"].read_text())
    assert [s["stage"] for s in report["stages"]] == ["translation", "scale", "rotation", "shape"]
    seg, image = sitk.ReadImage(str(out["seg"])), sitk.ReadImage(str(image_path))
    assert seg.GetSize() == image.GetSize() and seg.GetDirection() == image.GetDirection()
    assert sitk.GetArrayViewFromImage(seg).any()
    mesh = read_mesh(out["model"])
    assert "SPACE=LPS" in out["model"].read_text(errors="ignore")
    # Model (LPS mm) and segmentation (image grid) describe the same solid.
    kji = np.argwhere(sitk.GetArrayViewFromImage(seg) > 0)
    voxels_lps = np.array([seg.TransformIndexToPhysicalPoint([int(v) for v in p[::-1]]) for p in kji])
    assert mesh.volume == pytest.approx(len(kji), rel=0.2)  # 1 mm voxels
    assert np.linalg.norm(mesh.center_mass - voxels_lps.mean(0)) < 1.0
    # The refinement stage, on a model that has one: outputs stay consistent.
    assert main(["-q", "fit-image", str(image_path), "--model", str(image_dataset["refined"]), "--out-model",
                 str(out["model"]), "--out-seg", str(out["seg"]), "--report", str(out["report"]), "--overwrite"]) == 0
    report = json.loads(out["report"].read_text())
    assert [s["stage"] for s in report["stages"]][-2:] == ["shape", "refine"]
    seg, mesh = sitk.ReadImage(str(out["seg"])), read_mesh(out["model"])
    assert mesh.is_watertight and mesh.volume > 0
    assert len(mesh.split(only_watertight=False)) == 1  # one piece, even from a barely trained refiner
    voxelised = sitk.GetArrayFromImage(mesh_to_labelmap(mesh, image)) > 0  # a view would outlive its image
    assert np.array_equal(voxelised, sitk.GetArrayViewFromImage(seg) > 0)
    # --stages stops early: one record.
    assert main(["-q", "fit-image", str(image_path), "--model", str(image_dataset["dissm"]), "--stages",
                 "translation", "--report", str(tmp_path / "t.json")]) == 0
    assert [s["stage"] for s in json.loads((tmp_path / "t.json").read_text())["stages"]] == ["translation"]


def test_benchmark_image_scores_every_stage_and_the_unet(image_dataset, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["-q", "benchmark", "image", "--data", str(image_dataset["data"]), "--model",
                 str(image_dataset["refined"]), "--unet", str(image_dataset["unet"]), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    for method in ("DISSM +translation", "DISSM +scale", "DISSM +rotation", "DISSM +shape", "DISSM +refine",
                   "3D U-Net"):
        assert f"| {method} |" in table
    rows = json.loads(out.read_text())["rows"]
    assert {r["case"] for r in rows} == {"case_00", "case_05"}
    assert all(0.0 <= r["dice"] <= 1.0 for r in rows)


def test_unet_with_separate_labels_on_few_cases(image_dataset, tmp_path):
    from shapeprior.io import read_image
    from shapeprior.models.registry import load_model
    from shapeprior.models.unet import segment

    out = tmp_path / "labels.pt"
    assert main(["-q", "train-unet", str(image_dataset["data"]), str(out), "--separate-labels", "--train-cases",
                 "3", "--steps", "20", "--batch", "2", "--channels", "4,8"]) == 0
    bundle, net = load_model(out, kind="unet")
    assert bundle.metadata["config"]["classes"] == 2 and len(bundle.metadata["training"]["shapes"]) == 3
    classes = sitk.GetArrayFromImage(segment(net, read_image(image_dataset["images"] / "case_01.nii.gz")))
    assert set(np.unique(classes)) <= {0, 1, 2}
    assert net(torch.zeros(1, 1, 16, 16, 16)).shape[1] == 3  # background + two labels


@pytest.mark.parametrize("problem", ["2d", "nan", "dals-model", "stage"])
def test_fit_image_bad_input_exit_2_no_output(problem, image_dataset, tiny_model, tmp_path, capsys):
    image_path = image_dataset["images"] / "case_01.nii.gz"
    model = image_dataset["dissm"]
    args = []
    if problem == "2d":
        image_path = tmp_path / "flat.nii.gz"
        sitk.WriteImage(sitk.Image(10, 10, sitk.sitkFloat32), str(image_path))
    elif problem == "nan":
        image = sitk.ReadImage(str(image_dataset["images"] / "case_01.nii.gz"))
        array = sitk.GetArrayFromImage(image)
        array[3, 3, 3] = np.nan
        bad = sitk.GetImageFromArray(array)
        bad.CopyInformation(image)
        image_path = tmp_path / "nan.nrrd"  # NIfTI writing turns NaN into 0
        sitk.WriteImage(bad, str(image_path))
    elif problem == "dals-model":
        model = tiny_model
    else:
        args = ["--stages", "translation,rotation"]
    seg = tmp_path / "seg.nii.gz"
    assert main(["-q", "fit-image", str(image_path), "--model", str(model), "--out-seg", str(seg), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shapeprior: error: ")
    assert not seg.exists()


def test_fit_image_warns_about_an_unusual_intensity_range_and_still_fits(image_dataset, tmp_path, capsys):
    image = sitk.ReadImage(str(image_dataset["images"] / "case_01.nii.gz"))
    scaled = tmp_path / "ct-like.nii.gz"
    sitk.WriteImage(image * 1000.0, str(scaled))
    assert main(["-q", "fit-image", str(scaled), "--model", str(image_dataset["dissm"]), "--out-seg",
                 str(tmp_path / "s.nii.gz")]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "intensity" in err
    assert (tmp_path / "s.nii.gz").is_file()


def test_bundle_half_precision_storage(tmp_path):
    from shapeprior.models.bundle import load_bundle, save_bundle

    tensors = {"agent.w": torch.randn(4, 4), "decoder.w": torch.randn(4), "index": torch.arange(3)}
    path = tmp_path / "m.pt"
    save_bundle(path, "dissm", {"organ": "x"}, tensors, half_precision=("agent.",))
    bundle = load_bundle(path, kind="dissm")
    assert bundle.tensors["agent.w"].dtype == torch.float16 and bundle.metadata["float16"] == ["agent."]
    assert bundle.tensors["decoder.w"].dtype == torch.float32 and bundle.tensors["index"].dtype == torch.int64
    assert torch.allclose(bundle.tensors["agent.w"].float(), tensors["agent.w"], rtol=1e-3, atol=1e-3)
    agent = PoseAgent(2, channels=(4, 8))
    half = {k: v.half() if v.is_floating_point() else v for k, v in agent.state_dict().items()}
    again = PoseAgent(2, channels=(4, 8))
    again.load_state_dict(half)  # loaders cast float16 back into the float32 parameters
    assert all(p.dtype == torch.float32 for p in again.parameters())


def test_shipped_hippocampus_model_on_a_held_out_image(data_dir, tmp_path):
    """The shipped model on one of its held-out images: a plausible whole hippocampus (the full
    numbers come from `shapeprior benchmark image`)."""
    from shapeprior.bench.image import mask_metrics
    from shapeprior.io import read_mask
    from shapeprior.models.bundle import load_bundle

    bundle = load_bundle("hippocampus", kind="dissm")
    case = bundle.metadata["sdf_training"]["held_out"][0]
    assert case not in bundle.metadata["sdf_training"]["shapes"]
    image = data_dir / "hippocampus" / "images" / f"{case}.nii.gz"
    seg = tmp_path / "seg.nii.gz"
    assert main(["-q", "fit-image", str(image), "--out-seg", str(seg)]) == 0
    truth = read_mask(data_dir / "hippocampus" / "labels" / f"{case}.nii.gz", [1, 2])
    metrics = mask_metrics(sitk.ReadImage(str(seg)), truth)
    assert metrics["dice"] > 0.8 and metrics["hd95_mm"] < 3.0


def test_refine_mask_uses_the_image_only_with_a_refiner(image_dataset, tmp_path):
    """`refine-mask --image`: a DISSM model with a refiner refines on it; one without keeps it for the scene."""
    mask, image = image_dataset["root"] / "labels" / "case_03.nii.gz", image_dataset["images"] / "case_03.nii.gz"
    for model, used in (("dissm", None), ("refined", str(image))):
        report = tmp_path / f"{model}.json"
        assert main(["-q", "refine-mask", str(mask), "--label", "1,2", "--model", str(image_dataset[model]),
                     "--image", str(image), "--report", str(report)]) == 0
        assert json.loads(report.read_text())["image"] == used


def test_a_scan_stored_with_other_axes_fits_the_same(data_dir):
    """The networks' grids keep the training crops' axes: the same held-out scan stored as a DICOM series
    would be (i -> left, j -> posterior) gives the same hippocampus (before, DISSM found none)."""
    from shapeprior.bench.image import mask_metrics
    from shapeprior.fit.image_fit import fit_image
    from shapeprior.io import read_image, read_mask
    from shapeprior.models.bundle import load_bundle
    from shapeprior.prep.crops import GRID_DIRECTION, FINE_GRID, centred_grid

    case = load_bundle("hippocampus", kind="dissm").metadata["sdf_training"]["held_out"][0]
    image = read_image(data_dir / "hippocampus" / "images" / f"{case}.nii.gz")
    truth = read_mask(data_dir / "hippocampus" / "labels" / f"{case}.nii.gz", [1, 2])
    reoriented = sitk.DICOMOrient(image, "LPS")
    assert reoriented.GetDirection() != image.GetDirection()
    grids = [centred_grid(i, FINE_GRID) for i in (image, reoriented)]
    assert all(np.allclose(np.reshape(g.GetDirection(), (3, 3)), GRID_DIRECTION) for g in grids)
    centres = [g.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in g.GetSize()]) for g in grids]
    assert np.allclose(centres[0], centres[1], atol=0.51)  # the original's grid snaps to its voxels
    fits = [sitk.Resample(fit_image(i).labelmap, truth, sitk.Transform(), sitk.sitkNearestNeighbor)
            for i in (image, reoriented)]
    assert mask_metrics(fits[1], truth)["dice"] > 0.85  # measured 0.887 (the original: 0.891)
    assert mask_metrics(fits[1], fits[0])["dice"] > 0.95


def test_train_pose_rerun_resumes_from_its_checkpoint(image_dataset, tmp_path, capsys):
    """A finished run's checkpoint holds every stage: the same command again rewrites the same agents."""
    from shapeprior.models.bundle import load_bundle

    out = tmp_path / "again.pt"
    args = ["-q", "train-pose", str(image_dataset["sdf"]), str(image_dataset["data"]), str(out), "--steps", "2,2,2,2",
            "--batch", "2", "--fit-steps", "2"]
    assert main(args) == 0
    first = load_bundle(out, kind="dissm").tensors
    out.unlink()
    assert main(args) == 0
    second = load_bundle(out, kind="dissm").tensors
    assert all(torch.equal(first[k], second[k]) for k in first if k.startswith("agent."))
    assert main([*args[:-4], "--batch", "3", "--fit-steps", "2"]) == 2  # other settings: refused
    assert "other settings" in capsys.readouterr().err
