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
