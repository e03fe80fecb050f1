"""The ShapePriorSegment module's parts other than its panel, split by concern.

Qt-free and importable outside Slicer (with slicer-core):

- :mod:`.logic`: the Logic (everything the panel does, without GUI) and its constants;
- :mod:`.fitrequest`: which fit job the panel starts, where its result goes;
- :mod:`.results`: a finished fit's status line, warnings and residuals table rows;
- :mod:`.sampledata`: the sample case in the Sample Data module (``SampleData`` imported when called).

Needing the Slicer application, imported by the module file only:

- :mod:`.parameters`: the panel's parameter node (``parameterNodeWrapper``) and the Logic typed with it;
- :mod:`.selftest`: the self-test, ``ShapePriorSegmentTest``.
"""

from .logic import (
    ANNOTATION_MODES,
    LOAD_MODEL_ITEM,
    PIP_REQUIREMENTS,
    SAMPLE_CONTOURS,
    TORCH_REQUIREMENT,
    ShapePriorSegmentLogic,
    resourcePath,
)

__all__ = [
    "ANNOTATION_MODES",
    "LOAD_MODEL_ITEM",
    "PIP_REQUIREMENTS",
    "SAMPLE_CONTOURS",
    "TORCH_REQUIREMENT",
    "ShapePriorSegmentLogic",
    "resourcePath",
]
