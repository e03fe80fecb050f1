"""Slicer segment terminology (DICOM codes) for the organs of the bundled models.

A segment's ``TerminologyEntry`` tag tells Slicer what it contains: the Segment Editor then
shows the standard name and color, and DICOM SEG export writes the codes. The value has seven
``~``-separated parts (context, category, type, type modifier, region context, region, region
modifier), each code a ``scheme^value^meaning`` triplet; see Slicer's segmentations developer
guide ("TerminologyEntry tag").
"""

from __future__ import annotations

ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
ANATOMICAL_STRUCTURE = "SCT^123037004^Anatomical Structure"
NO_CODE = "^^"

# Organ -> (terminology context that lists it, SNOMED CT type code). The liver is in the
# 3D Slicer General Anatomy list (the Segment Editor's default); the hippocampus only in the
# DICOM master list. No laterality modifier: the models do not know the side.
_ORGANS = {
    "liver": ("Segmentation category and type - 3D Slicer General Anatomy list", "SCT^10200004^Liver"),
    "hippocampus": ("Segmentation category and type - DICOM master list", "SCT^5366008^Hippocampus"),
}


def terminology_entry(organ: str) -> str | None:
    """The ``TerminologyEntry`` tag value for ``organ`` (a model's organ name); None if unknown."""
    known = _ORGANS.get(organ.strip().lower())
    if known is None:
        return None
    context, type_code = known
    return "~".join([context, ANATOMICAL_STRUCTURE, type_code, NO_CODE, ANATOMIC_CONTEXT, NO_CODE, NO_CODE])
