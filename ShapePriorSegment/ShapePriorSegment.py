"""ShapePriorSegment: a whole organ from a few contours, with a deep statistical shape prior.

A thin 3D Slicer front end. The computation lives in the pip-installable core package
``shapeprior`` beside this file; its Qt-free MRML bridge, the package ``shapeprior.mrml``
(``nodes``, ``writer``, ``workflows``, ``scene``), reads the annotation from the scene and
writes the model and segment back, and is tested with pytest against slicer-core. The
module's Logic and parameter node, its sample data, fit requests, result texts and self-test
are in ``ShapePriorSegmentLib``; this file only wires the panel to them.
"""

import logging
import os
import sys
import time

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if MODULE_DIR not in sys.path:  # the bundled core package sits beside this file
    sys.path.insert(0, MODULE_DIR)

from ShapePriorSegmentLib import ANNOTATION_MODES, LOAD_MODEL_ITEM, resourcePath  # noqa: E402  (MODULE_DIR on sys.path)
from ShapePriorSegmentLib.fitrequest import recordResult, startJob  # noqa: E402
# The module's Logic with its typed parameter node (the panel's state, saved with the scene).
from ShapePriorSegmentLib.parameters import ShapePriorSegmentLogic, ShapePriorSegmentParameterNode  # noqa: E402, F401
from ShapePriorSegmentLib.results import residualRows, warningsText  # noqa: E402
from ShapePriorSegmentLib.sampledata import registerSampleData  # noqa: E402
# Slicer runs the self-test by this name from the module file ("Reload and Test", slicer_add_python_unittest).
from ShapePriorSegmentLib.selftest import ShapePriorSegmentTest  # noqa: E402, F401


#
# ShapePriorSegment
#


class ShapePriorSegment(ScriptedLoadableModule):
    """Module description shown in Slicer's module list and help panel."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Shape Prior Segment")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["ShapePriorSegment developers (ShapePriorSegment)"]
        self.parent.helpText = _("""
Delineate a whole organ from a few contours. Draw closed curves on a few slices of at least two different views (for
example one axial, one sagittal and one coronal), or paint a few slices in the Segment Editor, or pick a CNN mask to
refine; choose the organ's shape model and press <b>Fit</b>. With <b>Image only</b>, an image-fitting model
finds the organ in the input volume without any annotation: hippocampus (tick <i>Place by DeepSSM first (faster)</i> to let
hippocampus-deepssm place it: as accurate, faster), or hippocampus-deepssm alone (fastest, less accurate). A
learned statistical shape prior completes the organ between the contours. The result is a smooth model and a segment (closed surface) named after the organ; the
<b>Quality check</b> section lists how far each contour is from the surface, colors the surface by its distance to the
annotation or by its uncertainty, and <b>Suggest next contour</b> shows the slice where one more contour helps most;
<b>Add contour and refit</b> refits from the last fit as soon as the new contour is finished.
""")
        self.parent.acknowledgementText = _("""
The shape priors follow <i>Deep Active Latent Surfaces for Medical Geometries</i> (DALS, 2022)
and <i>Deep Implicit Statistical Shape Models for 3D Medical Image Delineation</i>
(DISSM; Raju et al., AAAI 2022). The bundled liver model was trained on surfaces from
AMOS: A Large-Scale Abdominal Multi-Organ Benchmark (Ji et al., NeurIPS 2022) and is shared under
CC BY 4.0; the hippocampus model on the Medical Segmentation Decathlon Task04 (Simpson et al. 2019;
Antonelli et al. 2022) and is shared under CC BY-SA 4.0. The code is under the Apache License 2.0.
""")
        iconPath = resourcePath("Icons/ShapePriorSegment.png")
        if os.path.isfile(iconPath):  # the source tree keeps Resources one folder up
            self.parent.icon = qt.QIcon(iconPath)
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# ShapePriorSegmentWidget
#


def _withArrowCursor(ask):
    """``ask()`` (a question) with the normal cursor, though it is asked under a wait cursor."""
    qt.QApplication.setOverrideCursor(qt.QCursor(qt.Qt.ArrowCursor))
    try:
        return ask()
    finally:
        qt.QApplication.restoreOverrideCursor()


class ShapePriorSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel. The fit runs in a worker thread; a timer polls it on the GUI thread,
    which alone reads the inputs from the scene and writes the results to it."""

    # Slicer's GUI thread holds Python's GIL while it waits for events, so a Python worker thread
    # only runs while the GUI thread sleeps: each poll sleeps, and polls follow each other at once
    # (the panel still answers between them).
    POLL_INTERVAL_MS = 0
    GIL_YIELD_S = 0.01

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None  # the running BackgroundJob
        self._jobOutputs = {}
        self._jobCurveNames = []
        self._refitCurve = None  # the contour being drawn for "add contour and refit"
        self._pollTimer = None

    def resourcePath(self, filename: str) -> str:
        return resourcePath(filename)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ShapePriorSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ShapePriorSegmentLogic()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollFit)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(
            self.logic.interactionNode(), slicer.vtkMRMLInteractionNode.InteractionModeChangedEvent,
            self.onInteractionModeChanged,
        )

        self._populateModels()
        self.ui.modelComboBox.connect("activated(int)", self.onModelActivated)
        self.ui.curvesRadioButton.connect("toggled(bool)", lambda on: on and self.onAnnotationMode("curves"))
        self.ui.paintedRadioButton.connect("toggled(bool)", lambda on: on and self.onAnnotationMode("painted"))
        self.ui.maskRadioButton.connect("toggled(bool)", lambda on: on and self.onAnnotationMode("mask"))
        self.ui.imageRadioButton.connect("toggled(bool)", lambda on: on and self.onAnnotationMode("image"))
        self.ui.placeRedButton.connect("clicked(bool)", lambda: self.onPlaceContour("Red"))
        self.ui.placeYellowButton.connect("clicked(bool)", lambda: self.onPlaceContour("Yellow"))
        self.ui.placeGreenButton.connect("clicked(bool)", lambda: self.onPlaceContour("Green"))
        self.ui.contourNodesComboBox.connect("checkedNodesChanged()", self._checkCanFit)
        # The segment selectors keep their last segment ID when their segmentation goes: check both signals.
        for selector in (self.ui.paintedSegmentSelector, self.ui.maskSegmentSelector):
            selector.connect("currentSegmentChanged(QString)", self._checkCanFit)
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self._checkCanFit)
        self.ui.maskLabelmapSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._checkCanFit)
        self.ui.fitButton.connect("clicked(bool)", self.onFitButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.addContourButton.connect("clicked(bool)", self.onAddContourButton)
        self.ui.suggestButton.connect("clicked(bool)", self.onSuggestButton)
        self.ui.colorByDistanceCheckBox.connect("toggled(bool)", self.onColorBy)
        self.ui.colorByUncertaintyCheckBox.connect("toggled(bool)", self.onColorBy)
        self.ui.outputSegmentationSelector.connect(
            "currentNodeChanged(vtkMRMLNode*)", self.ui.segmentationShow3DButton.setSegmentationNode)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._stopJob()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self._refitCurve = None  # a contour finished after leaving the module starts no refit
        self.setParameterNode(None)

    def onReload(self) -> None:
        """Developer mode: re-import the core package and this module's Lib (Logic, self-test) too."""
        self._stopJob()
        for name in [n for n in sys.modules if n.split(".")[0] in ("shapeprior", "ShapePriorSegmentLib")]:
            del sys.modules[name]
        super().onReload()

    def onSceneStartClose(self, caller, event) -> None:
        self._stopJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ---------------------------------------------------------------- parameter node

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:  # the first image, not a labelmap (the selector hides those)
            volumes = slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
            images = [v for v in volumes if not v.IsA("vtkMRMLLabelMapVolumeNode")]
            if images:
                self._parameterNode.inputVolume = images[0]

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        """Show the model and the mode the parameter node holds (connectGui does not bind these two:
        changing them has side effects), also when the console or a script changed them."""
        if self._parameterNode:
            self._showModel(self._parameterNode.model)
            mode = self._parameterNode.annotationMode
            button = {"curves": self.ui.curvesRadioButton, "painted": self.ui.paintedRadioButton,
                      "mask": self.ui.maskRadioButton, "image": self.ui.imageRadioButton}[mode]
            # Shown only: onAnnotationMode would replace a model a script set together with the mode.
            wasBlocked = button.blockSignals(True)
            button.setChecked(True)
            button.blockSignals(wasBlocked)
            self.ui.annotationStack.setCurrentIndex(ANNOTATION_MODES.index(mode))
        self._checkCanFit()

    def _checkCanFit(self, caller=None, event=None) -> None:
        busy = self._job is not None
        ready = self._parameterNode is not None and self._annotationReady()
        self.ui.fitButton.enabled = ready and not busy
        self.ui.placeByDeepSSMCheckBox.enabled = self._parameterNode is not None and self._dissmOption("image")
        self.ui.refineOnImageCheckBox.enabled = self._parameterNode is not None and self._dissmOption("mask")
        self.ui.cancelButton.enabled = busy
        hasResult = self._parameterNode is not None and self._parameterNode.resultModel is not None
        self.ui.addContourButton.enabled = hasResult and not busy and self._parameterNode.annotationMode == "curves"
        self.ui.suggestButton.enabled = self.ui.addContourButton.enabled and self.logic.suggestedPlane() is not None

    def _dissmOption(self, mode: str) -> bool:
        """Whether a DISSM-only option applies: 'Place by DeepSSM first' in Image only (a DISSM model),
        'Refine on the image volume too' for a CNN mask (a DISSM model with a refiner)."""
        if self._parameterNode.annotationMode != mode:
            return False
        model = self._parameterNode.model
        try:
            return self.logic.modelRefinesOnImage(model) if mode == "mask" else self.logic.modelKind(model) == "dissm"
        except Exception:  # the core not installed yet, or an unreadable model: the fit will say which
            return False

    def _annotationReady(self) -> bool:
        mode = self._parameterNode.annotationMode
        if mode == "curves":  # a curve still being placed (under 3 points) is not an annotation yet
            nodes = self.ui.contourNodesComboBox.checkedNodes()
            return len(nodes) > 0 and all(node.GetNumberOfDefinedControlPoints() >= 3 for node in nodes)
        if mode == "painted":
            return self._selectedSegment(self.ui.paintedSegmentSelector) is not None
        if mode == "image":
            return self._parameterNode.inputVolume is not None
        return bool(self.ui.maskLabelmapSelector.currentNode() or self._selectedSegment(self.ui.maskSegmentSelector))

    @staticmethod
    def _selectedSegment(selector):
        """(segmentation node, segment ID) of a segment selector if that segment exists, else None."""
        node, segmentId = selector.currentNode(), selector.currentSegmentID()
        if node is None or not segmentId or node.GetSegmentation().GetSegment(segmentId) is None:
            return None
        return node, segmentId

    # ---------------------------------------------------------------- inputs

    def _populateModels(self) -> None:
        self.ui.modelComboBox.clear()
        for organ in self.logic.shippedModels():
            self.ui.modelComboBox.addItem(organ, organ)
        self.ui.modelComboBox.addItem(_(LOAD_MODEL_ITEM), "")

    def _showModel(self, model: str) -> None:
        """Select ``model`` (organ name or .pt path) in the combobox, adding a file entry if needed."""
        index = self.ui.modelComboBox.findData(model)
        if index < 0 and model:
            index = self.ui.modelComboBox.count - 1
            self.ui.modelComboBox.insertItem(index, os.path.basename(model), model)
        self.ui.modelComboBox.setCurrentIndex(max(index, 0))

    def onModelActivated(self, index: int) -> None:
        model = self.ui.modelComboBox.itemData(index)
        if not model:  # "Load model file..."
            model = qt.QFileDialog.getOpenFileName(
                slicer.util.mainWindow(), _("Load shape model"), "", _("Shape model bundles (*.pt)"),
            )
        if model:
            self._parameterNode.model = model
        self._showModel(self._parameterNode.model)

    def onAnnotationMode(self, mode: str) -> None:
        self.ui.annotationStack.setCurrentIndex(ANNOTATION_MODES.index(mode))
        if self._parameterNode:
            self._parameterNode.annotationMode = mode
            # Image fitting needs an image-fitting (DISSM) model, the other modes a mesh (DALS) one.
            with slicer.util.tryWithErrorDisplay(_("Could not read the shape model."), waitCursor=True):
                if not self.logic.missingDependencies():
                    self._parameterNode.model = self.logic.modelForMode(self._parameterNode.model, mode)
                    self._showModel(self._parameterNode.model)

    def onPlaceContour(self, viewName: str):
        with slicer.util.tryWithErrorDisplay(_("Could not start drawing a contour."), waitCursor=False):
            node = self.logic.startPlacingContour(viewName)
            self.ui.contourNodesComboBox.setCheckState(node, qt.Qt.Checked)
            self.ui.statusLabel.text = _(
                "Click around the organ on the {view} view's current slice; right-click or double-click to finish."
            ).format(view=viewName)
            return node

    def onAddContourButton(self) -> None:
        self._refitCurve = self.onPlaceContour(self.ui.refitViewComboBox.currentText)
        if self._refitCurve is not None:
            self.ui.statusLabel.text += " " + _("The fit runs again when the contour is finished.")

    def onSuggestButton(self) -> None:  # the last fit's suggested plane in its slice view, the next contour there
        with slicer.util.tryWithErrorDisplay(_("Could not show the suggested plane."), waitCursor=False):
            self.ui.refitViewComboBox.currentText = self.logic.showSuggestedPlane()
            self.onAddContourButton()

    def onInteractionModeChanged(self, caller, event) -> None:
        finished = self.logic.contourPlacementEnded(self._refitCurve)  # None: still placing
        self._refitCurve = self._refitCurve if finished is None else None
        self._checkCanFit()
        if finished:
            self._startFit(refit=True)

    # ---------------------------------------------------------------- fitting

    def onFitButton(self) -> None:
        self._startFit(refit=False)

    def onCancelButton(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.ui.statusLabel.text = _("Cancelling...")

    def _ensureDependencies(self) -> bool:
        missing = self.logic.missingDependencies()
        if missing and not _withArrowCursor(lambda: slicer.util.confirmOkCancelDisplay(
            _("ShapePriorSegment needs these Python packages; install them now (this can take several minutes)?")
            + "\n\n" + "\n".join(missing),
        )):
            return False
        if missing:
            self.ui.statusLabel.text = _("Installing Python packages...")
            slicer.app.processEvents()
            self.logic.ensureDependencies()
        return True

    def _annotationInputs(self) -> dict:
        """The annotation's nodes in the selectors; the curves' names label the residuals."""
        mode = self._parameterNode.annotationMode
        if mode == "curves":
            nodes = self.ui.contourNodesComboBox.checkedNodes()
            self._jobCurveNames = [node.GetName() for node in nodes]
            return {"curveNodes": nodes}
        if mode == "painted":
            node, segmentId = self._selectedSegment(self.ui.paintedSegmentSelector) or (None, None)
            return {"segmentationNode": node, "segmentId": segmentId}
        if self.ui.maskLabelmapSelector.currentNode():
            return {"maskNode": self.ui.maskLabelmapSelector.currentNode()}
        node, segmentId = self._selectedSegment(self.ui.maskSegmentSelector) or (None, None)
        return {"maskNode": node, "segmentId": segmentId}

    def _askReplace(self, segmentationName: str, segmentName: str):
        """True: replace the segment; False: keep both; None: cancel."""
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle(_("Segment exists"))
        box.setText(_("Segmentation '{segmentation}' already has a segment '{segment}'.").format(
            segmentation=segmentationName, segment=segmentName))
        replaceButton = box.addButton(_("Replace it"), qt.QMessageBox.DestructiveRole)
        keepButton = box.addButton(_("Keep both"), qt.QMessageBox.AcceptRole)
        box.addButton(qt.QMessageBox.Cancel)
        _withArrowCursor(box.exec_)
        clicked = box.clickedButton()
        return True if clicked == replaceButton else False if clicked == keepButton else None

    def _startFit(self, refit: bool) -> None:
        if self._job is not None:
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not start the fit."), waitCursor=True):
                if not self._ensureDependencies():
                    return
                self._jobCurveNames = []
                started = startJob(self.logic, self._parameterNode, self._annotationInputs, refit, self._askReplace)
                if started is None:
                    return
                self._job, self._jobOutputs = started
                self.ui.progressBar.value = 0
                self.ui.statusLabel.text = _("Loading the shape model...")
                self.ui.warningsLabel.text = ""
                self._pollTimer.start()
        finally:
            self._checkCanFit()

    def onPollFit(self) -> None:
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        time.sleep(self.GIL_YIELD_S)
        fraction, stage = job.progress
        self.ui.progressBar.value = round(100 * fraction)
        if not job.cancelled:
            self.ui.statusLabel.text = _("Fitting: {stage}").format(stage=stage)
        if not job.done:
            return
        self._pollTimer.stop()
        self._job = None
        self._checkCanFit()
        self.ui.statusLabel.text = _("The fit failed.")
        with slicer.util.tryWithErrorDisplay(_("The fit failed."), waitCursor=True):
            result = self.logic.finishFit(job, **self._jobOutputs)
            if result is None:
                self.ui.progressBar.value = 0
                self.ui.statusLabel.text = _("Cancelled: nothing was added to the scene.")
                return
            self._showResult(result)

    def _stopJob(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self._job = None
        if self._pollTimer is not None:
            self._pollTimer.stop()

    # ---------------------------------------------------------------- results

    def _showResult(self, result: dict) -> None:
        p = self._parameterNode or self.logic.getParameterNode()  # the user may have left the module
        recordResult(p, result, slicer.mrmlScene)
        self.logic.setSurfaceColoring(p.resultModel, p.colorByDistance, p.colorByUncertainty)
        report = result["report"]
        self._showResiduals(residualRows(report.get("residuals", []), self._jobCurveNames))
        self.ui.statusLabel.text = self.logic.resultText(result)  # with the suggested next contour
        self.ui.progressBar.value = 100
        # In the panel, not in a pop-up: they stay beside the result while the user looks at it.
        for warning in report["warnings"]:
            logging.warning(warning)
        self.ui.warningsLabel.text = warningsText(report["warnings"])

    def _showResiduals(self, rows: list) -> None:
        table = self.ui.residualsTable
        table.setRowCount(len(rows))
        for row, cells in enumerate(rows):
            for column, text in enumerate(cells):
                table.setItem(row, column, qt.QTableWidgetItem(text))
        table.resizeColumnsToContents()

    def onColorBy(self, on: bool) -> None:
        if self._parameterNode and self._parameterNode.resultModel:
            self.logic.setSurfaceColoring(self._parameterNode.resultModel, self.ui.colorByDistanceCheckBox.checked,
                                          self.ui.colorByUncertaintyCheckBox.checked)
