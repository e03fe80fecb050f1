"""DISSM and DeepSSM image fits through the MRML bridge: volume node in, model and segment nodes out (RAS), same as the core."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("slicer_core", reason="needs the slicer-core wheel (real MRML)")


def test_image_node_fit_matches_the_core_and_adds_one_model_and_segment(scene, image_dataset, mrml):
    from shapeprior.fit.image_fit import fit_image
    from shapeprior.mrml import add_volume_node, fit_image_in_scene, polydata_to_mesh, read_volume_image

    image = sitk.ReadImage(str(image_dataset["images"] / "case_03.nii.gz"))
    volume_id = add_volume_node(scene, image, "T1")
    read = read_volume_image(scene, volume_id)
    assert np.array_equal(sitk.GetArrayViewFromImage(read), sitk.GetArrayViewFromImage(image))
    assert np.allclose(read.GetOrigin(), image.GetOrigin()) and np.allclose(read.GetDirection(), image.GetDirection())

    before = mrml.node_ids(scene)
    out = fit_image_in_scene(scene, volume_id, image_dataset["refined"])
    added = mrml.node_ids(scene) - before
    assert out["model_node_id"] in added and out["segmentation_node_id"] in added
    assert [s["stage"] for s in out["report"]["stages"]][-1] == "refine"

    core = fit_image(image, image_dataset["refined"])
    mesh_lps = polydata_to_mesh(scene.GetNodeByID(out["model_node_id"]).GetPolyData())
    assert np.allclose(mesh_lps.vertices, core.mesh.vertices, atol=1e-3)  # RAS in the scene, LPS back out
    segmentation = scene.GetNodeByID(out["segmentation_node_id"])
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1


def test_image_node_with_nan_is_refused_and_nothing_is_added(scene, image_dataset, mrml):
    from shapeprior.errors import InputError
    from shapeprior.mrml import add_volume_node, fit_image_in_scene

    image = sitk.ReadImage(str(image_dataset["images"] / "case_03.nii.gz"))
    array = sitk.GetArrayFromImage(image)
    array[2, 2, 2] = np.nan
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(image)
    volume_id = add_volume_node(scene, bad, "broken")
    before = mrml.node_ids(scene)
    with pytest.raises(InputError, match="NaN"):
        fit_image_in_scene(scene, volume_id, image_dataset["refined"])
    assert mrml.node_ids(scene) == before


def test_deepssm_image_fit_through_the_bridge_and_the_logic_mode(scene, image_dataset, deepssm, mrml):
    from shapeprior.fit.deepssm_fit import fit_image_deepssm
    from shapeprior.mrml import add_volume_node, fit_image_in_scene, polydata_to_mesh

    image = sitk.ReadImage(str(image_dataset["images"] / "case_03.nii.gz"))
    volume_id = add_volume_node(scene, image, "T1")
    out = fit_image_in_scene(scene, volume_id, deepssm[1])
    assert out["report"]["method"] == "deepssm" and len(out["report"]["loadings"]) >= 1
    mesh_lps = polydata_to_mesh(scene.GetNodeByID(out["model_node_id"]).GetPolyData())
    assert np.allclose(mesh_lps.vertices, fit_image_deepssm(image, deepssm[1]).mesh.vertices, atol=1e-3)
