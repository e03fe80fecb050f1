"""The sample case in Slicer's Sample Data module.

The module registers :func:`registerSampleData` when Slicer has started. ``SampleData`` and
``slicer.util`` are imported when called, so this file imports outside Slicer too.
"""

import slicer

from .logic import ShapePriorSegmentLogic, _, resourcePath

SAMPLE_NAME = "ShapePriorSegmentLiver"


def registerSampleData() -> None:
    """The sample case in the Sample Data module: three contours of a liver and the same liver
    painted on three slices, loaded with one click."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="ShapePriorSegment",
        sampleName=SAMPLE_NAME,
        thumbnailFileName=resourcePath("Icons/ShapePriorSegment.png"),
        # The files ship with the extension: nothing to download, the loader reads them in place.
        uris=[],
        fileNames=[],
        nodeNames=[],
        customDownloader=loadSample,
    )


def loadSample(source=None) -> tuple:
    """Sample Data's loader (it passes the sample's source) of the sample case:
    (the contour nodes, the painted segmentation node)."""
    with slicer.util.tryWithErrorDisplay(_("Could not load the ShapePriorSegment sample."), waitCursor=True):
        return ShapePriorSegmentLogic().loadSample()
