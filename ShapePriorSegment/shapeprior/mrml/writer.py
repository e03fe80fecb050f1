"""The MRML writer: an :class:`~shapeprior.fit.outcome.Outcome` (LPS mm) -> a model node and a segment.

Main thread only. Everything that can fail on bad data is computed before the scene changes,
and a failure undoes every change.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import trimesh
import vtk
from vtkmodules.util import numpy_support

from ..errors import InputError
from ..fit.outcome import Outcome
from ..fit.run import DISTANCE_ARRAY
from ..io.frames import RAS_TO_LPS
from ..io.meshes import polydata_to_trimesh, trimesh_to_polydata
from .nodes import _get_node
from .terminology import terminology_entry

CLOSED_SURFACE = "Closed surface"
SEGMENT_COLOR = (0.87, 0.55, 0.39)
PART_COLORS = ((0.35, 0.65, 0.85), (0.95, 0.8, 0.3), (0.55, 0.8, 0.45), (0.8, 0.45, 0.75))  # sub-region segments


def _remove_node(scene, node) -> None:
    """Remove a node with its display and storage nodes (the scene alone leaves those behind)."""
    helpers = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    for helper in filter(None, helpers):
        scene.RemoveNode(helper)
    scene.RemoveNode(node)


def _segment_name_taken(segmentation, name: str) -> bool:
    return bool(segmentation.GetSegmentIdBySegmentName(name))


def unique_segment_name(segmentation, name: str) -> str:
    """``name`` if no segment has it, else ``name 2``, ``name 3``... (never overwrites)."""
    if not _segment_name_taken(segmentation, name):
        return name
    number = 2
    while _segment_name_taken(segmentation, f"{name} {number}"):
        number += 1
    return f"{name} {number}"


def _source_representation(segmentation) -> str:
    getter = getattr(segmentation, "GetSourceRepresentationName", None) or segmentation.GetMasterRepresentationName
    return getter()


def _set_source_representation(segmentation, name: str) -> None:
    setter = getattr(segmentation, "SetSourceRepresentationName", None) or segmentation.SetMasterRepresentationName
    setter(name)


def _point_array(values: np.ndarray, name: str):
    array = numpy_support.numpy_to_vtk(np.ascontiguousarray(values, dtype=np.float64), deep=True)
    array.SetName(name)
    return array


def surface_polydata(
    mesh_lps: trimesh.Trimesh, distances: np.ndarray | None = None, normals: bool = False,
    distance_name: str = DISTANCE_ARRAY, point_data: dict[str, np.ndarray] | None = None,
) -> vtk.vtkPolyData:
    """vtkPolyData in RAS (double precision) of a triangle mesh in LPS; faces keep their order.

    ``distances`` (one per vertex, mm) becomes the point array ``distance_name``, followed by
    the arrays of ``point_data`` (name -> one value per vertex);
    ``normals`` adds outward vertex normals (smooth shading of a model node).
    """
    # RAS <-> LPS is a half-turn about z (determinant +1), so the faces keep their winding.
    poly = trimesh_to_polydata(trimesh.Trimesh(mesh_lps.vertices * RAS_TO_LPS, mesh_lps.faces, process=False), None)
    if distances is not None:
        poly.GetPointData().AddArray(_point_array(distances, distance_name))
    for name, values in (point_data or {}).items():
        poly.GetPointData().AddArray(_point_array(values, name))
    if normals:
        poly.GetPointData().SetNormals(_point_array(mesh_lps.vertex_normals * RAS_TO_LPS, "Normals"))
    return poly


def polydata_to_mesh(poly: vtk.vtkPolyData) -> trimesh.Trimesh:
    """Triangle mesh in LPS from a vtkPolyData in RAS (inverse of :func:`surface_polydata`)."""
    if poly is None or poly.GetNumberOfPoints() == 0:
        raise InputError(None, "the surface has no points")
    mesh = polydata_to_trimesh(poly)
    return trimesh.Trimesh(mesh.vertices * RAS_TO_LPS, mesh.faces, process=False)


def show_point_array(model_node, name: str) -> None:
    """Colour the model by its point array ``name`` (mm): 0 to the 95th percentile, or symmetric
    about 0 when the values are signed (NaN, e.g. outside an image, is ignored)."""
    values = numpy_support.vtk_to_numpy(model_node.GetPolyData().GetPointData().GetArray(name))
    display = model_node.GetDisplayNode()
    display.SetActiveScalar(name, vtk.vtkAssignAttribute.POINT_DATA)
    display.SetScalarRangeFlag(display.UseManualScalarRange)
    top = max(5.0, float(np.nanpercentile(np.abs(values), 95))) if np.isfinite(values).any() else 5.0
    display.SetScalarRange(-top if np.nanmin(values, initial=0.0) < 0 else 0.0, top)
    colors = model_node.GetScene().GetNodeByID("vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
    if colors is not None:  # in Slicer; slicer-core has no colour tables
        display.SetAndObserveColorNodeID(colors.GetID())
    display.SetScalarVisibility(True)
    display.SetVisibility2D(True)  # the surface's outline on the slice views


def _add_segment(segmentation_node, poly, name: str, replace: bool,
                 color: tuple[float, float, float] = SEGMENT_COLOR) -> tuple[str, Callable[[], None]]:
    """Add (or with ``replace`` swap in) a closed-surface segment; return its id and an undo."""
    segmentation = segmentation_node.GetSegmentation()
    old_id = segmentation.GetSegmentIdBySegmentName(name) if replace else ""
    if not old_id:
        segment_id = segmentation_node.AddSegmentFromClosedSurfaceRepresentation(poly, name, color)
        return segment_id, lambda: segmentation.RemoveSegment(segment_id)
    old = segmentation.GetSegment(old_id)
    index = segmentation.GetSegmentIndex(old_id)
    segmentation.RemoveSegment(old_id)
    segmentation_node.AddSegmentFromClosedSurfaceRepresentation(poly, name, old.GetColor(), old_id)
    segmentation.SetSegmentIndex(old_id, index)

    def undo() -> None:
        segmentation.RemoveSegment(old_id)
        segmentation.AddSegment(old, old_id)
        segmentation.SetSegmentIndex(old_id, index)

    return old_id, undo


def add_surface_to_scene(
    scene,
    mesh_lps: trimesh.Trimesh,
    organ: str,
    distances: np.ndarray | None = None,
    distance_name: str = DISTANCE_ARRAY,
    *,
    point_data: dict[str, np.ndarray] | None = None,
    segmentation_node_id: str | None = None,
    model_node_id: str | None = None,
    segment_name: str | None = None,
    replace: bool = False,
    reference_volume_id: str | None = None,
    parts: dict[str, trimesh.Trimesh] | None = None,
) -> dict:
    """Write a surface (LPS mm) as a model node and a closed-surface segment.

    The model node is ``model_node_id`` (its surface replaced) or a new ``<organ> surface``;
    with ``distances`` (V,) mm it gets them as the point array ``distance_name`` and is coloured
    by them; ``point_data`` (name -> (V,) values) adds more point arrays beside. The segment
    goes to ``segmentation_node_id`` or a new segmentation node whose source representation
    is set to closed surface first (so the surface is kept, not voxelised). It is named
    ``segment_name`` (default: the organ), made unique (``liver 2``) unless ``replace`` is set,
    in which case a segment of that name is swapped in place. ``parts`` (name -> closed surface, LPS
    mm), e.g. a template model's sub-regions, become segments ``<segment name> <part name>`` beside it.
    On any error every change is undone.

    Returns ``{"model_node_id", "segmentation_node_id", "segment_id", "segment_name", "part_segment_ids",
    "warnings"}``.
    """
    reference = _get_node(scene, reference_volume_id, "vtkMRMLVolumeNode", "volume") if reference_volume_id else None
    model_node = _get_node(scene, model_node_id, "vtkMRMLModelNode", "model") if model_node_id else None
    segmentation_node = (
        _get_node(scene, segmentation_node_id, "vtkMRMLSegmentationNode", "segmentation")
        if segmentation_node_id else None
    )
    # Everything that can fail on bad data is computed before the scene is changed.
    for name, values in {distance_name: distances, **(point_data or {})}.items():
        if values is not None and len(values) != len(mesh_lps.vertices):
            raise ValueError(f"{len(values)} values of {name} for {len(mesh_lps.vertices)} vertices")
    model_poly = surface_polydata(mesh_lps, distances, normals=True, distance_name=distance_name,
                                  point_data=point_data)
    segment_poly = surface_polydata(mesh_lps)
    part_polys = {part: surface_polydata(mesh) for part, mesh in (parts or {}).items()}
    warnings: list[str] = []
    undo: list[Callable[[], None]] = []
    scene.StartState(scene.BatchProcessState)
    try:
        if model_node is None:
            model_node = scene.AddNewNodeByClass("vtkMRMLModelNode", scene.GenerateUniqueName(f"{organ} surface"))
            undo.append(lambda node=model_node: _remove_node(scene, node))
            model_node.CreateDefaultDisplayNodes()
        else:
            old_poly = model_node.GetPolyData()
            undo.append(lambda node=model_node, poly=old_poly: node.SetAndObservePolyData(poly))
        model_node.SetAndObservePolyData(model_poly)
        model_node.SetAttribute("ShapePriorSegment.Organ", organ)
        if model_node.GetDisplayNode() is None:
            model_node.CreateDefaultDisplayNodes()
        if distances is not None:
            show_point_array(model_node, distance_name)

        if segmentation_node is None:
            segmentation_node = scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{organ} segmentation"),
            )
            undo.append(lambda node=segmentation_node: _remove_node(scene, node))
            segmentation_node.CreateDefaultDisplayNodes()
            if reference is not None:
                segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        segmentation = segmentation_node.GetSegmentation()
        if _source_representation(segmentation) != CLOSED_SURFACE:
            if segmentation.GetNumberOfSegments() == 0:
                _set_source_representation(segmentation, CLOSED_SURFACE)
            else:
                warnings.append(
                    f"segmentation {segmentation_node.GetName()!r} keeps {_source_representation(segmentation)!r} as "
                    f"its source representation: the fitted segment is voxelised there; the smooth surface is "
                    f"in model {model_node.GetName()!r}"
                )
        name = segment_name or organ
        if not replace:
            name = unique_segment_name(segmentation, name)
        segment_id, undo_segment = _add_segment(segmentation_node, segment_poly, name, replace)
        undo.append(undo_segment)
        entry = terminology_entry(organ)
        if entry:  # Slicer shows the organ's standard name and colour coding for it
            segmentation.GetSegment(segment_id).SetTag("TerminologyEntry", entry)
        part_ids = []
        for index, (part, poly) in enumerate(part_polys.items()):
            part_id, undo_part = _add_segment(segmentation_node, poly, f"{name} {part}", replace,
                                              PART_COLORS[index % len(PART_COLORS)])
            undo.append(undo_part)
            part_ids.append(part_id)
    except BaseException:
        for step in reversed(undo):
            step()
        raise
    finally:
        scene.EndState(scene.BatchProcessState)
    return {
        "model_node_id": model_node.GetID(),
        "segmentation_node_id": segmentation_node.GetID(),
        "segment_id": segment_id,
        "segment_name": name,
        "part_segment_ids": part_ids,
        "warnings": warnings,
    }


def add_outcome_to_scene(scene, outcome: Outcome, **outputs) -> dict:
    """Write a fit's outcome to the scene: :func:`add_surface_to_scene`, the model coloured by the
    outcome's first per-vertex array (distance to the annotation, or to a refined mask's boundary)
    and carrying the others (e.g. ``Uncertainty_mm``) as point arrays too.

    A template model's sub-regions (``outcome.subregions``) become segments beside the organ's.

    Returns the node ids as :func:`add_surface_to_scene` does, plus ``report``: the outcome's report
    with its warnings followed by the scene's, and the names of the nodes written (``outputs``).
    """
    (name, values), *others = list(outcome.vertex_data.items()) or [(DISTANCE_ARRAY, None)]
    parts = None
    if outcome.subregions is not None:
        from ..fit.correspondence import subregion_surfaces

        parts = subregion_surfaces(outcome.subregions, {int(k): v for k, v in outcome.report["subregions"].items()})
    written = add_surface_to_scene(scene, outcome.mesh, outcome.organ, values, name, point_data=dict(others),
                                   parts=parts, **outputs)
    report = {**outcome.report, "warnings": outcome.warnings + written.pop("warnings")}
    report["outputs"] = {
        "model": scene.GetNodeByID(written["model_node_id"]).GetName(),
        "segmentation": scene.GetNodeByID(written["segmentation_node_id"]).GetName(),
        "segment": written["segment_name"],
    }
    return {**written, "report": report}
