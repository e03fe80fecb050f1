"""Curves in a real MRML scene -> model and segment nodes matching the command line's fit."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer_core", reason="needs the slicer-core wheel (real MRML)")

import vtk  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402
from vtkmodules.util import numpy_support  # noqa: E402

from shapeprior import mrml as bridge  # noqa: E402
from shapeprior.fit.contours import group_planes  # noqa: E402


@pytest.fixture
def fitted(scene, tiny_model, settings, liver_curves):
    curve_ids = bridge.add_closed_curves(scene, liver_curves)
    return scene, bridge.fit_contours_in_scene(scene, curve_ids, tiny_model, settings=settings)


def test_model_and_segment_match_the_core_fit(fitted, core_fit):
    scene, out = fitted
    model = scene.GetNodeByID(out["model_node_id"])
    mesh = bridge.polydata_to_mesh(model.GetPolyData())
    np.testing.assert_allclose(mesh.vertices, core_fit.mesh.vertices, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(mesh.faces, core_fit.mesh.faces)

    segmentation = scene.GetNodeByID(out["segmentation_node_id"]).GetSegmentation()
    assert segmentation.GetSourceRepresentationName() == bridge.CLOSED_SURFACE
    segment = segmentation.GetSegment(out["segment_id"])
    assert segment.GetName() == "liver" == out["segment_name"]
    surface = bridge.polydata_to_mesh(segment.GetRepresentation(bridge.CLOSED_SURFACE))
    np.testing.assert_allclose(surface.vertices, core_fit.mesh.vertices, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(surface.faces, core_fit.mesh.faces)

    assert out["report"]["residuals"] == core_fit.report["residuals"]
    # The core's warnings (curves the tiny model's short fit misses) and none of the scene's own.
    assert out["report"]["organ"] == "liver" and out["report"]["warnings"] == core_fit.report["warnings"]


def test_model_is_coloured_by_distance_to_the_curves(fitted, core_fit):
    scene, out = fitted
    model = scene.GetNodeByID(out["model_node_id"])
    distances = numpy_support.vtk_to_numpy(model.GetPolyData().GetPointData().GetArray(bridge.DISTANCE_ARRAY))
    dense = np.concatenate([c for plane in group_planes(core_fit.curves) for c in plane.curves])
    expected, _ = cKDTree(dense).query(core_fit.mesh.vertices)
    np.testing.assert_allclose(distances, expected, atol=1e-4)
    display = model.GetDisplayNode()
    assert display.GetActiveScalarName() == bridge.DISTANCE_ARRAY and display.GetScalarVisibility()
    # Smooth shading: vertex normals, pointing outwards.
    normals = numpy_support.vtk_to_numpy(model.GetPolyData().GetPointData().GetNormals())
    ras = numpy_support.vtk_to_numpy(model.GetPolyData().GetPoints().GetData())
    assert (np.einsum("ij,ij->i", normals, ras - ras.mean(0)) > 0).mean() > 0.9


def test_ras_lps_is_a_rotation_faces_keep_their_orientation(core_fit):
    mesh = core_fit.mesh
    poly = bridge.surface_polydata(mesh)
    ras = numpy_support.vtk_to_numpy(poly.GetPoints().GetData())
    np.testing.assert_array_equal(ras, mesh.vertices * [-1, -1, 1])
    # Signed volume by the divergence theorem: same sign in both frames (det diag(-1,-1,1) = +1).
    tri_lps, tri_ras = mesh.vertices[mesh.faces], ras[mesh.faces]
    signed = [np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6 for t in (tri_lps, tri_ras)]
    assert signed[0] > 0 and signed[1] == pytest.approx(signed[0])
    back = bridge.polydata_to_mesh(poly)
    np.testing.assert_array_equal(back.vertices, mesh.vertices)


def test_curves_round_trip_and_read_in_world_lps(scene, liver_curves):
    ids = bridge.add_closed_curves(scene, liver_curves, names=["axial", "coronal", "sagittal"])
    node = scene.GetNodeByID(ids[0])
    assert node.GetName() == "axial"
    ras = [0.0, 0.0, 0.0]
    node.GetNthControlPointPosition(0, ras)
    np.testing.assert_allclose(ras, liver_curves[0][0] * [-1, -1, 1])
    for read, original in zip(bridge.read_closed_curves(scene, ids), liver_curves):
        np.testing.assert_allclose(read, original, atol=1e-12)

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 5.0)  # 5 mm towards R = -5 mm in L
    transform.SetMatrixTransformToParent(matrix)
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = bridge.read_closed_curves(scene, ids[:1])[0]
    np.testing.assert_allclose(moved, liver_curves[0] + [-5.0, 0.0, 0.0], atol=1e-9)


def test_points_not_placed_yet_are_ignored(scene, liver_curves):
    (node_id,) = bridge.add_closed_curves(scene, liver_curves[:1])
    node = scene.GetNodeByID(node_id)
    node.UnsetNthControlPointPosition(0)
    assert len(bridge.read_closed_curves(scene, [node_id])[0]) == len(liver_curves[0]) - 1
