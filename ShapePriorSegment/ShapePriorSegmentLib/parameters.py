"""The panel's state, saved with the scene, and the Logic that hands it out typed.

Needs Slicer's ``parameterNodeWrapper``, which slicer-core lacks: the module file imports
this, the Qt-free ``ShapePriorSegmentLib`` package does not.
"""

from typing import Annotated

from slicer import vtkMRMLModelNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper

from .logic import ANNOTATION_MODES
from .logic import ShapePriorSegmentLogic as LogicWithoutParameterNode


@parameterNodeWrapper
class ShapePriorSegmentParameterNode:
    """The panel's state, saved with the scene.

    inputVolume - image the organ is delineated on (grid of the segment's labelmap).
    model - a bundled model's organ name, or the path of a .pt model bundle.
    annotationMode - "curves", "painted" (Segment Editor strokes), "mask" (CNN mask) or "image" (no annotation).
    outputSegmentation - receives the fitted segment (none: a new segmentation).
    level, globalSteps, vertexSteps, smoothness - fit settings.
    contourBlend - width (mm) of the blend that makes the surface pass through drawn contours (0: off).
    colorByDistance - color the fitted surface by its distance to the annotation.
    colorByUncertainty - color it by its uncertainty (mm) instead.
    placeByDeepSSM - image only: a bundled DeepSSM model places the DISSM model before its refinement.
    refineOnImage - CNN mask with a DISSM model: its fit is refined on the input volume too.
    resultModel, resultSegmentation, resultSegmentName - the last fit's outputs, updated by a refit.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = "liver"
    annotationMode: Annotated[str, Choice(list(ANNOTATION_MODES))] = "curves"
    outputSegmentation: vtkMRMLSegmentationNode
    level: Annotated[int, WithinRange(2, 6)] = 4
    globalSteps: Annotated[int, WithinRange(1, 2000)] = 80
    vertexSteps: Annotated[int, WithinRange(0, 5000)] = 40
    smoothness: Annotated[float, WithinRange(0.0, 1000.0)] = 1.0  # the core's range (FitSettings.lambda_dir)
    contourBlend: Annotated[float, WithinRange(0.0, 100.0)] = 10.0
    colorByDistance: bool = True
    colorByUncertainty: bool = False
    placeByDeepSSM: bool = False
    refineOnImage: bool = True
    resultModel: vtkMRMLModelNode
    resultSegmentation: vtkMRMLSegmentationNode
    resultSegmentName: str = ""


class ShapePriorSegmentLogic(LogicWithoutParameterNode):
    """The Logic of ``ShapePriorSegmentLib`` (importable and tested outside Slicer) plus the
    module's typed parameter node."""

    def getParameterNode(self):
        return ShapePriorSegmentParameterNode(super().getParameterNode())
