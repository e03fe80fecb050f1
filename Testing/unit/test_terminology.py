"""Segment terminology strings for the bundled models' organs."""

import pytest

from shapeprior.mrml.terminology import terminology_entry

LIVER = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
         "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^")


def test_liver_is_the_general_anatomy_entry_slicer_writes():
    assert terminology_entry("liver") == LIVER
    assert terminology_entry(" Liver ") == LIVER


def test_hippocampus_is_coded_from_the_dicom_master_list():
    parts = terminology_entry("hippocampus").split("~")
    assert len(parts) == 7
    assert parts[0] == "Segmentation category and type - DICOM master list"
    assert parts[1:4] == ["SCT^123037004^Anatomical Structure", "SCT^5366008^Hippocampus", "^^"]


def test_unknown_organ_has_no_entry():
    assert terminology_entry("blob") is None


@pytest.mark.parametrize("organ, meaning", [("liver", "Liver"), ("hippocampus", "Hippocampus")])
def test_slicer_reads_and_writes_the_entry_unchanged(organ, meaning):
    pytest.importorskip("slicer_core")
    import slicer

    entry = slicer.vtkSlicerTerminologyEntry()
    logic = slicer.vtkSlicerTerminologiesModuleLogic
    assert logic.DeserializeTerminologyEntry(terminology_entry(organ), entry)
    assert entry.GetCategoryObject().GetCodeValue() == "123037004"
    assert entry.GetTypeObject().GetCodeMeaning() == meaning
    assert logic.SerializeTerminologyEntry(entry) == terminology_entry(organ)
