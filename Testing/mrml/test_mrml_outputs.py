"""Writing results: unique segment names, replacing, cancelling, undoing half-made changes."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("slicer_core", reason="needs the slicer-core wheel (real MRML)")

from shapeprior.fit.dals_fit import FitCancelled, FitSettings  # noqa: E402
from shapeprior import mrml as bridge  # noqa: E402


def segment_names(scene, segmentation_id: str) -> list[str]:
    segmentation = scene.GetNodeByID(segmentation_id).GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def test_segments_are_never_overwritten_unless_asked(scene, core_fit, liver_curves):
    mesh = core_fit.mesh
    first = bridge.add_surface_to_scene(scene, mesh, "liver")
    seg_id = first["segmentation_node_id"]
    second = bridge.add_surface_to_scene(scene, mesh, "liver", segmentation_node_id=seg_id)
    third = bridge.add_surface_to_scene(scene, mesh, "liver", segmentation_node_id=seg_id)
    assert [second["segment_name"], third["segment_name"]] == ["liver 2", "liver 3"]
    assert segment_names(scene, seg_id) == ["liver", "liver 2", "liver 3"]
    assert len({first["model_node_id"], second["model_node_id"], third["model_node_id"]}) == 3

    # Refit: replace "liver 2" in place and update the first model node.
    shifted = mesh.copy()
    shifted.vertices += [0.0, 0.0, 5.0]
    again = bridge.add_surface_to_scene(
        scene, shifted, "liver", segmentation_node_id=seg_id, segment_name="liver 2", replace=True,
        model_node_id=first["model_node_id"],
    )
    assert again["segment_id"] == second["segment_id"] and again["model_node_id"] == first["model_node_id"]
    assert segment_names(scene, seg_id) == ["liver", "liver 2", "liver 3"]
    segment = scene.GetNodeByID(seg_id).GetSegmentation().GetSegment(again["segment_id"])
    surface = bridge.polydata_to_mesh(segment.GetRepresentation(bridge.CLOSED_SURFACE))
    np.testing.assert_allclose(surface.vertices, shifted.vertices, atol=1e-9)
    model = bridge.polydata_to_mesh(scene.GetNodeByID(first["model_node_id"]).GetPolyData())
    np.testing.assert_allclose(model.vertices, shifted.vertices, atol=1e-9)


def test_labelmap_source_segmentation_keeps_its_source_and_warns(scene, core_fit):
    painting = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "painting")
    painting.GetSegmentation().AddEmptySegment("", "other")
    out = bridge.add_surface_to_scene(scene, core_fit.mesh, "liver", segmentation_node_id=painting.GetID())
    assert painting.GetSegmentation().GetSourceRepresentationName() == "Binary labelmap"
    assert "voxelised" in out["warnings"][0]
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    out = bridge.add_surface_to_scene(scene, core_fit.mesh, "liver", segmentation_node_id=empty.GetID())
    assert empty.GetSegmentation().GetSourceRepresentationName() == bridge.CLOSED_SURFACE and out["warnings"] == []


def test_a_failure_while_writing_leaves_no_half_made_nodes(scene, core_fit, monkeypatch, mrml):
    existing = bridge.add_surface_to_scene(scene, core_fit.mesh, "liver")
    before = mrml.node_ids(scene)
    old_poly = scene.GetNodeByID(existing["model_node_id"]).GetPolyData()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bridge.writer, "_add_segment", broken)
    with pytest.raises(RuntimeError):
        bridge.add_surface_to_scene(scene, core_fit.mesh, "liver")
    with pytest.raises(RuntimeError):
        bridge.add_surface_to_scene(scene, core_fit.mesh, "liver", model_node_id=existing["model_node_id"])
    assert mrml.node_ids(scene) == before
    assert scene.GetNodeByID(existing["model_node_id"]).GetPolyData() is old_poly


def test_cancel_mid_fit_adds_nothing(scene, tiny_model, settings, liver_curves, mrml):
    curve_ids = bridge.add_closed_curves(scene, liver_curves)
    before = mrml.node_ids(scene)
    calls = []

    def stop_after_two() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(FitCancelled):
        bridge.fit_contours_in_scene(scene, curve_ids, tiny_model, settings=settings, should_stop=stop_after_two)
    assert len(calls) == 3 and mrml.node_ids(scene) == before


def test_fit_job_reports_progress_and_cancels_within_a_second(scene, tiny_model, liver_curves, mrml):
    annotation = bridge.read_curve_annotation(scene, bridge.add_closed_curves(scene, liver_curves))
    before = mrml.node_ids(scene)
    job = bridge.fit_job(annotation, tiny_model, FitSettings(level=2, global_steps=100000, vertex_steps=1)).start()
    deadline = time.monotonic() + 30
    while job.progress[0] == 0.0 and time.monotonic() < deadline:  # until the first step is done
        time.sleep(0.01)
    assert job.progress[1] == "global latent" and not job.done
    asked = time.monotonic()
    job.cancel()
    with pytest.raises(FitCancelled):
        job.result(timeout=5)
    assert time.monotonic() - asked < 1.0 and job.done and job.cancelled
    assert mrml.node_ids(scene) == before


def test_fit_job_result_is_the_synchronous_fit(scene, tiny_model, settings, liver_curves, core_fit):
    annotation = bridge.read_curve_annotation(scene, bridge.add_closed_curves(scene, liver_curves))
    job = bridge.fit_job(annotation, tiny_model, settings).start()
    fit = job.result(timeout=60)
    assert job.done and job.progress == (1.0, "per-vertex latents")
    out = bridge.add_outcome_to_scene(scene, fit)
    mesh = bridge.polydata_to_mesh(scene.GetNodeByID(out["model_node_id"]).GetPolyData())
    np.testing.assert_allclose(mesh.vertices, core_fit.mesh.vertices, atol=1e-4, rtol=0)
