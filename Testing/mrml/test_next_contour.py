"""The fitted model's uncertainty in the scene, the suggested next contour in a slice view, and the
warm-started refit once it is drawn: the bridge and the module's Logic over real MRML (slicer-core)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("slicer_core", reason="needs the slicer-core wheel (real MRML)")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ShapePriorSegment"))

import slicer  # noqa: E402
import trimesh  # noqa: E402
import vtk  # noqa: E402
from shapeprior import mrml as bridge  # noqa: E402
from shapeprior.fit import run  # noqa: E402
from shapeprior.fit.outcome import Outcome  # noqa: E402
from shapeprior.mrml.scene import nodes_by_class  # noqa: E402
from ShapePriorSegmentLib import ShapePriorSegmentLogic  # noqa: E402
from ShapePriorSegmentLib.fitrequest import startJob  # noqa: E402
from ShapePriorSegmentLib.logic import UNCERTAINTY_ARRAY  # noqa: E402
from vtkmodules.util import numpy_support  # noqa: E402


def point_array(model, name: str) -> np.ndarray:
    array = model.GetPolyData().GetPointData().GetArray(name)
    assert array is not None, f"the model has no point array {name!r}"
    return numpy_support.vtk_to_numpy(array)


def add_slice_views(scene, presets: bool = True) -> dict:
    """Red, Yellow and Green slice nodes as Slicer's layout makes them (ids vtkMRMLSliceNode<view>);
    ``presets``: with the default orientation presets (as in Slicer), else none."""
    if presets:
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    views = {}
    for view in ("Red", "Yellow", "Green"):
        node = scene.CreateNodeByClass("vtkMRMLSliceNode")
        node.SetSingletonTag(view)
        node.SetLayoutName(view)
        node.SetName(view)
        scene.AddNode(node)
        node.UnRegister(None)
        views[view] = node
    return views


def slice_to_ras(node) -> np.ndarray:
    matrix = node.GetSliceToRAS()
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def plane(origin, normal, axis: str) -> dict:
    return {"origin": list(origin), "normal": list(normal), "frame": "LPS mm", "axis": axis,
            "expected_gain": {"rms_uncertainty_mm": 1.25, "rms_uncertainty_before_mm": 4.0}}


@pytest.fixture
def synthetic(scene):
    """A model node written from an outcome with a distance and an uncertainty array of known values."""
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=50.0)
    count = len(mesh.vertices)
    distances = np.linspace(0.0, 8.0, count)
    uncertainty = np.linspace(1.0, 21.0, count)
    outcome = Outcome(mesh, "liver", {"warnings": []},
                      vertex_data={bridge.DISTANCE_ARRAY: distances, run.UNCERTAINTY_ARRAY: uncertainty})
    out = bridge.add_outcome_to_scene(scene, outcome)
    return scene.GetNodeByID(out["model_node_id"]), distances, uncertainty


# ---------------------------------------------------------------- the model node's arrays


def test_the_logic_names_the_cores_uncertainty_array():
    assert UNCERTAINTY_ARRAY == run.UNCERTAINTY_ARRAY == "Uncertainty_mm"


def test_model_node_carries_every_array_the_first_colours_it(synthetic):
    model, distances, uncertainty = synthetic
    np.testing.assert_array_equal(point_array(model, bridge.DISTANCE_ARRAY), distances)
    np.testing.assert_array_equal(point_array(model, UNCERTAINTY_ARRAY), uncertainty)
    data = model.GetPolyData().GetPointData()
    names = [data.GetArrayName(i) for i in range(data.GetNumberOfArrays())]
    assert names[:2] == [bridge.DISTANCE_ARRAY, UNCERTAINTY_ARRAY] and "Normals" in names
    display = model.GetDisplayNode()
    assert display.GetActiveScalarName() == bridge.DISTANCE_ARRAY and display.GetScalarVisibility()
    assert display.GetScalarRange() == pytest.approx((0.0, max(5.0, np.percentile(distances, 95))))


def test_a_short_extra_array_is_refused_before_the_scene_changes(scene, mrml):
    mesh = trimesh.creation.icosphere(subdivisions=1, radius=50.0)
    before = mrml.node_ids(scene)
    with pytest.raises(ValueError, match="Uncertainty_mm"):
        bridge.add_surface_to_scene(scene, mesh, "liver", np.zeros(len(mesh.vertices)),
                                    point_data={UNCERTAINTY_ARRAY: np.ones(5)})
    assert mrml.node_ids(scene) == before


def test_fitted_model_node_carries_the_fits_uncertainty(scene, tiny_model, settings, liver_curves, core_fit):
    curve_ids = bridge.add_closed_curves(scene, liver_curves)
    out = bridge.fit_contours_in_scene(scene, curve_ids, tiny_model, settings=settings)
    model = scene.GetNodeByID(out["model_node_id"])
    uncertainty = point_array(model, UNCERTAINTY_ARRAY)
    np.testing.assert_allclose(uncertainty, core_fit.vertex_data[run.UNCERTAINTY_ARRAY], atol=1e-6)
    assert len(uncertainty) == model.GetPolyData().GetNumberOfPoints() == 162
    assert np.all(uncertainty > 0) and uncertainty.max() == pytest.approx(out["report"]["uncertainty_mm"]["max"])
    assert model.GetDisplayNode().GetActiveScalarName() == bridge.DISTANCE_ARRAY  # still coloured by distance


# ---------------------------------------------------------------- the colouring toggle


def test_colouring_toggles_between_uncertainty_distance_and_none(synthetic):
    model, distances, uncertainty = synthetic
    logic = ShapePriorSegmentLogic(model.GetScene())
    display = model.GetDisplayNode()

    assert logic.setSurfaceColoring(model, byDistance=True, byUncertainty=True) == UNCERTAINTY_ARRAY
    assert display.GetActiveScalarName() == UNCERTAINTY_ARRAY and display.GetScalarVisibility()
    assert display.GetScalarRange() == pytest.approx((0.0, np.percentile(uncertainty, 95)))  # 20.0 mm
    assert display.GetActiveAttributeLocation() == vtk.vtkAssignAttribute.POINT_DATA

    assert logic.setSurfaceColoring(model, byDistance=True, byUncertainty=False) == bridge.DISTANCE_ARRAY
    assert display.GetActiveScalarName() == bridge.DISTANCE_ARRAY and display.GetScalarVisibility()
    assert display.GetScalarRange() == pytest.approx((0.0, np.percentile(distances, 95)))  # 7.6 mm

    assert logic.setSurfaceColoring(model, byDistance=False, byUncertainty=False) is None
    assert not display.GetScalarVisibility()
    assert logic.setSurfaceColoring(model, byDistance=False, byUncertainty=True) == UNCERTAINTY_ARRAY
    assert display.GetScalarVisibility()


def test_show_scalars_of_a_missing_array_changes_nothing(synthetic, scene):
    model, _, _ = synthetic
    display = model.GetDisplayNode()
    assert ShapePriorSegmentLogic.showScalars(model, "NoSuchArray") is False
    assert display.GetActiveScalarName() == bridge.DISTANCE_ARRAY and display.GetScalarVisibility()
    # A model without uncertainty (e.g. a refined mask's) keeps its distance colouring.
    mesh = trimesh.creation.icosphere(subdivisions=1, radius=40.0)
    only = bridge.add_outcome_to_scene(
        scene, Outcome(mesh, "liver", {"warnings": []}, vertex_data={bridge.DISTANCE_ARRAY: np.ones(len(mesh.vertices))}))
    refined = scene.GetNodeByID(only["model_node_id"])
    logic = ShapePriorSegmentLogic(scene)
    assert logic.setSurfaceColoring(refined, byDistance=True, byUncertainty=True) == bridge.DISTANCE_ARRAY
    assert refined.GetDisplayNode().GetActiveScalarName() == bridge.DISTANCE_ARRAY


# ---------------------------------------------------------------- the suggested plane in a slice view


@pytest.mark.parametrize("presets", [True, False], ids=["layout-presets", "bare-slice-node"])
def test_an_axial_suggestion_moves_the_red_view_to_its_ras_offset(scene, presets):
    views = add_slice_views(scene, presets)
    logic = ShapePriorSegmentLogic(scene)
    logic.lastReport = {"suggested_plane": plane([10.0, -20.0, 112.5], [0.0, 0.0, 1.0], "axial")}
    assert logic.showSuggestedPlane() == "Red"
    red = views["Red"]
    assert red.GetOrientation() == "Axial"
    matrix = slice_to_ras(red)
    np.testing.assert_allclose(matrix[:3, :3], [[-1, 0, 0], [0, 1, 0], [0, 0, 1]], atol=1e-12)
    assert red.GetSliceOffset() == pytest.approx(112.5)  # S = +z: LPS and RAS agree
    # The suggested origin, in RAS (-x, -y, z), lies on the slice plane.
    assert matrix[:3, 2] @ (np.array([-10.0, 20.0, 112.5]) - matrix[:3, 3]) == pytest.approx(0.0, abs=1e-9)
    assert views["Yellow"].GetSliceOffset() == pytest.approx(0.0) and views["Green"].GetSliceOffset() == 0.0


def test_a_coronal_suggestion_moves_the_green_view_with_the_lps_to_ras_sign(scene):
    views = add_slice_views(scene)
    logic = ShapePriorSegmentLogic(scene)
    suggestion = plane([5.0, 30.0, -40.0], [0.0, 1.0, 0.0], "coronal")
    assert logic.planeView(suggestion) == "Green"
    assert logic.showSuggestedPlane(suggestion) == "Green"
    green = views["Green"]
    assert green.GetOrientation() == "Coronal"
    matrix = slice_to_ras(green)
    np.testing.assert_allclose(matrix[:3, 2], [0.0, 1.0, 0.0], atol=1e-12)  # the normal along A
    assert green.GetSliceOffset() == pytest.approx(-30.0)  # A = -y: 30 mm posterior
    assert matrix[:3, 2] @ (np.array([-5.0, -30.0, -40.0]) - matrix[:3, 3]) == pytest.approx(0.0, abs=1e-9)


def test_a_sagittal_suggestion_moves_the_yellow_view_to_its_r_coordinate(scene):
    views = add_slice_views(scene)
    logic = ShapePriorSegmentLogic(scene)
    assert logic.showSuggestedPlane(plane([20.5, -3.0, 8.0], [1.0, 0.0, 0.0], "sagittal")) == "Yellow"
    yellow = views["Yellow"]
    assert yellow.GetOrientation() == "Sagittal"
    matrix = slice_to_ras(yellow)
    assert abs(matrix[0, 2]) == pytest.approx(1.0) and matrix[0, 3] == pytest.approx(-20.5)  # R = -x
    # Slicer's radiological sagittal normal points left, so its slice offset is -R.
    assert yellow.GetSliceOffset() == pytest.approx(-matrix[0, 2] * 20.5)


def test_an_oblique_suggestion_reformats_the_nearest_view_through_its_origin(scene):
    views = add_slice_views(scene)
    normal = np.array([0.2, 0.3, 0.9])
    normal /= np.linalg.norm(normal)
    suggestion = plane([12.0, -7.0, 30.0], normal, "oblique")
    logic = ShapePriorSegmentLogic(scene)
    assert logic.showSuggestedPlane(suggestion) == "Red"  # mostly axial
    matrix = slice_to_ras(views["Red"])
    np.testing.assert_allclose(matrix[:3, 2], normal * [-1, -1, 1], atol=1e-9)
    np.testing.assert_allclose(matrix[:3, 3], [-12.0, 7.0, 30.0], atol=1e-9)
    np.testing.assert_allclose(matrix[:3, :3].T @ matrix[:3, :3], np.eye(3), atol=1e-9)  # a rotation
    assert views["Red"].GetOrientation() == "Reformat"


def test_no_suggestion_or_no_view_is_an_error(scene):
    logic = ShapePriorSegmentLogic(scene)
    with pytest.raises(ValueError, match="no further contour"):
        logic.showSuggestedPlane()
    logic.lastReport = {"suggested_plane": plane([0.0, 0.0, 0.0], [1.0, 0.0, 0.0], "sagittal")}
    with pytest.raises(ValueError, match="Yellow"):  # slicer-core's scene has no slice views
        logic.showSuggestedPlane()


def test_suggestion_text_names_the_slice_as_slicer_shows_it():
    logic = ShapePriorSegmentLogic(slicer.vtkMRMLScene())
    report = {"suggested_plane": plane([10.0, -20.0, 112.5], [0.0, 0.0, 1.0], "axial")}
    assert logic.suggestionText(report) == ("Suggested next contour: axial slice at S = 112.5 mm (expected to lower "
                                            "the RMS uncertainty from 4.0 to 2.8 mm).")
    assert "coronal slice at A = -30.0 mm" in logic.suggestionText(
        {"suggested_plane": plane([5.0, 30.0, -40.0], [0.0, 1.0, 0.0], "coronal")})
    settled = {"suggested_plane": None, "uncertainty_mm": {"max": 2.5, "tolerance": 3.0}}
    assert logic.suggestionText(settled) == ("No further contour needed: the uncertainty is at most 2.5 mm, under the "
                                             "tolerance everywhere.")
    assert logic.suggestionText({"suggested_plane": None, "uncertainty_mm": {"max": 4.0, "tolerance": 3.0}}) == ""
    assert logic.suggestionText({"organ": "liver"}) == ""  # suggestions off, or not a contour fit
    result = {"segment_name": "liver", "report": {"organ": "liver", "seconds": 1.25, **report}}
    assert logic.resultText(result) == ("Fitted liver in 1.2 s: segment 'liver'. Suggested next contour: axial slice "
                                        "at S = 112.5 mm (expected to lower the RMS uncertainty from 4.0 to 2.8 mm).")


def test_placing_a_contour_ends_when_the_place_mode_does(scene):
    logic = ShapePriorSegmentLogic(scene)
    add_slice_views(scene)
    interaction = logic.interactionNode()
    interaction.SetPlaceModePersistence(0)  # the user's setting for other modules' placing
    curve = logic.startPlacingContour("Yellow")
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert interaction.GetPlaceModePersistence() == 1  # a curve takes many points
    assert logic.contourPlacementEnded(curve) is None  # still placing
    assert logic.contourPlacementEnded(None) is None  # no contour awaited
    for point in ([0.0, 0.0, 0.0], [0.0, 10.0, 0.0]):
        curve.AddControlPoint(point)
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)
    assert logic.contourPlacementEnded(curve) is False  # two points: not a contour
    assert interaction.GetPlaceModePersistence() == 0  # given back
    curve.AddControlPoint([0.0, 10.0, 10.0])
    assert logic.contourPlacementEnded(curve) is True
    scene.RemoveNode(curve)
    assert logic.contourPlacementEnded(curve) is False


# ---------------------------------------------------------------- warm-started refits


def test_workflow_refit_warm_starts_from_the_previous_report(scene, tiny_model, settings, liver_curves):
    first_ids = bridge.add_closed_curves(scene, liver_curves[:2])
    first = bridge.fit_contours_in_scene(scene, first_ids, tiny_model, settings=settings)
    assert first["report"]["warm_start"] is None and "fit_state" in first["report"]
    all_ids = first_ids + bridge.add_closed_curves(scene, liver_curves[2:])
    refit = bridge.fit_contours_in_scene(scene, all_ids, tiny_model, settings=settings, warm_start=first["report"],
                                         suggest="off", model_node_id=first["model_node_id"],
                                         segmentation_node_id=first["segmentation_node_id"], replace=True)
    assert refit["report"]["warm_start"] == "refitted from the previous fit's report: 2 of its 2 curves are among these 3"
    assert "suggested_plane" not in refit["report"]  # suggest="off"
    assert refit["model_node_id"] == first["model_node_id"] and len(nodes_by_class(scene, "vtkMRMLModelNode")) == 1
    assert [r["curve"] for r in refit["report"]["residuals"]] == [1, 2, 3]
    assert point_array(scene.GetNodeByID(refit["model_node_id"]), UNCERTAINTY_ARRAY).shape == (162,)


def test_fit_job_passes_the_warm_start_through(tiny_model, settings, liver_curves, core_fit):
    from shapeprior.mrml import Annotation

    annotation = Annotation(curves=liver_curves, source="contours")
    outcome = bridge.fit_job(annotation, tiny_model, settings, warm_start=core_fit.report).start().result(60)
    assert outcome.report["warm_start"] == "refitted from the previous fit's report: 3 of its 3 curves are among these 3"
    cold = bridge.fit_job(annotation, tiny_model, settings).start().result(60)
    assert cold.report["warm_start"] is None


def test_logic_suggests_shows_and_refits_from_the_last_report(scene, tiny_model, settings, mrml):
    """The panel's loop: fit, show the suggested plane, draw a contour on it, refit from the last fit."""
    logic = ShapePriorSegmentLogic(scene)
    views = add_slice_views(scene)
    curves = [scene.GetNodeByID(i) for i in bridge.add_closed_curves(scene, [mrml.ellipse(2), mrml.ellipse(1)])]
    first = logic.process(curves, model=str(tiny_model), settings=settings)
    assert logic.lastReport is first["report"] and logic.warmStartReport(str(tiny_model)) is first["report"]
    suggestion = logic.suggestedPlane()
    assert suggestion == first["report"]["suggested_plane"] and suggestion["frame"] == "LPS mm"
    assert suggestion["axis"] in ("sagittal", "coronal", "axial")  # suggest="axes", the panel's default
    view = logic.showSuggestedPlane()
    axis = ("sagittal", "coronal", "axial").index(suggestion["axis"])
    assert view == {"sagittal": "Yellow", "coronal": "Green", "axial": "Red"}[suggestion["axis"]]
    assert views[view].GetOrientation() == suggestion["axis"].capitalize()
    # The slice (normal along the plane's axis) passes through the suggested origin, in RAS (-x, -y, z).
    matrix = slice_to_ras(views[view])
    assert abs(matrix[axis, 2]) == pytest.approx(1.0)
    origin_ras = np.array(suggestion["origin"]) * [-1, -1, 1]
    assert matrix[:3, 2] @ (origin_ras - matrix[:3, 3]) == pytest.approx(0.0, abs=1e-6)
    assert matrix[axis, 3] == pytest.approx(origin_ras[axis], abs=1e-6)

    # The user draws the contour on that slice; the panel refits as "add contour and refit" does.
    new = logic.startPlacingContour(view)
    offset = suggestion["origin"][axis] - np.array([20.0, -30.0, 40.0])[axis]  # the ellipse helper's centre
    for point in mrml.ellipse(axis, offset=offset):
        new.AddControlPointWorld(point * [-1, -1, 1])  # LPS -> RAS
    logic.interactionNode().SetCurrentInteractionMode(logic.interactionNode().ViewTransform)
    assert logic.contourPlacementEnded(new) is True
    p = SimpleNamespace(
        annotationMode="curves", model=str(tiny_model), inputVolume=None, outputSegmentation=None,
        resultModel=scene.GetNodeByID(first["model_node_id"]),
        resultSegmentation=scene.GetNodeByID(first["segmentation_node_id"]), resultSegmentName=first["segment_name"],
        level=settings.level, globalSteps=settings.global_steps, vertexSteps=settings.vertex_steps, smoothness=1.0,
        contourBlend=settings.contour_blend_mm,
    )
    job, outputs = startJob(logic, p, lambda: {"curveNodes": curves + [new]}, True, lambda *names: pytest.fail("asked"))
    refit = logic.finishFit(job, **outputs)
    assert refit["report"]["warm_start"] == "refitted from the previous fit's report: 2 of its 2 curves are among these 3"
    assert refit["model_node_id"] == first["model_node_id"] and refit["segment_name"] == first["segment_name"]
    assert logic.lastReport is refit["report"] and refit["report"]["planes"] == 3
    # The drawn contour is where the suggestion was.
    drawn = [r for r in refit["report"]["residuals"] if r["curve"] == 3]
    assert len(drawn) == 1 and np.isfinite(drawn[0]["mean_mm"])

    # A plain fit (not a refit) starts cold.
    job, _ = startJob(logic, p, lambda: {"curveNodes": curves + [new]}, False, lambda *names: False)
    assert job.result(60).report["warm_start"] is None


def test_warm_start_report_only_for_the_same_model(tiny_model):
    logic = ShapePriorSegmentLogic(slicer.vtkMRMLScene())
    assert logic.warmStartReport(str(tiny_model)) is None  # no fit yet
    from shapeprior.fit.warm_start import model_digest

    state = {"model_sha256": model_digest(str(tiny_model)), "organ": "liver"}
    logic.lastReport = {"fit_state": state}
    assert logic.warmStartReport(str(tiny_model)) is logic.lastReport
    assert logic.warmStartReport("/no/such/model.pt") is None
    logic.lastReport = {"fit_state": {**state, "model_sha256": "0" * 16}}  # fitted with other weights
    assert logic.warmStartReport(str(tiny_model)) is None
    logic.lastReport = {"organ": "liver"}  # a mask refinement or image fit: nothing to start from
    assert logic.warmStartReport(str(tiny_model)) is None


def test_status_line_names_a_template_models_subregions():
    from ShapePriorSegmentLib.results import resultSummary

    result = {"segment_name": "hippocampus", "report": {"organ": "hippocampus", "seconds": 7.04,
                                                        "subregions": {"1": "anterior", "2": "posterior"}}}
    assert resultSummary(result) == ("Fitted hippocampus in 7.0 s: segment 'hippocampus'. Sub-regions as segments: "
                                     "anterior, posterior.")
