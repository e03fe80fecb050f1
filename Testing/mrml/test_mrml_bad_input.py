"""Bad annotations are refused with an InputError before anything is fitted or added."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer_core", reason="needs the slicer-core wheel (real MRML)")

import SimpleITK as sitk  # noqa: E402
import slicer  # noqa: E402

from shapeprior.errors import InputError  # noqa: E402
from shapeprior import mrml as bridge  # noqa: E402


@pytest.fixture
def refuse(scene, tiny_model, settings, mrml):
    """Call ``fit(scene, ...)`` and check it raises InputError matching ``message`` and adds no node."""

    def check(message: str, fit, *args, **kwargs) -> InputError:
        before = mrml.node_ids(scene)
        with pytest.raises(InputError, match=message) as caught:
            fit(scene, *args, model=tiny_model, settings=settings, **kwargs)
        assert mrml.node_ids(scene) == before
        return caught.value

    return check


def test_no_curves(refuse):
    refuse("no closed curves given", bridge.fit_contours_in_scene, [])


def test_curves_not_on_distinct_planes(scene, refuse, mrml):
    parallel = [mrml.ellipse(2, offset=-10.0), mrml.ellipse(2, offset=20.0), mrml.ellipse(2, offset=35.0)]
    refuse("at least two non-parallel planes", bridge.fit_contours_in_scene, bridge.add_closed_curves(scene, parallel))


def test_open_curve_and_too_few_points(scene, refuse, liver_curves):
    curve = scene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", "open")
    for point in liver_curves[0][:5]:
        curve.AddControlPoint(*point)
    refuse("open: is an open curve", bridge.fit_contours_in_scene, [curve.GetID()])
    ids = bridge.add_closed_curves(scene, [liver_curves[0][:2], liver_curves[1]], names=["short", "ok"])
    refuse("short: has 2 control points", bridge.fit_contours_in_scene, ids)


def test_wrong_or_missing_nodes(scene, refuse, liver_curves):
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", "a model")
    refuse("a model: is a vtkMRMLModelNode, not a closed curve", bridge.fit_contours_in_scene, [model.GetID()])
    refuse("closed curve 'vtkMRMLNope1' is not in the scene", bridge.fit_contours_in_scene, ["vtkMRMLNope1"])
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    refuse("seg: has no segment 'S1'", bridge.fit_painted_segment_in_scene, segmentation.GetID(), "S1")


def test_segment_with_no_painted_voxels(scene, refuse):
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "painting")
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "liver")
    refuse("painting/liver: is empty", bridge.fit_painted_segment_in_scene, segmentation.GetID(), segment_id)


def test_segment_painted_on_one_slice_only(scene, refuse, helpers):
    mask = helpers.ellipsoid_image((60.0, 50.0, 40.0), spacing=(4.0, 4.0, 4.0))
    array = sitk.GetArrayFromImage(mask)
    one_slice = np.zeros_like(array)
    one_slice[array.shape[0] // 2] = array[array.shape[0] // 2]
    image = sitk.GetImageFromArray(one_slice)
    image.CopyInformation(mask)
    labelmap_id = bridge.add_labelmap_node(scene, image, "one slice")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "painting")
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(scene.GetNodeByID(labelmap_id), segmentation)
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    refuse("at least two non-parallel planes", bridge.fit_painted_segment_in_scene, segmentation.GetID(), segment_id)


def test_empty_labelmap_volume(scene, refuse):
    def fit_mask(scene, node_id, model, settings):
        return bridge.refine_mask_in_scene(scene, node_id, model)

    node_id = bridge.add_labelmap_node(scene, sitk.Image(20, 20, 10, sitk.sitkUInt8), "cnn")
    refuse("cnn: is empty", fit_mask, node_id)
