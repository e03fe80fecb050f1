"""MRML <-> core: read annotations from a Slicer scene, fit, write model and segment back.

Qt-free: runs inside 3D Slicer and with the ``slicer-core`` wheel. MRML world
coordinates are RAS, the core's are LPS; the two differ by diag(-1, -1, 1), a
rotation, so triangles keep their orientation when converted.

Threading: MRML may only be touched from the main thread. The ``read_*`` functions
and :func:`add_fit_to_scene` run there; :func:`run_fit` works on the plain arrays of an
:class:`Annotation` and may run in a worker thread (:class:`FitJob`; an image fit:
:class:`ImageFitJob`). The
``fit_*_in_scene`` functions chain the steps synchronously.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import slicer
import trimesh
import vtk
from scipy.spatial import cKDTree
from slicer.util import arrayFromVTKMatrix, vtkMatrixFromArray
from vtkmodules.util import numpy_support

from ..errors import InputError
from ..fit.contours import group_planes
from ..fit.dals_fit import FitSettings
from ..fit.run import DALSFit, fit_curves, fit_points
from ..io.labelmaps import painted_slice_contours
from ..io.markups import RAS_TO_LPS
from ..io.meshes import polydata_to_trimesh, trimesh_to_polydata
from ..prep.surface import index_to_physical

CLOSED_SURFACE = "Closed surface"
DISTANCE_ARRAY = "DistanceToAnnotation"
SEGMENT_COLOR = (0.87, 0.55, 0.39)
# Flips between RAS and LPS for 4x4 homogeneous matrices (its own inverse).
RAS_LPS_4 = np.diag([*RAS_TO_LPS, 1.0])

Progress = Callable[[float, str], None]
ShouldStop = Callable[[], bool]


@dataclass
class Annotation:
    """What the user drew, read from the scene on the main thread (LPS mm, plain arrays).

    Either closed planar ``curves`` or surface ``points`` (from a mask to refine).
    Safe to hand to a worker thread.
    """

    curves: list[np.ndarray] = field(default_factory=list)
    points: np.ndarray | None = None
    source: str = "scene"  # node names, for messages and the report
    label: str | None = None  # name of the segment it came from, if any

    def qa_points(self, fit: DALSFit | None = None) -> np.ndarray:
        """Points the surface is compared with: the resampled curves, else the mask points."""
        if fit is not None and fit.planes:
            return np.concatenate([c for plane in fit.planes for c in plane.curves])
        if self.points is not None:
            return self.points
        return np.concatenate(self.curves)


# --------------------------------------------------------------------------- nodes


def _get_node(scene, node_id: str | None, class_name: str, what: str):
    node = scene.GetNodeByID(node_id) if node_id else None
    if node is None:
        raise InputError(None, f"{what} {node_id!r} is not in the scene")
    if not node.IsA(class_name):
        raise InputError(node.GetName(), f"is a {node.GetClassName()}, not a {what}")
    return node


def _to_world(node) -> np.ndarray:
    """4x4 matrix from the node's local RAS to world RAS (its linear parent transforms)."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise InputError(node.GetName(), "is under a non-linear transform; harden the transform first")
    matrix = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return arrayFromVTKMatrix(matrix)


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


# --------------------------------------------------------------------------- curves


def read_closed_curves(scene, curve_node_ids: Sequence[str]) -> list[np.ndarray]:
    """Defined control points (N_i, 3) of each closed-curve markups node, LPS mm (world)."""
    if not curve_node_ids:
        raise InputError(None, "no closed curves given: draw a closed curve on at least two different views")
    curves = []
    for node_id in curve_node_ids:
        node = scene.GetNodeByID(node_id) if node_id else None
        if node is not None and node.IsA("vtkMRMLMarkupsCurveNode") and not node.IsA("vtkMRMLMarkupsClosedCurveNode"):
            raise InputError(node.GetName(), "is an open curve; draw a closed curve on each slice")
        node = _get_node(scene, node_id, "vtkMRMLMarkupsClosedCurveNode", "closed curve")
        points = []
        for i in range(node.GetNumberOfControlPoints()):
            if node.GetNthControlPointPositionStatus(i) != node.PositionDefined:
                continue  # the point being placed
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(i, position)
            points.append(position)
        if len(points) < 3:
            raise InputError(node.GetName(), f"has {len(points)} control points; at least 3 are needed")
        curves.append(np.array(points, dtype=np.float64) * RAS_TO_LPS)
    return curves


def add_closed_curves(scene, curves_lps: Sequence[np.ndarray], names: Sequence[str] | None = None) -> list[str]:
    """Add each curve (N_i, 3) LPS mm as a closed-curve markups node; return the node ids."""
    ids = []
    for i, curve in enumerate(curves_lps):
        name = names[i] if names else f"Contour {i + 1}"
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsClosedCurveNode", scene.GenerateUniqueName(name))
        node.CreateDefaultDisplayNodes()
        for point in np.asarray(curve, dtype=np.float64) * RAS_TO_LPS:
            node.AddControlPoint(float(point[0]), float(point[1]), float(point[2]))
        ids.append(node.GetID())
    return ids


def read_curve_annotation(scene, curve_node_ids: Sequence[str]) -> Annotation:
    """Closed curves as an :class:`Annotation`; checks now that they lie on distinct planes."""
    curves = read_closed_curves(scene, curve_node_ids)
    source = ", ".join(scene.GetNodeByID(i).GetName() for i in curve_node_ids)
    group_planes(curves, source)  # raise before any fitting starts
    return Annotation(curves=curves, source=source)


# --------------------------------------------------------------------------- masks


def _image_data_to_sitk(image_data, index_to_ras: np.ndarray, name: str, label: int | None = None,
                        binary: bool = True) -> sitk.Image:
    """A SimpleITK image (LPS geometry) from a vtkImageData whose structured index maps to RAS by ``index_to_ras``.

    ``binary``: a uint8 mask of the non-zero voxels (or of ``label``); else the scalars as float32.
    """
    extent = image_data.GetExtent()
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    scalars = image_data.GetPointData().GetScalars() if min(dims) > 0 else None
    if scalars is not None and scalars.GetNumberOfComponents() != 1:
        raise InputError(name, "is a multi-component image; a " + ("label" if binary else "scalar") + " image is needed")
    values = numpy_support.vtk_to_numpy(scalars).reshape(dims[::-1]) if scalars is not None else np.zeros(0)
    if binary:
        values = ((values != 0) if label is None else (values == label)).astype(np.uint8)  # (k, j, i)
        if not values.any():
            what = "no painted voxels" if label is None else f"no voxels of label {label}"
            raise InputError(name, f"is empty ({what})")
    else:
        if values.size == 0:
            raise InputError(name, "holds no voxels")
        values = values.astype(np.float32)
        if not np.isfinite(values).all():
            raise InputError(name, "holds NaN or infinite values")
    index_to_lps = RAS_LPS_4 @ index_to_ras
    spacing = np.linalg.norm(index_to_lps[:3, :3], axis=0)
    direction = index_to_lps[:3, :3] / spacing
    origin = index_to_lps[:3, :3] @ np.array(extent[::2], dtype=np.float64) + index_to_lps[:3, 3]
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.ravel().tolist())
    image.SetOrigin(origin.tolist())
    return image


def _read_volume(scene, volume_node_id: str, label: int | None, binary: bool) -> sitk.Image:
    node = _get_node(scene, volume_node_id, "vtkMRMLScalarVolumeNode", "volume")
    if node.GetImageData() is None:
        raise InputError(node.GetName(), "holds no image data")
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    index_to_ras = _to_world(node) @ arrayFromVTKMatrix(ijk_to_ras)
    return _image_data_to_sitk(node.GetImageData(), index_to_ras, node.GetName(), label, binary)


def read_volume_mask(scene, volume_node_id: str, label: int | None = None) -> sitk.Image:
    """A labelmap (or scalar) volume node as a binary SimpleITK mask in LPS, world geometry.

    ``label=None`` takes every non-zero voxel.
    """
    return _read_volume(scene, volume_node_id, label, binary=True)


def read_volume_image(scene, volume_node_id: str) -> sitk.Image:
    """A scalar volume node's intensities as a float32 SimpleITK image in LPS, world geometry."""
    return _read_volume(scene, volume_node_id, None, binary=False)


def read_segment_mask(scene, segmentation_node_id: str, segment_id: str) -> sitk.Image:
    """One segment's binary labelmap as a SimpleITK mask (its own grid, LPS, world geometry)."""
    node = _get_node(scene, segmentation_node_id, "vtkMRMLSegmentationNode", "segmentation")
    segment = node.GetSegmentation().GetSegment(segment_id) if segment_id else None
    if segment is None:
        raise InputError(node.GetName(), f"has no segment {segment_id!r}")
    name = f"{node.GetName()}/{segment.GetName()}"
    labelmap = slicer.vtkOrientedImageData()
    if not node.GetBinaryLabelmapRepresentation(segment_id, labelmap):
        node.CreateBinaryLabelmapRepresentation()
        if not node.GetBinaryLabelmapRepresentation(segment_id, labelmap):
            raise InputError(name, "has no binary labelmap representation")
    image_to_world = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(image_to_world)
    return _image_data_to_sitk(labelmap, _to_world(node) @ arrayFromVTKMatrix(image_to_world), name)


def add_labelmap_node(scene, mask: sitk.Image, name: str = "mask") -> str:
    """Add a SimpleITK label image (LPS) as a labelmap volume node; return its id."""
    return add_volume_node(scene, mask, name, "vtkMRMLLabelMapVolumeNode")


def add_volume_node(scene, image: sitk.Image, name: str = "volume", class_name: str = "vtkMRMLScalarVolumeNode") -> str:
    """Add a SimpleITK scalar image (LPS) as a volume node of ``class_name``; return its id."""
    array = np.ascontiguousarray(sitk.GetArrayFromImage(image))  # (k, j, i): i varies fastest, as in VTK
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(*image.GetSize())
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    scalars.SetName("ImageScalars")
    image_data.GetPointData().SetScalars(scalars)
    node = scene.AddNewNodeByClass(class_name, scene.GenerateUniqueName(name))
    node.SetIJKToRASMatrix(vtkMatrixFromArray(RAS_LPS_4 @ index_to_physical(image)))
    node.SetAndObserveImageData(image_data)
    node.CreateDefaultDisplayNodes()
    return node.GetID()


def read_painted_segment_annotation(scene, segmentation_node_id: str, segment_id: str) -> Annotation:
    """Contours around the painted slices of a segment (Segment Editor strokes on a few slices)."""
    mask = read_segment_mask(scene, segmentation_node_id, segment_id)
    node = scene.GetNodeByID(segmentation_node_id)
    label = node.GetSegmentation().GetSegment(segment_id).GetName()
    source = f"{node.GetName()}/{label}"
    curves = painted_slice_contours(mask, source)
    group_planes(curves, source)
    return Annotation(curves=curves, source=source, label=label)


def read_mask_node(scene, node_id: str, segment_id: str | None = None,
                   label: int | None = None) -> tuple[sitk.Image, str, str]:
    """(mask, source, name) of a segment of a segmentation node, or of a labelmap volume node."""
    node = scene.GetNodeByID(node_id) if node_id else None
    if node is not None and node.IsA("vtkMRMLSegmentationNode"):
        mask = read_segment_mask(scene, node_id, segment_id)
        name = node.GetSegmentation().GetSegment(segment_id).GetName()
        return mask, f"{node.GetName()}/{name}", name
    mask = read_volume_mask(scene, node_id, label)
    name = scene.GetNodeByID(node_id).GetName()
    return mask, name, name


def refine_mask_in_scene(
    scene, node_id: str, model: str | os.PathLike, segment_id: str | None = None, label: int | None = None,
    progress: Progress | None = None, should_stop: ShouldStop | None = None, **outputs,
) -> dict:
    """Refine a mask node (segment or labelmap) with :func:`~shapeprior.fit.refine_mask.refine_mask`;
    the model node is coloured by distance to the mask boundary. Node ids and ``report`` as in
    :func:`add_surface_to_scene` (``outputs`` likewise)."""
    from ..fit.refine_mask import refine_mask

    mask, source, _ = read_mask_node(scene, node_id, segment_id, label)
    refined = refine_mask(mask, model, source, progress=progress, should_stop=should_stop)
    return add_refinement_to_scene(scene, refined, **outputs)


def add_refinement_to_scene(scene, refined, **outputs) -> dict:
    """Write a :class:`~shapeprior.fit.refine_mask.MaskRefinement` to the scene: the model node is
    coloured by the signed distance of its vertices to the mask boundary (the report's). Node ids and
    ``report`` as in :func:`add_surface_to_scene`."""
    from ..fit.refine_mask import DISTANCE_ARRAY as MASK_DISTANCE_ARRAY

    written = add_surface_to_scene(scene, refined.mesh, refined.report["organ"], refined.distances,
                                   MASK_DISTANCE_ARRAY, **outputs)
    report = {**refined.report, "warnings": refined.warnings + written.pop("warnings")}
    return {**written, "report": report}


# --------------------------------------------------------------------------- fitting


def run_fit(
    annotation: Annotation,
    model: str | os.PathLike = "liver",
    settings: FitSettings = FitSettings(),
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
) -> DALSFit:
    """Fit the model to the annotation; touches no MRML (safe in a worker thread)."""
    if annotation.points is not None:
        return fit_points(annotation.points, model, settings, annotation.source, progress, should_stop)
    return fit_curves(annotation.curves, model, settings, annotation.source, progress, should_stop)


class BackgroundJob:
    """``work(progress, should_stop)`` in a worker thread; the main thread polls it and collects the outcome.

    ``cancel()`` makes the work raise :class:`~shapeprior.fit.dals_fit.FitCancelled` at its
    next step; :meth:`result` re-raises whatever the worker raised.
    """

    def __init__(self, work: Callable[[Progress, ShouldStop], object]):
        self._stop = threading.Event()
        self._progress: tuple[float, str] = (0.0, "loading the model")
        self._result = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name="shapeprior-fit", daemon=True)

    def _run(self, work) -> None:
        try:
            self._result = work(self._report, self._stop.is_set)
        except BaseException as exc:  # handed to the main thread by result()
            self._error = exc

    def _report(self, fraction: float, stage: str) -> None:
        self._progress = (fraction, stage)  # one reference assignment: atomic

    def start(self) -> "BackgroundJob":
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._stop.set()

    @property
    def cancelled(self) -> bool:
        return self._stop.is_set()

    @property
    def progress(self) -> tuple[float, str]:
        """(fraction done, stage name) of the latest step."""
        return self._progress

    @property
    def done(self) -> bool:
        return self._thread.ident is not None and not self._thread.is_alive()

    def result(self, timeout: float | None = None):
        """Wait for the worker (up to ``timeout`` s) and return its result or raise its error."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("the fit is still running")
        if self._error is not None:
            raise self._error
        return self._result


class FitJob(BackgroundJob):
    """:func:`run_fit` of an annotation in a worker thread (see :class:`BackgroundJob`)."""

    def __init__(self, annotation: Annotation, model: str | os.PathLike = "liver", settings: FitSettings = FitSettings()):
        self.annotation = annotation
        super().__init__(lambda progress, stop: run_fit(annotation, model, settings, progress, stop))


class MaskRefineJob(BackgroundJob):
    """:func:`~shapeprior.fit.refine_mask.refine_mask` of a mask read beforehand (main thread) in a
    worker thread; :func:`add_refinement_to_scene` writes the result (main thread again)."""

    def __init__(self, mask: sitk.Image, source: str, model: str | os.PathLike = "liver"):
        from ..fit.refine_mask import refine_mask

        super().__init__(lambda progress, stop: refine_mask(mask, model, source, progress=progress, should_stop=stop))


class ImageFitJob(BackgroundJob):
    """A DISSM fit of an image in a worker thread; ``image`` is read from the scene beforehand
    (main thread) and :func:`add_image_fit_to_scene` writes the result (main thread again)."""

    def __init__(self, image: sitk.Image, source: str, model: str | os.PathLike = "hippocampus",
                 stages: Sequence[str] | None = None, volume_node_id: str | None = None):
        from ..fit.image_fit import DISSMModel, fit_image
        from ..models.bundle import load_bundle

        self.source = source
        self.volume_node_id = volume_node_id  # the segmentation's reference geometry when written
        self.bundle = load_bundle(model, kind="dissm")
        dissm = DISSMModel.from_bundle(self.bundle)
        super().__init__(lambda progress, stop: fit_image(dissm, image, stages, source=source, progress=progress,
                                                          should_stop=stop))


# --------------------------------------------------------------------------- surfaces


def _point_array(values: np.ndarray, name: str):
    array = numpy_support.numpy_to_vtk(np.ascontiguousarray(values, dtype=np.float64), deep=True)
    array.SetName(name)
    return array


def surface_polydata(
    mesh_lps: trimesh.Trimesh, distances: np.ndarray | None = None, normals: bool = False,
    distance_name: str = DISTANCE_ARRAY,
) -> vtk.vtkPolyData:
    """vtkPolyData in RAS (double precision) of a triangle mesh in LPS; faces keep their order.

    ``distances`` (one per vertex, mm) becomes the point array ``distance_name``;
    ``normals`` adds outward vertex normals (smooth shading of a model node).
    """
    # RAS <-> LPS is a half-turn about z (determinant +1), so the faces keep their winding.
    poly = trimesh_to_polydata(trimesh.Trimesh(mesh_lps.vertices * RAS_TO_LPS, mesh_lps.faces, process=False), None)
    if distances is not None:
        poly.GetPointData().AddArray(_point_array(distances, distance_name))
    if normals:
        poly.GetPointData().SetNormals(_point_array(mesh_lps.vertex_normals * RAS_TO_LPS, "Normals"))
    return poly


def polydata_to_mesh(poly: vtk.vtkPolyData) -> trimesh.Trimesh:
    """Triangle mesh in LPS from a vtkPolyData in RAS (inverse of :func:`surface_polydata`)."""
    if poly is None or poly.GetNumberOfPoints() == 0:
        raise InputError(None, "the surface has no points")
    mesh = polydata_to_trimesh(poly)
    return trimesh.Trimesh(mesh.vertices * RAS_TO_LPS, mesh.faces, process=False)


def annotation_distances(mesh_lps: trimesh.Trimesh, points_lps: np.ndarray) -> np.ndarray:
    """Distance (mm) from each vertex to the nearest annotation point."""
    distances, _ = cKDTree(np.asarray(points_lps, dtype=np.float64)).query(np.asarray(mesh_lps.vertices))
    return distances


def _show_distances(model_node, distances: np.ndarray, name: str) -> None:
    """Colour the model by its point array ``name``: 0 to the 95th percentile, or symmetric
    about 0 when the distances are signed (NaN, e.g. outside an image, is ignored)."""
    display = model_node.GetDisplayNode()
    display.SetActiveScalar(name, vtk.vtkAssignAttribute.POINT_DATA)
    display.SetScalarRangeFlag(display.UseManualScalarRange)
    top = max(5.0, float(np.nanpercentile(np.abs(distances), 95))) if np.isfinite(distances).any() else 5.0
    display.SetScalarRange(-top if np.nanmin(distances, initial=0.0) < 0 else 0.0, top)
    colors = model_node.GetScene().GetNodeByID("vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
    if colors is not None:  # in Slicer; slicer-core has no colour tables
        display.SetAndObserveColorNodeID(colors.GetID())
    display.SetScalarVisibility(True)
    display.SetVisibility2D(True)  # the surface's outline on the slice views


def _add_segment(segmentation_node, poly, name: str, replace: bool) -> tuple[str, Callable[[], None]]:
    """Add (or with ``replace`` swap in) a closed-surface segment; return its id and an undo."""
    segmentation = segmentation_node.GetSegmentation()
    old_id = segmentation.GetSegmentIdBySegmentName(name) if replace else ""
    if not old_id:
        segment_id = segmentation_node.AddSegmentFromClosedSurfaceRepresentation(poly, name, SEGMENT_COLOR)
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
    segmentation_node_id: str | None = None,
    model_node_id: str | None = None,
    segment_name: str | None = None,
    replace: bool = False,
    reference_volume_id: str | None = None,
) -> dict:
    """Write a surface (LPS mm) as a model node and a closed-surface segment.

    The model node is ``model_node_id`` (its surface replaced) or a new ``<organ> surface``;
    with ``distances`` (V,) mm it gets them as the point array ``distance_name`` and is coloured
    by them. The segment goes to ``segmentation_node_id`` or a new segmentation node whose
    source representation is set to closed surface first (so the surface is kept, not
    voxelised). It is named ``segment_name`` (default: the organ), made unique
    (``liver 2``) unless ``replace`` is set, in which case a segment of that name is
    swapped in place. On any error every change is undone.

    Returns ``{"model_node_id", "segmentation_node_id", "segment_id", "segment_name", "warnings"}``.
    """
    reference = _get_node(scene, reference_volume_id, "vtkMRMLVolumeNode", "volume") if reference_volume_id else None
    model_node = _get_node(scene, model_node_id, "vtkMRMLModelNode", "model") if model_node_id else None
    segmentation_node = (
        _get_node(scene, segmentation_node_id, "vtkMRMLSegmentationNode", "segmentation")
        if segmentation_node_id else None
    )
    # Everything that can fail on bad data is computed before the scene is changed.
    if distances is not None and len(distances) != len(mesh_lps.vertices):
        raise ValueError(f"{len(distances)} distances for {len(mesh_lps.vertices)} vertices")
    model_poly = surface_polydata(mesh_lps, distances, normals=True, distance_name=distance_name)
    segment_poly = surface_polydata(mesh_lps)
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
            _show_distances(model_node, distances, distance_name)

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
        "warnings": warnings,
    }


def add_fit_to_scene(scene, fit: DALSFit, annotation: Annotation | None = None, **outputs) -> dict:
    """Write a fit's surface to the scene (see :func:`add_surface_to_scene` for ``outputs``).

    Returns the node ids as :func:`add_surface_to_scene` does, plus ``report``: the fit's
    report with the output names and ``warnings`` (a model organ that differs from the
    annotated segment's name first, then the fit's, e.g. curves the surface does not follow).
    """
    organ = fit.bundle.organ
    points = annotation.qa_points(fit) if annotation is not None else None
    distances = annotation_distances(fit.result.mesh, points) if points is not None else None
    written = add_surface_to_scene(scene, fit.result.mesh, organ, distances, **outputs)
    warnings = fit.report.get("warnings", []) + written.pop("warnings")
    if annotation is not None and annotation.label and organ.lower() not in annotation.label.lower():
        warnings.insert(0, f"the model is a {organ} model but the annotation is segment {annotation.label!r}")
    report = {**fit.report, "warnings": warnings}
    report["outputs"] = {
        "model": scene.GetNodeByID(written["model_node_id"]).GetName(),
        "segmentation": scene.GetNodeByID(written["segmentation_node_id"]).GetName(),
        "segment": written["segment_name"],
    }
    if distances is not None:
        report["distance_to_annotation_mm"] = {"median": float(np.median(distances)), "max": float(distances.max())}
    return {**written, "report": report}


# --------------------------------------------------------------------------- one call


def fit_annotation_in_scene(
    scene,
    annotation: Annotation,
    model: str | os.PathLike = "liver",
    settings: FitSettings = FitSettings(),
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    **outputs,
) -> dict:
    """Fit an annotation read from the scene and write the result (:func:`run_fit`, then
    :func:`add_fit_to_scene`; ``outputs`` as in :func:`add_surface_to_scene`).

    Returns ``{"model_node_id", "segmentation_node_id", "segment_id", "segment_name", "report"}``.
    If the fit is cancelled (``should_stop``), :class:`~shapeprior.fit.dals_fit.FitCancelled`
    propagates and the scene is unchanged.
    """
    fit = run_fit(annotation, model, settings, progress, should_stop)
    return add_fit_to_scene(scene, fit, annotation, **outputs)


def fit_contours_in_scene(
    scene,
    curve_node_ids: Sequence[str],
    model: str | os.PathLike = "liver",
    segmentation_node_id: str | None = None,
    settings: FitSettings = FitSettings(),
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    **outputs,
) -> dict:
    """Closed-curve markups nodes -> fitted model node and segment (see :func:`fit_annotation_in_scene`).

    ``outputs``: ``model_node_id``, ``segment_name``, ``replace``, ``reference_volume_id``.
    """
    annotation = read_curve_annotation(scene, curve_node_ids)
    return fit_annotation_in_scene(
        scene, annotation, model, settings, progress, should_stop, segmentation_node_id=segmentation_node_id, **outputs,
    )


def fit_painted_segment_in_scene(
    scene,
    segmentation_node_id: str,
    segment_id: str,
    reference_volume_id: str | None = None,
    model: str | os.PathLike = "liver",
    output_segmentation_node_id: str | None = None,
    settings: FitSettings = FitSettings(),
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    **outputs,
) -> dict:
    """A segment painted on a few slices -> fitted model node and segment.

    The result goes to ``output_segmentation_node_id`` (default: a new segmentation node,
    so a painted labelmap segmentation is left as it is); see :func:`fit_annotation_in_scene`.
    """
    annotation = read_painted_segment_annotation(scene, segmentation_node_id, segment_id)
    return fit_annotation_in_scene(
        scene, annotation, model, settings, progress, should_stop,
        segmentation_node_id=output_segmentation_node_id, reference_volume_id=reference_volume_id, **outputs,
    )


def add_image_fit_to_scene(scene, fit, bundle, source: str, **outputs) -> dict:
    """Write a DISSM fit (:class:`~shapeprior.fit.image_fit.ImageFit`) to the scene; node ids and ``report``."""
    from ..fit.image_fit import fit_report

    written = add_surface_to_scene(scene, fit.mesh, bundle.organ, **outputs)
    report = fit_report(fit, bundle, source)
    report["warnings"] += written.pop("warnings")
    return {**written, "report": report}


def fit_image_in_scene(
    scene,
    volume_node_id: str,
    model: str | os.PathLike = "hippocampus",
    stages: Sequence[str] | None = None,
    progress: Progress | None = None,
    should_stop: ShouldStop | None = None,
    **outputs,
) -> dict:
    """An image volume node -> the DISSM fit's model node and segment (``outputs`` as in
    :func:`add_surface_to_scene`; the volume is the segmentation's reference geometry).

    Returns the node ids as :func:`add_surface_to_scene` does, plus ``report`` (pose per stage,
    time, warnings such as an unusual intensity range).
    """
    from ..fit.image_fit import DISSMModel, fit_image
    from ..models.bundle import load_bundle

    image = read_volume_image(scene, volume_node_id)
    source = scene.GetNodeByID(volume_node_id).GetName()
    bundle = load_bundle(model, kind="dissm")
    fit = fit_image(DISSMModel.from_bundle(bundle), image, stages, source=source, progress=progress,
                    should_stop=should_stop)
    outputs.setdefault("reference_volume_id", volume_node_id)
    return add_image_fit_to_scene(scene, fit, bundle, source, **outputs)
