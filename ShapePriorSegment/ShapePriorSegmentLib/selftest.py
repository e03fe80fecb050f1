"""The module's self-test; it needs the Slicer application.

Slicer looks the test up as ``ShapePriorSegmentTest`` in the module file (``slicer_add_python_unittest``
and "Reload and Test"), which imports it from here.
"""

import logging

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

from .logic import ShapePriorSegmentLogic
from .sampledata import SAMPLE_NAME, registerSampleData


class ShapePriorSegmentTest(ScriptedLoadableModuleTest):
    """Self-test: the sample case from the Sample Data module, then through the Logic's fit."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SampleContoursGiveModelAndSegment()

    def test_SampleContoursGiveModelAndSegment(self):
        self.delayDisplay("Loading the sample case")
        import SampleData

        registerSampleData()
        source = SampleData.SampleDataLogic().sourceForSampleName(SAMPLE_NAME)
        curveNodes, paintedNode = source.customDownloader(source)
        self.assertEqual([node.GetName() for node in curveNodes], [f"liver contour {i}" for i in (1, 2, 3)])
        self.assertEqual(paintedNode.GetSegmentation().GetNthSegment(0).GetName(), "liver")

        # Build machines cannot install the Python packages (pip_ensure skips in testing mode) and
        # the fit needs them: skip it there, as other extensions' self-tests skip their AI models.
        logic = ShapePriorSegmentLogic()
        missing = logic.missingDependencies()
        if missing:
            message = "ShapePriorSegment self-test: fit skipped, missing Python packages: " + ", ".join(missing)
            logging.warning(message)
            self.delayDisplay(message)
            return

        self.delayDisplay("Fitting the liver model")
        from shapeprior.settings import FitSettings

        result = logic.process(curveNodes, "liver", settings=FitSettings(level=3, global_steps=20, vertex_steps=20))
        model = slicer.mrmlScene.GetNodeByID(result["model_node_id"])
        self.assertGreater(model.GetPolyData().GetNumberOfPoints(), 100)
        segmentation = slicer.mrmlScene.GetNodeByID(result["segmentation_node_id"]).GetSegmentation()
        segment = segmentation.GetSegment(result["segment_id"])
        self.assertIsNotNone(segment)
        self.assertEqual(segment.GetName(), "liver")
        self.assertEqual(segmentation.GetSourceRepresentationName(), "Closed surface")
        self.assertEqual(len(result["report"]["residuals"]), len(curveNodes))
        self.delayDisplay("Test passed")
