"""The module's Logic (ShapePriorSegmentLib) over a real MRML scene, outside Slicer."""

import sys
from pathlib import Path

import pytest

pytest.importorskip("slicer_core")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ShapePriorSegment"))

from ShapePriorSegmentLib import ShapePriorSegmentLogic  # noqa: E402
from shapeprior.fit.dals_fit import FitSettings  # noqa: E402
from shapeprior.mrml.scene import new_scene, nodes_by_class  # noqa: E402

FAST = FitSettings(level=2, global_steps=3, vertex_steps=2, vertex_modes=4)


def test_logic_fits_the_sample_contours_into_the_scene(tiny_model):
    scene = new_scene()
    logic = ShapePriorSegmentLogic(scene)
    curves = logic.loadSampleContours()
    assert len(curves) == 3 and all(c.GetNumberOfControlPoints() > 10 for c in curves)
    result = logic.process(curves, model=str(tiny_model), settings=FAST)
    model = scene.GetNodeByID(result["model_node_id"])
    segmentation = scene.GetNodeByID(result["segmentation_node_id"])
    assert model.GetPolyData().GetNumberOfPoints() == 162  # level-2 icosphere
    assert segmentation.GetSegmentation().GetSegment(result["segment_id"]) is not None
    assert [r["curve"] for r in result["report"]["residuals"]] == [1, 2, 3]
    assert len(nodes_by_class(scene, "vtkMRMLModelNode")) == 1


def test_logic_finish_of_a_cancelled_job_adds_nothing(tiny_model):
    scene = new_scene()
    logic = ShapePriorSegmentLogic(scene)
    annotation = logic.readAnnotation("curves", logic.loadSampleContours())
    job = logic.startFit(annotation, str(tiny_model), FitSettings(level=3, global_steps=2000, vertex_steps=0))
    job.cancel()
    assert logic.finishFit(job) is None
    assert nodes_by_class(scene, "vtkMRMLModelNode") == []


def test_logic_reports_dependencies_and_models():
    assert ShapePriorSegmentLogic.missingDependencies() == []
    assert "liver" in ShapePriorSegmentLogic.shippedModels()


def test_cli_out_scene_reloads_with_the_fitted_geometry(tiny_model, tmp_path):
    import numpy as np
    from vtk.util import numpy_support

    from shapeprior.cli import main
    from shapeprior.io import read_mesh
    from shapeprior.mrml.scene import read_scene_bundle

    sample = Path(__file__).resolve().parents[2] / "Resources" / "SampleData"
    out = tmp_path / "result.mrb"
    code = main(["-q", "fit-contours", str(sample / "liver-contours.mrk.json"), "--model", str(tiny_model),
                 "--level", "2", "--global-steps", "3", "--vertex-steps", "2", "--reference",
                 str(sample / "liver-painted.nii.gz"), "--out-model", str(tmp_path / "m.vtk"), "--out-scene", str(out)])
    assert code == 0 and out.is_file()
    scene = read_scene_bundle(out)
    assert len(nodes_by_class(scene, "vtkMRMLMarkupsClosedCurveNode")) == 3
    assert len(nodes_by_class(scene, "vtkMRMLScalarVolumeNode")) == 1
    assert len(nodes_by_class(scene, "vtkMRMLSegmentationNode")) == 1
    (model,) = nodes_by_class(scene, "vtkMRMLModelNode")
    ras = numpy_support.vtk_to_numpy(model.GetPolyData().GetPoints().GetData())
    lps = read_mesh(tmp_path / "m.vtk").vertices
    assert np.allclose(ras * [-1, -1, 1], lps, atol=1e-3)  # the scene holds RAS, the file LPS


def test_logic_fits_an_image_volume_with_a_dissm_model(image_dataset):
    import SimpleITK as sitk

    from shapeprior.mrml import add_volume_node

    scene = new_scene()
    logic = ShapePriorSegmentLogic(scene)
    volume = scene.GetNodeByID(add_volume_node(scene, sitk.ReadImage(str(image_dataset["images"] / "case_04.nii.gz"))))
    out = logic.processImage(volume, str(image_dataset["dissm"]))
    assert [s["stage"] for s in out["report"]["stages"]] == ["translation", "scale", "rotation", "shape"]
    assert len(nodes_by_class(scene, "vtkMRMLModelNode")) == 1
    segmentation = scene.GetNodeByID(out["segmentation_node_id"])
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1


def test_fit_image_out_scene_holds_the_image_model_and_segmentation(image_dataset, tmp_path):
    import numpy as np
    from vtk.util import numpy_support

    from shapeprior.cli import main
    from shapeprior.io import read_mesh
    from shapeprior.mrml.scene import read_scene_bundle

    out = tmp_path / "result.mrb"
    assert main(["-q", "fit-image", str(image_dataset["images"] / "case_02.nii.gz"), "--model",
                 str(image_dataset["refined"]), "--out-model", str(tmp_path / "m.vtk"), "--out-scene", str(out)]) == 0
    scene = read_scene_bundle(out)
    assert len(nodes_by_class(scene, "vtkMRMLScalarVolumeNode")) == 1
    assert len(nodes_by_class(scene, "vtkMRMLSegmentationNode")) == 1
    (model,) = nodes_by_class(scene, "vtkMRMLModelNode")
    ras = numpy_support.vtk_to_numpy(model.GetPolyData().GetPoints().GetData())
    assert np.allclose(ras * [-1, -1, 1], read_mesh(tmp_path / "m.vtk").vertices, atol=1e-3)


def test_logic_image_fit_in_the_background_and_its_cancel(image_dataset):
    import SimpleITK as sitk

    from shapeprior.mrml import add_volume_node

    scene = new_scene()
    logic = ShapePriorSegmentLogic(scene)
    volume = scene.GetNodeByID(add_volume_node(scene, sitk.ReadImage(str(image_dataset["images"] / "case_06.nii.gz"))))
    job = logic.startImageFit(volume, str(image_dataset["refined"]))
    out = logic.finishFit(job)
    assert job.done and job.progress[0] == 1.0
    assert [s["stage"] for s in out["report"]["stages"]][-1] == "refine"
    assert len(nodes_by_class(scene, "vtkMRMLModelNode")) == 1

    # Cancelled before its first step (the panel's Cancel): nothing is added.
    from shapeprior.mrml import image_fit_job, read_volume_image

    before = scene.GetNumberOfNodes()
    job = image_fit_job(read_volume_image(scene, volume.GetID()), "T1", str(image_dataset["refined"]),
                      volume_node_id=volume.GetID())
    job.cancel()
    assert logic.finishFit(job.start()) is None
    assert job.cancelled and scene.GetNumberOfNodes() == before


def test_logic_refines_a_cnn_mask_in_the_background_and_its_cancel(image_dataset):
    import SimpleITK as sitk

    from shapeprior.io import read_mask
    from shapeprior.mrml import mask_refine_job, add_labelmap_node

    scene = new_scene()
    logic = ShapePriorSegmentLogic(scene)
    mask = read_mask(image_dataset["root"] / "labels" / "case_04.nii.gz", [1, 2])
    node = scene.GetNodeByID(add_labelmap_node(scene, mask, "cnn blob"))
    job = logic.startMaskRefinement(node, model=str(image_dataset["dissm"]))
    out = logic.finishFit(job)
    assert job.done and job.progress[0] == 1.0
    assert out["report"]["route"] == "dissm" and out["report"]["input"] == "cnn blob"
    assert len(nodes_by_class(scene, "vtkMRMLModelNode")) == 1
    assert sitk.GetArrayViewFromImage(mask).sum() > 0

    before = scene.GetNumberOfNodes()
    job = mask_refine_job(mask, "cnn blob", str(image_dataset["dissm"]))
    job.cancel()
    assert logic.finishFit(job.start()) is None
    assert job.cancelled and scene.GetNumberOfNodes() == before


def test_logic_picks_a_model_of_the_kind_each_mode_needs(tiny_model, image_dataset, deepssm):
    logic = ShapePriorSegmentLogic(new_scene())
    assert logic.modelForMode(str(deepssm[1]), "image") == str(deepssm[1])  # DeepSSM: the fast image model
    assert logic.modelForMode(str(deepssm[1]), "curves") == "liver"
    assert logic.modelForMode(str(tiny_model), "curves") == str(tiny_model)
    assert logic.modelForMode(str(tiny_model), "image") == "hippocampus"
    assert logic.modelForMode(str(image_dataset["dissm"]), "image") == str(image_dataset["dissm"])
    assert logic.modelForMode(str(image_dataset["dissm"]), "mask") == str(image_dataset["dissm"])
    assert logic.modelForMode(str(image_dataset["unet"]), "mask") == "liver"
    assert logic.modelOrgan(str(image_dataset["dissm"])) == "blob"
    assert logic.modelForMode("/no/such/model.pt", "image") == "/no/such/model.pt"  # the fit reports it


def test_fit_settings_come_from_the_panels_parameters():
    from types import SimpleNamespace

    parameters = SimpleNamespace(level=3, globalSteps=40, vertexSteps=20, smoothness=2.5, contourBlend=0.0)
    settings = ShapePriorSegmentLogic.fitSettings(parameters)
    assert (settings.level, settings.global_steps, settings.vertex_steps) == (3, 40, 20)
    assert settings.lambda_dir == 2.5 and settings.contour_blend_mm == 0.0
    assert settings.lambda_latent == FitSettings().lambda_latent  # not on the panel: the command line's default


def test_an_image_fit_placed_by_the_bundled_deepssm_model(data_dir, image_dataset):
    """The panel's 'Place by DeepSSM first': the shipped DeepSSM model places the shipped DISSM model,
    then only the refinement runs; a model with no such partner is refused in one message."""
    from types import SimpleNamespace

    import SimpleITK as sitk

    from ShapePriorSegmentLib.fitrequest import startJob
    from shapeprior.mrml import add_volume_node

    scene = new_scene()
    logic = ShapePriorSegmentLogic(scene)
    assert logic.startModelFor("hippocampus") == "hippocampus-deepssm"
    assert logic.startModelFor("liver") is None and logic.startModelFor("hippocampus-deepssm") is None
    image = sitk.ReadImage(str(data_dir / "hippocampus" / "images" / "hippocampus_001.nii.gz"))
    volume = scene.GetNodeByID(add_volume_node(scene, image))
    p = SimpleNamespace(annotationMode="image", model="hippocampus", inputVolume=volume, outputSegmentation=None,
                        resultModel=None, resultSegmentation=None, resultSegmentName="", placeByDeepSSM=True)
    job, outputs = startJob(logic, p, dict, False, lambda *names: False)
    out = logic.finishFit(job, **outputs)
    assert [s["stage"] for s in out["report"]["stages"]] == ["start", "refine"]
    assert out["report"]["start_model"].endswith("hippocampus-deepssm/model.pt")
    assert 1.5 < out["report"]["volume_ml"] < 5.0  # a hippocampus, ml
    p.placeByDeepSSM = False  # the model's own pose agent
    assert startJob(logic, p, dict, False, lambda *names: False)[0].result(120).report["stages"][0]["stage"] \
        == "translation"
    from shapeprior.errors import InputError
    from shapeprior.mrml import image_fit_job

    for model, start, problem in [("hippocampus", "hippocampus", "needs a 'deepssm' model"),
                                  (str(image_dataset["refined"]), "hippocampus-deepssm", "same prepared shapes")]:
        with pytest.raises(InputError, match=problem):  # at once, not in the worker
            image_fit_job(image, "T1", model, start_from=start)
    p.placeByDeepSSM, p.model = True, str(image_dataset["dissm"])  # a DISSM model no bundled DeepSSM model fits
    with pytest.raises(ValueError, match="No bundled DeepSSM model can place"):
        startJob(logic, p, dict, False, lambda *names: False)


def test_python_packages_install_without_replacing_torch_or_numpy(monkeypatch, tmp_path):
    """The first fit's install keeps the torch (maybe a GPU build) and numpy already there."""
    import tempfile
    import types
    from importlib.metadata import version

    import slicer

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the constraints file
    pinned = [f"torch=={version('torch')}", f"numpy=={version('numpy')}"]
    calls = []
    monkeypatch.setattr(slicer.util, "pip_install", lambda args: calls.append((args, Path(args[1]).read_text())))
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # Slicer before 5.12: no pip_ensure
    ShapePriorSegmentLogic._pipEnsure(["scipy>=1.10"])
    (((option, constraints, *requirements), text),) = calls
    assert (option, requirements) == ("-c", ["scipy>=1.10"]) and text.split() == pinned
    assert Path(constraints).is_relative_to(tmp_path)

    seen = {}
    packaging = types.ModuleType("slicer.packaging")
    packaging.pip_ensure = lambda requirements, constraints, **options: seen.update(
        requirements=requirements, text=Path(constraints).read_text(), **options)
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    ShapePriorSegmentLogic._pipEnsure(["scipy>=1.10"])
    assert [str(r) for r in seen["requirements"]] == ["scipy>=1.10"] and seen["prompt_install"] is False
    assert seen["text"].split() == pinned
    assert list(tmp_path.iterdir()) == []  # the constraints files are gone


def test_a_cnn_mask_refined_on_the_input_volume_with_a_dissm_model(data_dir, one_torch_thread):
    """The panel's 'Refine on the image volume too': with a DISSM model the input volume goes into the
    refinement (the report names it); unticked, with no volume or with a DALS model it does not."""
    from types import SimpleNamespace

    import SimpleITK as sitk

    from ShapePriorSegmentLib.fitrequest import maskImage, startJob
    from shapeprior.io import read_mask
    from shapeprior.mrml import add_labelmap_node, add_volume_node

    scene = new_scene()
    logic = ShapePriorSegmentLogic(scene)
    case = data_dir / "hippocampus" / "images" / "hippocampus_001.nii.gz"
    volume = scene.GetNodeByID(add_volume_node(scene, sitk.ReadImage(str(case)), "T1"))
    mask = sitk.BinaryErode(read_mask(data_dir / "hippocampus" / "labels" / case.name, [1, 2]), [1, 1, 1])
    node = scene.GetNodeByID(add_labelmap_node(scene, mask, "cnn mask"))
    p = SimpleNamespace(annotationMode="mask", model="hippocampus", inputVolume=volume, refineOnImage=True,
                        outputSegmentation=None, resultModel=None, resultSegmentation=None, resultSegmentName="")
    job, outputs = startJob(logic, p, lambda: {"maskNode": node}, False, lambda *names: False)
    out = logic.finishFit(job, **outputs)
    assert out["report"]["image"] == "T1" and out["report"]["input"] == "cnn mask"
    assert out["report"]["refined_volume_ml"] > 1.3 * out["report"]["mask_volume_ml"]  # the eroded voxels come back
    assert maskImage(logic, p) is volume
    for change in ({"refineOnImage": False}, {"inputVolume": None}, {"model": "liver"}):
        assert maskImage(logic, SimpleNamespace(**{**vars(p), **change})) is None
