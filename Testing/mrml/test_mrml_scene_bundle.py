"""``.mrb`` scene bundles for command-line users, reloaded with slicer-core."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("slicer_core", reason="needs the slicer-core wheel (real MRML)")

import SimpleITK as sitk  # noqa: E402
import vtk  # noqa: E402
from vtkmodules.util import numpy_support  # noqa: E402

from shapeprior.errors import InputError  # noqa: E402
from shapeprior import mrml as bridge  # noqa: E402
from shapeprior.mrml.scene import nodes_by_class, read_scene_bundle, write_scene_bundle  # noqa: E402


@pytest.fixture(scope="module")
def volume_path(tmp_path_factory, helpers):
    image = helpers.ellipsoid_image(
        (100.0, 80.0, 70.0), spacing=(8.0, 8.0, 10.0), direction=helpers.rotation(15.0), centre=(20.0, -30.0, 40.0),
    )
    path = tmp_path_factory.mktemp("volume") / "ct.nii.gz"
    sitk.WriteImage(sitk.Cast(image, sitk.sitkInt16) * 100, str(path))
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, core_fit, liver_curves, volume_path):
    path = tmp_path_factory.mktemp("out") / "result.mrb"
    written = write_scene_bundle(path, core_fit, volume_path)
    assert written == path
    return path


def test_bundle_holds_volume_curves_model_and_segment(bundle, core_fit, liver_curves, volume_path, helpers):
    assert helpers.temp_files(bundle.parent) == [] and sorted(p.name for p in bundle.parent.iterdir()) == ["result.mrb"]
    scene = read_scene_bundle(bundle)

    (volume,) = nodes_by_class(scene, "vtkMRMLScalarVolumeNode")
    assert volume.GetName() == "ct"
    image = sitk.ReadImage(str(volume_path))
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    for index in [(0, 0, 0), (5, 3, 2)]:
        ras = ijk_to_ras.MultiplyPoint((*index, 1.0))[:3]
        np.testing.assert_allclose(ras, np.array(image.TransformIndexToPhysicalPoint(index)) * [-1, -1, 1], atol=1e-4)

    curve_nodes = nodes_by_class(scene, "vtkMRMLMarkupsClosedCurveNode")
    assert [n.GetName() for n in curve_nodes] == ["Contour 1", "Contour 2", "Contour 3"]
    read = bridge.read_closed_curves(scene, [n.GetID() for n in curve_nodes])
    for got, expected in zip(read, liver_curves):
        np.testing.assert_allclose(got, expected, atol=1e-6)

    (model,) = nodes_by_class(scene, "vtkMRMLModelNode")
    mesh = bridge.polydata_to_mesh(model.GetPolyData())
    np.testing.assert_allclose(mesh.vertices, core_fit.mesh.vertices, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(mesh.faces, core_fit.mesh.faces)
    distances = model.GetPolyData().GetPointData().GetArray(bridge.DISTANCE_ARRAY)
    assert distances is not None and numpy_support.vtk_to_numpy(distances).min() >= 0

    (segmentation_node,) = nodes_by_class(scene, "vtkMRMLSegmentationNode")
    segmentation = segmentation_node.GetSegmentation()
    assert segmentation.GetSourceRepresentationName() == bridge.CLOSED_SURFACE
    assert segmentation.GetNumberOfSegments() == 1 and segmentation.GetNthSegment(0).GetName() == "liver"
    surface = bridge.polydata_to_mesh(segmentation.GetNthSegment(0).GetRepresentation(bridge.CLOSED_SURFACE))
    np.testing.assert_allclose(surface.vertices, core_fit.mesh.vertices, atol=1e-4, rtol=0)

    (report,) = nodes_by_class(scene, "vtkMRMLTextNode")
    assert report.GetName() == "liver fit report"
    assert json.loads(report.GetText())["residuals"] == json.loads(json.dumps(core_fit.report["residuals"]))


def test_bundle_without_volume(tmp_path, core_fit, liver_curves):
    path = write_scene_bundle(tmp_path / "plain.mrb", core_fit)
    scene = read_scene_bundle(path)
    assert nodes_by_class(scene, "vtkMRMLScalarVolumeNode") == [] and len(nodes_by_class(scene, "vtkMRMLTextNode")) == 1
    assert len(nodes_by_class(scene, "vtkMRMLMarkupsClosedCurveNode")) == 3


def test_bad_bundle_requests_write_nothing(tmp_path, core_fit, liver_curves, helpers):
    with pytest.raises(InputError, match="must end in .mrb"):
        write_scene_bundle(tmp_path / "result.zip", core_fit)
    with pytest.raises(InputError, match="no such file"):
        write_scene_bundle(tmp_path / "r.mrb", core_fit, tmp_path / "missing.nii.gz")
    (tmp_path / "not-an-image.nii.gz").write_text("hello")
    with pytest.raises(InputError, match="not a volume Slicer can read"):
        write_scene_bundle(tmp_path / "r.mrb", core_fit, tmp_path / "not-an-image.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-an-image.nii.gz"]
    with pytest.raises(InputError, match="no such file"):
        read_scene_bundle(tmp_path / "missing.mrb")
    with pytest.raises(InputError, match="not a readable Slicer scene bundle"):
        read_scene_bundle(tmp_path / "not-an-image.nii.gz")
