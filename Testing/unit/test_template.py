"""The implicit template model (ISMM / ReShapeIT): networks, bundle, training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from shapeprior.cli import main
from shapeprior.models.bundle import load_bundle
from shapeprior.models.registry import build_model
from shapeprior.models.template import (
    HyperSiren,
    Siren,
    TemplateConfig,
    TemplateModel,
    siren_bound,
)

SMALL = TemplateConfig(alpha_dim=4, beta_dim=4, template_width=16, template_layers=2, deform_width=8, deform_layers=2,
                       hyper_width=8)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_siren_starts_at_zero_with_siren_initialisation():
    torch.manual_seed(0)
    siren = Siren(3, 32, 3, 1, 30.0)
    assert siren(torch.randn(10, 3)).abs().max() == 0  # the last layer starts at zero
    first, second = siren.hidden[0].weight, siren.hidden[1].weight
    assert first.abs().max() <= 1 / 3 and second.abs().max() <= siren_bound(1, 32, 30.0)
    assert second.abs().max() > 0.8 * siren_bound(1, 32, 30.0)  # uniform over the whole range


def test_hypernetwork_starts_as_the_identity_and_batches_shapes_independently():
    torch.manual_seed(0)
    hyper = HyperSiren(3 + 4, 8, 2, 4, code_dim=4, hyper_width=8, omega=30.0)
    points, codes = torch.randn(3, 20, 7), 0.01 * torch.randn(3, 4)
    out = hyper(points, codes)
    assert out.shape == (3, 20, 4) and out.abs().max() < 1e-2  # near-identity deformation for small codes
    with torch.no_grad():
        hyper.head.weight.mul_(1000)  # make the codes matter
    batched = hyper(points, codes)
    one_by_one = torch.cat([hyper(points[i:i + 1], codes[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, one_by_one)
    assert (batched[0] - hyper(points[:1], codes[1:2])[0]).abs().max() > 1e-3  # each shape its own field


def test_hypernetwork_weights_are_laid_out_as_the_siren_uses_them():
    torch.manual_seed(1)
    hyper = HyperSiren(5, 6, 2, 4, code_dim=3, hyper_width=8, omega=30.0)
    with torch.no_grad():
        hyper.head.weight.normal_(0, 0.5)  # codes matter, weights far from their start values
    code, x = torch.randn(1, 3), torch.randn(1, 7, 5)
    flat = hyper.head(hyper.trunk(code))[0].split(hyper.sizes)
    h = x[0]
    for index, (fan_out, fan_in) in enumerate(hyper.shapes):
        h = torch.nn.functional.linear(h, flat[2 * index].view(fan_out, fan_in), flat[2 * index + 1])
        h = torch.sin(30.0 * h) if index < len(hyper.shapes) - 1 else h
    torch.testing.assert_close(hyper(x, code)[0], h)


def test_label_votes_must_reach_every_subregion(helpers):
    import SimpleITK as sitk
    from shapeprior.errors import InputError
    from shapeprior.fit.correspondence import vote_label_grid

    labels = sitk.Cast(helpers.ellipsoid_image((6.0, 5.0, 4.0), size=(16, 16, 16)) > 0, sitk.sitkUInt8)
    identity = lambda points: points / 10.0
    grid = vote_label_grid([(identity, labels)], label_count=1, size=8)
    assert set(np.unique(grid)) == {1}
    with pytest.raises(InputError, match="sub-region label"):
        vote_label_grid([(identity, labels)], label_count=2, size=8)  # no voxel is labelled 2


def test_model_sdf_is_the_template_at_the_deformed_point_plus_the_correction():
    torch.manual_seed(0)
    model = TemplateModel(SMALL)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    points, alpha, beta = torch.randn(2, 15, 3), torch.randn(2, 4), torch.randn(2, 4)
    moved, correction = model.deformation(points, alpha, beta)
    expected = model.template_sdf(points + moved) + correction
    torch.testing.assert_close(model(points, alpha, beta), expected)
    assert moved.shape == (2, 15, 3) and correction.shape == (2, 15)


def test_training_writes_a_loadable_bundle_and_lowers_the_loss(trained):
    bundle = load_bundle(trained, kind="template")
    assert bundle.kind == "template" and bundle.organ == "blob"
    training = bundle.metadata["training"]
    assert len(training["shapes"]) == 8 and len(training["held_out"]) == 2  # every 5th of 10 held out
    model = build_model(bundle)
    assert isinstance(model, TemplateModel) and not any(p.requires_grad for p in model.parameters())
    assert model.alphas.shape == (8, 4) and model.betas.shape == (8, 4) and model.template_alpha.shape == (4,)
    ckpt = torch.load(str(trained) + ".ckpt", weights_only=True)
    logged = [h["sdf"] for h in ckpt["history"]]  # window means of 50 steps
    assert len(logged) == 3 and logged[-1] < logged[0]
    assert "valid_template" in ckpt["history"][-1]  # the template has a surface by then
    # The first training shape's zero level is near its own surface samples.
    with torch.no_grad():
        sdf = model(torch.zeros(1, 1, 3), model.alphas[:1], model.betas[:1])
    assert sdf.item() < 0  # the centre of an ellipsoid organ is inside


def test_training_resumes_and_ablations_hold_their_codes_at_zero(tiny_template_args, image_dataset, trained,
                                                                  tmp_path):
    before = load_bundle(trained).tensors
    # The finished checkpoint is picked up: no step runs again and the same model is written.
    assert main(["-q", "train-template", str(image_dataset["data"]), str(trained), *tiny_template_args, "--steps",
                 "150", "--subregions", "1:right,2:left"]) == 0
    after = load_bundle(trained).tensors
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    out = tmp_path / "no-codes.pt"
    assert main(["-q", "train-template", str(image_dataset["data"]), str(out), *tiny_template_args, "--steps", "4",
                 "--codes", "none", "--no-valid-template"]) == 0
    model = build_model(load_bundle(out))
    assert model.alphas.abs().max() == 0 and model.betas.abs().max() == 0


def test_cpd_alignment_recovers_a_similarity_and_ranks_a_leak_last(helpers):
    from shapeprior.fit.mask_template import align_to_template
    from shapeprior.transform import Similarity

    rng = np.random.default_rng(0)
    template = helpers.ellipsoid_mesh((0.9, 0.6, 0.5), subdivisions=3)
    template_points = trimesh.sample.sample_surface(template, 600, seed=1)[0]
    truth = Similarity(0.04, helpers.rotation(12.0, (1.0, 2.0, -1.0)), [0.3, -0.2, 0.1])  # LPS mm -> unit
    case = truth.inverse().apply(trimesh.sample.sample_surface(template, 500, seed=2)[0])
    leak = case[rng.choice(len(case), 60)] + [0.0, 0.0, 12.0]  # a patch pushed 12 mm out of the surface
    to_unit, match = align_to_template(np.vstack([case, leak]), template_points, "case")
    assert to_unit.scale == pytest.approx(truth.scale, rel=0.05)
    error = np.linalg.norm(to_unit.apply(case) - truth.apply(case), axis=1)  # unit radius: 1
    # CPD's Gaussians (final sigma about 0.04 here; CPD iterates on 300 of the points) leave a few
    # hundredths of the unit radius.
    assert np.median(error) < 0.07 and error.max() < 0.1
    assert np.median(match[500:]) < np.quantile(match[:500], 0.1)  # the leak matches worst


def test_cpd_alignment_of_a_degenerate_surface_is_a_clear_error():
    from shapeprior.errors import InputError
    from shapeprior.fit.mask_template import align_to_template

    template = trimesh.creation.icosphere(2).vertices
    for points in (np.ones((50, 3)), np.full((50, 3), np.nan)):
        with pytest.raises(InputError, match="could not be aligned to the template"):
            align_to_template(points, template, "mask.nii.gz")


def test_refine_mask_with_a_template_model_maps_the_surface_to_the_template(image_dataset, trained, tmp_path):
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    mask = min((image_dataset["root"] / "labels").iterdir())
    out, report = tmp_path / "refined.vtk", tmp_path / "refined.json"
    assert main(["-q", "refine-mask", str(mask), "--label", "1,2", "--model", str(trained), "--out-model", str(out),
                 "--report", str(report), "--keep-share", "0.5"]) == 0
    result = json.loads(report.read_text())
    assert result["route"] == "template" and result["pose"]["kept_share"] == pytest.approx(0.5, abs=0.01)
    reader = vtk.vtkPolyDataReader()
    reader.SetFileName(str(out))
    reader.Update()
    coordinates = vtk_to_numpy(reader.GetOutput().GetPointData().GetArray("TemplateCoordinates"))
    assert coordinates.shape == (reader.GetOutput().GetNumberOfPoints(), 3)
    assert np.abs(coordinates).max() < 2.0  # in the model's unit sphere, not mm
    assert result["dice_with_mask"] > 0.8  # the fusion keeps the (clean) mask where the prior agrees


def test_template_only_options_and_kinds_are_checked(image_dataset, trained, tiny_model, tmp_path, capsys):
    mask = min((image_dataset["root"] / "labels").iterdir())
    assert main(["refine-mask", str(mask), "--label", "1,2", "--model", str(tiny_model), "--keep-share", "0.5",
                 "--report", str(tmp_path / "r.json")]) == 2
    assert "--keep-share only applies to template models" in capsys.readouterr().err
    curves = Path(__file__).parents[2] / "Resources" / "SampleData" / "liver-contours.mrk.json"
    assert main(["fit-contours", str(curves), "--model", str(trained), "--report", str(tmp_path / "r.json")]) == 2
    assert "template" in capsys.readouterr().err


def test_subregions_voted_onto_the_template_come_back_on_a_training_case(image_dataset, trained):
    import SimpleITK as sitk
    from shapeprior.fit.correspondence import transfer_labels
    from shapeprior.metrics import dice
    from shapeprior.transform import Similarity

    bundle = load_bundle(trained)
    assert bundle.metadata["subregions"] == {"1": "right", "2": "left"}
    grid = bundle.tensors["labels.grid"].numpy()
    assert grid.shape == (48, 48, 48) and set(np.unique(grid)) == {1, 2}
    model = build_model(bundle)
    manifest = json.loads((image_dataset["data"] / "manifest.json").read_text())
    name = bundle.metadata["training"]["shapes"][0]
    entry = manifest["shapes"][name]
    truth = sitk.ReadImage(entry["source"])
    to_unit = Similarity.from_dict(entry["to_unit"])

    def to_template(points):
        unit = torch.tensor(to_unit.apply(points), dtype=torch.float32)
        return model.to_template(unit, model.alphas[0], model.betas[0]).double().numpy()

    whole = sitk.Cast(truth > 0, sitk.sitkUInt8)
    labels = sitk.GetArrayFromImage(transfer_labels(whole, to_template, grid))
    expected = sitk.GetArrayFromImage(truth)
    assert ((labels > 0) == (expected > 0)).all()  # labels exactly where the segmentation is
    for value in (1, 2):
        assert dice(labels == value, expected == value) > 0.8


def test_bad_subregions_fail_before_training(tiny_template_args, image_dataset, tmp_path, capsys):
    out = tmp_path / "t.pt"
    assert main(["train-template", str(image_dataset["data"]), str(out), *tiny_template_args, "--subregions",
                 "anterior"]) == 2
    assert "--subregions: expected LABEL:NAME pairs" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "t.pt.ckpt").exists()


def test_refine_mask_writes_the_template_subregions(image_dataset, trained, tmp_path):
    import SimpleITK as sitk

    mask = min((image_dataset["root"] / "labels").iterdir())  # case_00: held out (every 5th from the first)
    seg, labels = tmp_path / "seg.nii.gz", tmp_path / "labels.seg.nrrd"
    assert main(["-q", "refine-mask", str(mask), "--label", "1,2", "--model", str(trained), "--out-seg", str(seg),
                 "--out-labels", str(labels)]) == 0
    segmentation = sitk.GetArrayFromImage(sitk.ReadImage(str(seg)))
    image = sitk.ReadImage(str(labels))
    regions = sitk.GetArrayFromImage(image)
    assert ((regions > 0) == (segmentation > 0)).all() and set(np.unique(regions)) == {0, 1, 2}
    names = {image.GetMetaData(f"Segment{i}_Name") for i in range(2)}
    assert names == {"blob right", "blob left"}


def test_out_labels_needs_a_template_model_with_subregions(tiny_template_args, image_dataset, tiny_model, tmp_path,
                                                           capsys):
    mask = min((image_dataset["root"] / "labels").iterdir())
    out = tmp_path / "labels.nii.gz"
    assert main(["refine-mask", str(mask), "--label", "1,2", "--model", str(tiny_model), "--out-labels", str(out)]) == 2
    assert "--out-labels only applies to template models" in capsys.readouterr().err
    plain = tmp_path / "plain.pt"
    assert main(["-q", "train-template", str(image_dataset["data"]), str(plain), *tiny_template_args, "--steps", "2"]) == 0
    assert main(["refine-mask", str(mask), "--label", "1,2", "--model", str(plain), "--out-labels", str(out)]) == 2
    assert "has no sub-regions to transfer" in capsys.readouterr().err
    assert not out.exists()


def test_correspond_pairs_two_refined_cases_through_the_template(image_dataset, trained, tmp_path, capsys):
    masks = sorted((image_dataset["root"] / "labels").iterdir())[:2]
    models = [tmp_path / "a.vtk", tmp_path / "b.vtk"]
    for mask, model in zip(masks, models):
        assert main(["-q", "refine-mask", str(mask), "--label", "1,2", "--model", str(trained),
                     "--out-model", str(model)]) == 0
    out = tmp_path / "pairs.csv"
    assert main(["correspond", str(models[0]), str(models[1]), "--out", str(out)]) == 0
    assert "paired with" in capsys.readouterr().out
    rows = np.loadtxt(out, delimiter=",", skiprows=1)
    a = read_mesh_points(models[0])
    assert rows.shape == (len(a), 9) and (rows[:, 0] == np.arange(len(a))).all()
    np.testing.assert_allclose(rows[:, 3:6], a, atol=1e-3)  # A's points, LPS mm
    # Self-correspondence is the identity.
    assert main(["correspond", str(models[0]), str(models[0]), "--out", str(out), "--overwrite"]) == 0
    rows = np.loadtxt(out, delimiter=",", skiprows=1)
    assert (rows[:, 0] == rows[:, 1]).all() and rows[:, 2].max() == 0


def read_mesh_points(path):
    from shapeprior.io.meshes import read_point_array

    return read_point_array(path, "TemplateCoordinates", "test")[0]


def test_correspond_refuses_surfaces_without_template_coordinates(tmp_path, helpers, capsys):
    from shapeprior.io import write_mesh

    plain = tmp_path / "plain.vtk"
    write_mesh(helpers.ellipsoid_mesh((10, 8, 6), subdivisions=2), plain)
    assert main(["correspond", str(plain), str(plain), "--out", str(tmp_path / "p.csv")]) == 2
    assert "has no point array TemplateCoordinates" in capsys.readouterr().err
    assert main(["correspond", str(plain), str(plain), "--out", str(tmp_path / "p.txt")]) == 2
    assert not (tmp_path / "p.csv").exists()


def test_benchmark_refine_runs_every_input_method_ablation_and_the_label_transfer(image_dataset, trained, tmp_path,
                                                                                   capsys):
    unet = tmp_path / "unet.pt"
    assert main(["-q", "train-unet", str(image_dataset["data"]), str(unet), "--separate-labels", "--steps", "2",
                 "--batch", "2", "--channels", "4,8"]) == 0
    out = tmp_path / "refine.json"
    assert main(["-q", "benchmark", "refine", "--data", str(image_dataset["data"]), "--unet", str(unet),
                 "--weak-unet", str(image_dataset["unet"]), "--hippocampus-model", f"DISSM={image_dataset['refined']}",
                 "--hippocampus-model", f"ReShapeIT={trained}", "--ablation", f"same={trained}", "--keep-shares", "1",
                 "--limit", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows, table = result["rows"], capsys.readouterr().out
    inputs = ["U-Net", "weak U-Net", "thick slices i", "thick slices j", "thick slices k", "leak", "hole", "cut-off"]
    assert [r["setting"] for r in rows if r["method"] == "mask"] == [f"hippocampus {i}" for i in inputs]
    for method in ("DISSM", "ReShapeIT"):
        assert len([r for r in rows if r["method"] == method]) == len(inputs)
        assert f"| hippocampus leak | **{method}** | 1 |" in table
    ablations = [r for r in rows if r.get("ablation")]
    assert [r["method"] for r in ablations] == ["same", "kept share 100%"]
    assert all(r["setting"] == "hippocampus weak U-Net" for r in ablations)
    assert result["template_parts"]["ReShapeIT"] >= 1 and all(r["prior_parts"] >= 1 for r in ablations)
    split = sum(r["prior_parts"] > 1 for r in rows if r["method"] == "ReShapeIT")  # the ablations' fits not counted
    assert (f"ReShapeIT: template {result['template_parts']['ReShapeIT']} part" in table
            and f"{split} of {len(inputs)} fits with more than one" in table)
    transfer = [r for r in rows if "label_dice" in r]
    assert [r["method"] for r in transfer] == ["mask", "ReShapeIT"]  # the U-Net's own labels, the transferred ones
    assert all(set(r["label_dice"]) == {"1", "2"} and 0 <= min(r["label_dice"].values()) <= 1 for r in transfer)
    assert "| ReShapeIT (transferred) | 1 |" in table and "| U-Net (its own labels) | 1 |" in table
    # One input alone on two cases, then merged with the first run.
    part = tmp_path / "leak.json"
    assert main(["-q", "benchmark", "refine", "--data", str(image_dataset["data"]), "--hippocampus-model",
                 f"DISSM={image_dataset['refined']}", "--inputs", "leak", "--limit", "2", "--out", str(part)]) == 0
    assert {r["setting"] for r in json.loads(part.read_text())["rows"]} == {"hippocampus leak"}
    capsys.readouterr()
    assert main(["-q", "benchmark", "refine", "--merge", str(out), "--merge", str(part)]) == 0
    merged = capsys.readouterr().out  # case_00 twice counts once, case_05 is new
    assert "| hippocampus leak | **DISSM** | 2 |" in merged and "| hippocampus leak | **ReShapeIT** | 1 |" in merged
    assert main(["-q", "benchmark", "refine", "--data", str(image_dataset["data"]), "--inputs", "leek"]) == 2
    assert "unknown input(s) leek" in capsys.readouterr().err
    # A model trained on a benchmark case is refused.
    leaky = tmp_path / "all.pt"
    assert main(["-q", "train-unet", str(image_dataset["data"]), str(leaky), "--holdout-every", "0", "--steps", "1",
                 "--batch", "1", "--channels", "4,8"]) == 0
    assert main(["-q", "benchmark", "refine", "--data", str(image_dataset["data"]), "--weak-unet", str(leaky),
                 "--hippocampus-model", f"DISSM={image_dataset['refined']}", "--limit", "1"]) == 2
    assert "was trained on benchmark cases (case_00)" in capsys.readouterr().err


def test_shipped_hippocampus_template_on_a_held_out_mask(data_dir, tmp_path):
    """The shipped template model on a held-out true mask: the refined hippocampus follows the mask and the
    transferred anterior / posterior sub-regions match the true labels (the full numbers come from
    `shapeprior benchmark refine`)."""
    import SimpleITK as sitk
    from shapeprior.io import read_mask
    from shapeprior.metrics import dice

    bundle = load_bundle("hippocampus-template", kind="template")
    assert bundle.metadata["subregions"] == {"1": "anterior", "2": "posterior"} and "labels.grid" in bundle.tensors
    case = bundle.metadata["training"]["held_out"][0]
    assert case not in bundle.metadata["training"]["shapes"]
    labels = data_dir / "hippocampus" / "labels" / f"{case}.nii.gz"
    seg, parts = tmp_path / "seg.nii.gz", tmp_path / "parts.nii.gz"
    assert main(["-q", "refine-mask", str(labels), "--label", "1,2", "--model", "hippocampus-template",
                 "--out-seg", str(seg), "--out-labels", str(parts)]) == 0
    refined = sitk.GetArrayFromImage(sitk.ReadImage(str(seg))) > 0
    assert dice(refined, sitk.GetArrayFromImage(read_mask(labels, [1, 2])) > 0) > 0.9
    transferred = sitk.GetArrayFromImage(sitk.ReadImage(str(parts)))
    for label in (1, 2):
        assert dice(transferred == label, sitk.GetArrayFromImage(read_mask(labels, [label])) > 0) > 0.85
