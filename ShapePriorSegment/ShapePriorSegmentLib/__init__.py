"""Qt-free parts of the ShapePriorSegment module (its Logic), importable outside Slicer."""

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
