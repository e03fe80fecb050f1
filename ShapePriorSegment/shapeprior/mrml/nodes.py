"""MRML nodes <-> the core's arrays: closed curves, volumes, labelmaps and segments, in LPS mm.

Runs on the main thread (MRML may only be touched there); the :class:`Annotation` it returns
holds plain arrays that a worker thread may fit. MRML world coordinates are RAS, the core's
LPS (``io.frames``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from slicer.util import arrayFromVTKMatrix, vtkMatrixFromArray
from vtkmodules.util import numpy_support

from ..errors import InputError
from ..fit.contours import group_planes
from ..io.frames import RAS_LPS_4, RAS_TO_LPS, index_to_physical
from ..io.labelmaps import painted_slice_contours


@dataclass
class Annotation:
    """What the user drew, read from the scene on the main thread: closed planar ``curves`` (N_i, 3),
    LPS mm. Plain arrays, safe to hand to a worker thread.
    """

    curves: list[np.ndarray] = field(default_factory=list)
    source: str = "scene"  # node names, for messages and the report
    label: str | None = None  # name of the segment it came from, if any


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
