"""Labelmap volumes and segments <-> SimpleITK masks, with non-identity direction matrices."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer_core", reason="needs the slicer-core wheel (real MRML)")

import SimpleITK as sitk  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

from shapeprior.fit.refine_mask import DISTANCE_ARRAY as MASK_DISTANCE_ARRAY  # noqa: E402
from shapeprior.fit.run import fit_curves  # noqa: E402
from shapeprior.io.labelmaps import painted_slice_contours  # noqa: E402
from shapeprior import mrml as bridge  # noqa: E402


@pytest.fixture(scope="module")
def oblique_mask(helpers):
    """Liver-sized ellipsoid on an anisotropic grid with a rotated direction matrix."""
    return helpers.ellipsoid_image(
        (100.0, 80.0, 70.0), spacing=(6.0, 5.0, 7.0), direction=helpers.rotation(25.0), centre=(15.0, -40.0, 60.0),
    )


def physical_voxels(mask: sitk.Image) -> np.ndarray:
    """LPS centres (N, 3) of the mask's non-zero voxels, sorted."""
    kji = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)
    points = np.array([mask.TransformIndexToPhysicalPoint([int(v) for v in ijk]) for ijk in kji[:, ::-1]])
    return points[np.lexsort(points.T[::-1])]


def test_labelmap_volume_round_trips_with_direction(scene, oblique_mask):
    node_id = bridge.add_labelmap_node(scene, oblique_mask, "cnn")
    node = scene.GetNodeByID(node_id)
    assert node.IsA("vtkMRMLLabelMapVolumeNode")
    # The node's IJK -> RAS is the image's index -> LPS with x and y negated.
    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    index = (3, 7, 2)
    ras = ijk_to_ras.MultiplyPoint((*index, 1.0))[:3]
    np.testing.assert_allclose(ras, np.array(oblique_mask.TransformIndexToPhysicalPoint(index)) * [-1, -1, 1], atol=1e-9)

    back = bridge.read_volume_mask(scene, node_id)
    assert back.GetSize() == oblique_mask.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), oblique_mask.GetSpacing(), atol=1e-9)
    np.testing.assert_allclose(back.GetOrigin(), oblique_mask.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(back.GetDirection(), oblique_mask.GetDirection(), atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(oblique_mask))


def test_label_selection_and_parent_transform(scene, oblique_mask):
    labels = sitk.GetArrayFromImage(oblique_mask) * 3
    half = labels.shape[2] // 2
    labels[:, :, :half] = np.where(labels[:, :, :half] > 0, 5, 0)
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(oblique_mask)
    node_id = bridge.add_labelmap_node(scene, image, "labels")
    only5 = sitk.GetArrayFromImage(bridge.read_volume_mask(scene, node_id, label=5))
    np.testing.assert_array_equal(only5, labels == 5)

    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(2, 3, 12.0)  # 12 mm superior, the same in RAS and LPS
    transform.SetMatrixTransformToParent(matrix)
    scene.GetNodeByID(node_id).SetAndObserveTransformNodeID(transform.GetID())
    moved = bridge.read_volume_mask(scene, node_id)
    np.testing.assert_allclose(moved.GetOrigin(), np.array(oblique_mask.GetOrigin()) + [0, 0, 12.0], atol=1e-9)


def test_segment_reads_back_as_the_same_physical_mask(scene, oblique_mask):
    labelmap = scene.GetNodeByID(bridge.add_labelmap_node(scene, oblique_mask, "painted"))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    mask = bridge.read_segment_mask(scene, segmentation.GetID(), segment_id)
    # The segment's labelmap may be cropped to its extent: compare voxel centres in space.
    np.testing.assert_allclose(physical_voxels(mask), physical_voxels(oblique_mask), atol=1e-6)


def painted_segment(scene, mask: sitk.Image, name: str = "liver") -> tuple[str, str, sitk.Image]:
    """Keep one slice along k and one along i of ``mask`` and import it as a segment."""
    array = sitk.GetArrayFromImage(mask)
    painted = np.zeros_like(array)
    k, _, i = (s // 2 for s in array.shape)
    painted[k] = array[k]
    painted[:, :, i] = array[:, :, i]
    image = sitk.GetImageFromArray(painted)
    image.CopyInformation(mask)
    labelmap = scene.GetNodeByID(bridge.add_labelmap_node(scene, image, name))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "painting")
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
    segmentation.GetSegmentation().GetSegment(segment_id).SetName(name)
    scene.RemoveNode(labelmap)
    return segmentation.GetID(), segment_id, image


def test_painted_segment_fit_matches_the_core(scene, oblique_mask, tiny_model, settings):
    segmentation_id, segment_id, painted = painted_segment(scene, oblique_mask)
    out = bridge.fit_painted_segment_in_scene(scene, segmentation_id, segment_id, model=tiny_model, settings=settings)
    expected = fit_curves(painted_slice_contours(painted), tiny_model, settings)
    mesh = bridge.polydata_to_mesh(scene.GetNodeByID(out["model_node_id"]).GetPolyData())
    np.testing.assert_allclose(mesh.vertices, expected.mesh.vertices, atol=1e-4, rtol=0)
    assert out["segmentation_node_id"] != segmentation_id  # the painting is left as it is
    assert scene.GetNodeByID(segmentation_id).GetSegmentation().GetNumberOfSegments() == 1
    assert out["report"]["warnings"] == []


def test_organ_differing_from_the_segment_name_warns(scene, oblique_mask, tiny_model, settings):
    segmentation_id, segment_id, _ = painted_segment(scene, oblique_mask, name="spleen")
    out = bridge.fit_painted_segment_in_scene(scene, segmentation_id, segment_id, model=tiny_model, settings=settings)
    assert "liver model" in out["report"]["warnings"][0] and "spleen" in out["report"]["warnings"][0]
    assert out["segment_name"] == "liver"


def test_cnn_mask_is_refined_with_the_shape_prior(scene, helpers, one_torch_thread):
    """A labelmap node with a leak -> refined liver model + segment; the leak is mostly dropped."""
    from shapeprior.bench.mask_failures import failure_mask

    liver_like = helpers.ellipsoid_image((90.0, 75.0, 60.0), spacing=(3.0, 3.0, 3.0))
    leaky = failure_mask(liver_like, "leak", 0)
    node_id = bridge.add_labelmap_node(scene, leaky, "cnn liver")
    out = bridge.refine_mask_in_scene(scene, node_id, "liver")
    model = scene.GetNodeByID(out["model_node_id"])
    # Coloured by the report's signed distances to the mask boundary, on a range symmetric about 0.
    signed = numpy_support.vtk_to_numpy(model.GetPolyData().GetPointData().GetArray(MASK_DISTANCE_ARRAY))
    assert signed.min() < 0 < signed.max()
    display = model.GetDisplayNode()
    assert display.GetActiveScalarName() == MASK_DISTANCE_ARRAY
    low, high = display.GetScalarRange()
    assert low == -high and high >= 5.0
    assert out["report"]["route"] == "dals" and out["report"]["removed_ml"] > 0
    segmentation = scene.GetNodeByID(out["segmentation_node_id"]).GetSegmentation()
    assert segmentation.GetSegment(out["segment_id"]).GetName() == "liver"


def test_refine_mask_scene_bundle_holds_the_image_model_and_segment(helpers, tmp_path, one_torch_thread):
    from shapeprior.bench.mask_failures import failure_mask
    from shapeprior.cli import main
    from shapeprior.mrml.scene import nodes_by_class, read_scene_bundle

    truth = helpers.ellipsoid_image((90.0, 75.0, 60.0), spacing=(3.0, 3.0, 3.0))
    sitk.WriteImage(failure_mask(truth, "hole", 0), str(tmp_path / "mask.nii.gz"))
    image = sitk.Cast(truth, sitk.sitkFloat32) * 100.0
    sitk.WriteImage(image, str(tmp_path / "ct.nii.gz"))
    assert main(["-q", "refine-mask", str(tmp_path / "mask.nii.gz"), "--model", "liver", "--image",
                 str(tmp_path / "ct.nii.gz"), "--out-scene", str(tmp_path / "r.mrb")]) == 0
    scene = read_scene_bundle(tmp_path / "r.mrb")
    assert len(nodes_by_class(scene, "vtkMRMLScalarVolumeNode")) == 1
    (model,) = nodes_by_class(scene, "vtkMRMLModelNode")
    assert model.GetPolyData().GetPointData().GetArray(MASK_DISTANCE_ARRAY) is not None
    assert len(nodes_by_class(scene, "vtkMRMLSegmentationNode")) == 1


def test_template_model_refines_a_mask_into_the_organ_and_its_subregions(scene, image_dataset, trained,
                                                                          one_torch_thread):
    """A template model with sub-regions: the organ segment, one segment per sub-region (closed surfaces
    that split the organ), and the template coordinates on the model node."""
    from shapeprior.io import read_mask

    truth = read_mask(min((image_dataset["root"] / "labels").iterdir()), [1, 2])
    node_id = bridge.add_labelmap_node(scene, truth, "cnn blob")
    out = bridge.refine_mask_in_scene(scene, node_id, str(trained))
    segmentation = scene.GetNodeByID(out["segmentation_node_id"]).GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert names == ["blob", "blob right", "blob left"] and len(out["part_segment_ids"]) == 2
    organ = segmentation.GetSegment(out["segment_id"]).GetRepresentation("Closed surface")
    volumes = []
    for part_id in out["part_segment_ids"]:
        poly = segmentation.GetSegment(part_id).GetRepresentation("Closed surface")
        mesh = bridge.polydata_to_mesh(poly)
        assert mesh.is_watertight
        volumes.append(mesh.volume)
    whole = bridge.polydata_to_mesh(organ).volume
    assert min(volumes) > 0.2 * whole and sum(volumes) == pytest.approx(whole, rel=0.15)
    coordinates = scene.GetNodeByID(out["model_node_id"]).GetPolyData().GetPointData().GetArray("TemplateCoordinates")
    assert coordinates.GetNumberOfComponents() == 3
    assert out["report"]["subregions"] == {"1": "right", "2": "left"}
