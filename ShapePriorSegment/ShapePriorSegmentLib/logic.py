"""The module's Logic: everything the panel does, without GUI, importable outside Slicer.

In Slicer it works on the application's scene; with the PyPI package slicer-core
(tests, scripts) it takes any ``vtkMRMLScene``. The MRML work itself is in the core's
Qt-free MRML bridge (``shapeprior.mrml``).
"""

from __future__ import annotations  # Slicer 5.6 and 5.8 run Python 3.9: no `str | None` at run time

import contextlib
import json
import os
from collections.abc import Iterator

import slicer

try:  # inside Slicer
    from slicer.i18n import tr as _
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
except ImportError:  # slicer-core: MRML without the application
    def _(text: str) -> str:
        return text

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

from .nextcontour import NextContour  # noqa: E402 (after the Slicer fallbacks)

MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_CONTOURS = "SampleData/liver-contours.mrk.json"
SAMPLE_PAINTED = "SampleData/liver-painted.nii.gz"
LOAD_MODEL_ITEM = "Load model file..."
ANNOTATION_MODES = ("curves", "painted", "mask", "image")
# The model kinds each mode can use, and the bundled model to switch to when the chosen one is of
# another kind (the default of the first kind listed).
MODE_MODEL_KINDS = {"curves": ("dals",), "painted": ("dals",), "mask": ("dals", "dissm", "sdf", "template"),
                    "image": ("dissm", "deepssm")}
DEFAULT_MODEL = {"dals": "liver", "dissm": "hippocampus"}
# The fitted model's point array of per-vertex uncertainty (mm), shapeprior.fit.run.UNCERTAINTY_ARRAY
# (the core is imported lazily: its dependencies may not be installed yet).
UNCERTAINTY_ARRAY = "Uncertainty_mm"


def resourcePath(relativePath: str) -> str:
    """A resource beside the module (installed extension), one folder up (source tree) or in the
    core's package (a wheel, for ``shapeprior serve``)."""
    roots = [os.path.join(MODULE_DIR, "Resources"), os.path.join(os.path.dirname(MODULE_DIR), "Resources"),
             os.path.join(MODULE_DIR, "shapeprior", "resources")]
    for root in roots:
        if os.path.exists(os.path.join(root, relativePath)):
            return os.path.join(root, relativePath)
    return os.path.join(roots[0], relativePath)


def nodeId(node):
    return node.GetID() if node else None


def readRequirements(path: str) -> list:
    """The requirements of a requirements.txt, skipping what ``slicer.packaging.load_requirements``
    skips (comments, blank lines, pip options)."""
    with open(path) as file:
        lines = [line.strip() for line in file]
    return [line for line in lines if line and not line.startswith(("#", "-"))]


# The core's Python packages that Slicer does not bundle (a test keeps them equal to pyproject.toml's).
# torch is listed first: it comes through the PyTorch extension when that is installed.
TORCH_REQUIREMENT, *PIP_REQUIREMENTS = readRequirements(resourcePath("requirements.txt"))


@contextlib.contextmanager
def pinnedConstraints() -> Iterator[str]:
    """A pip constraints file (its path, removed afterwards) holding the installed torch and numpy:
    installing the other requirements must not replace them (torch may be the GPU build the PyTorch
    extension chose, numpy is Slicer's own); pip picks versions of the others that work with them,
    or fails saying why."""
    import tempfile
    from importlib.metadata import PackageNotFoundError, version

    lines = []
    for name in ("torch", "numpy"):
        try:
            lines.append(f"{name}=={version(name)}\n")
        except PackageNotFoundError:
            pass
    with tempfile.TemporaryDirectory(prefix="shapeprior-") as folder:
        path = os.path.join(folder, "constraints.txt")
        with open(path, "w") as file:
            file.writelines(lines)
        yield path


class ShapePriorSegmentLogic(ScriptedLoadableModuleLogic, NextContour):
    """Everything the panel does, without GUI: usable from Slicer's Python console.

    The MRML work is in the Qt-free bridge ``shapeprior.mrml``; the core is
    imported lazily because its dependencies may not be installed yet.
    """

    def __init__(self, scene=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        # The application's scene in Slicer; any vtkMRMLScene elsewhere (tests with slicer-core).
        self.scene = scene if scene is not None else slicer.mrmlScene
        # The core finds bundled models here (installed extension or source tree), whatever a
        # command-line setting of the user's says: the panel lists the models shipped with it.
        os.environ["SHAPEPRIOR_MODELS"] = resourcePath("Models")
        self._organs = {}
        # The report of the last fit written to the scene: its suggested next contour, and the
        # state an "add contour and refit" starts from.
        self.lastReport = None
        self._placePersistence = None  # the interaction node's place persistence before our contour

    # ---------------------------------------------------------------- dependencies

    @staticmethod
    def missingDependencies() -> list:
        """Requirements (torch first) not satisfied in Slicer's Python."""
        from importlib.metadata import PackageNotFoundError, version

        from packaging.requirements import Requirement

        missing = []
        for text in [TORCH_REQUIREMENT, *PIP_REQUIREMENTS]:
            requirement = Requirement(text)
            try:
                if requirement.specifier.contains(version(requirement.name), prereleases=True):
                    continue
            except PackageNotFoundError:
                pass
            missing.append(text)
        return missing

    def ensureDependencies(self) -> None:
        """Install what is missing, without asking (the panel asks first): torch through the PyTorch
        extension if present, the rest with pip."""
        missing = self.missingDependencies()
        if TORCH_REQUIREMENT in missing:
            self._installTorch()
        others = [r for r in missing if r != TORCH_REQUIREMENT]
        if others:
            self._pipEnsure(others)
        still = self.missingDependencies()
        if still:
            raise RuntimeError(_("Could not install: {packages}").format(packages=", ".join(still)))

    @classmethod
    def _installTorch(cls) -> None:
        try:
            import PyTorchUtils
        except ImportError:  # no PyTorch extension: the default wheel from pip
            cls._pipEnsure([TORCH_REQUIREMENT])
            return
        versionRequirement = TORCH_REQUIREMENT[len("torch"):]
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=versionRequirement) is None:
            raise RuntimeError(_("PyTorch could not be installed; install it with the PyTorch extension."))

    @staticmethod
    def _pipEnsure(requirements: list) -> None:
        """``slicer.packaging.pip_ensure`` (Slicer 5.12 and later) without its own prompt, since the
        panel has asked already; ``pip_install`` in older Slicer. Either way under
        :func:`pinnedConstraints`."""
        from packaging.requirements import Requirement

        try:
            from slicer.packaging import pip_ensure
        except ImportError:  # before Slicer 5.12 (or a slicer.packaging without it)
            pip_ensure = None
        with pinnedConstraints() as constraints:
            if pip_ensure is None:
                slicer.util.pip_install(["-c", constraints, *requirements])
            else:
                pip_ensure([Requirement(r) for r in requirements], constraints=constraints, prompt_install=False,
                           requester="ShapePriorSegment")

    # ---------------------------------------------------------------- models

    @staticmethod
    def shippedModels() -> dict:
        """Organ -> bundle path of the bundled models (``Models/<organ>/model.pt``), without importing the core."""
        root = os.environ.get("SHAPEPRIOR_MODELS") or resourcePath("Models")
        if not os.path.isdir(root):
            return {}
        found = {name: os.path.join(root, name, "model.pt") for name in sorted(os.listdir(root))}
        return {organ: path for organ, path in found.items() if os.path.isfile(path)}

    def _modelInfo(self, model: str) -> tuple:
        """(kind, organ, whether it refines on images) of a bundled model name or model file, read from its
        header once (without torch)."""
        if model not in self._organs:
            from shapeprior.models.bundle import has_refiner, read_header

            header = read_header(model)
            self._organs[model] = (header.kind, header.organ, has_refiner(header))
        return self._organs[model]

    def modelOrgan(self, model: str) -> str:
        """The organ of a bundled model name or model file."""
        return self._modelInfo(model)[1]

    def modelKind(self, model: str) -> str:
        """The kind (``dals``, ``dissm``, ``deepssm``, ...) of a bundled model name or model file."""
        return self._modelInfo(model)[0]

    def modelRefinesOnImage(self, model: str) -> bool:
        """Whether a model (DISSM with a refiner) can refine a mask's fit on the image volume."""
        return self._modelInfo(model)[2]

    def modelForMode(self, model: str, mode: str) -> str:
        """``model`` if its kind suits the annotation mode, else the bundled default for that mode."""
        kinds = MODE_MODEL_KINDS[mode]
        try:
            if self._modelInfo(model)[0] in kinds:
                return model
        except Exception:  # missing or unreadable file: the fit will say so
            return model
        return DEFAULT_MODEL[kinds[0]]

    @staticmethod
    def fitSettings(parameterNode):
        from shapeprior.settings import FitSettings

        return FitSettings(
            level=parameterNode.level, global_steps=parameterNode.globalSteps,
            vertex_steps=parameterNode.vertexSteps, lambda_dir=parameterNode.smoothness,
            contour_blend_mm=parameterNode.contourBlend,
        )

    # ---------------------------------------------------------------- annotation and fit

    def readAnnotation(self, mode: str, curveNodes=(), segmentationNode=None, segmentId=None):
        """Read a curve or painted annotation from the scene (main thread) into plain arrays for the worker."""
        from shapeprior import mrml

        scene = self.scene
        if mode == "curves":
            return mrml.read_curve_annotation(scene, [node.GetID() for node in curveNodes])
        if mode == "painted":
            return mrml.read_painted_segment_annotation(scene, nodeId(segmentationNode), segmentId)
        raise ValueError(f"unknown annotation mode {mode!r}")

    @staticmethod
    def startFit(annotation, model: str, settings, warmStart=None, suggest: str = "axes"):
        """Start fitting in a worker thread; poll the returned job, then call :meth:`finishFit`.

        ``warmStart``: an earlier fit's report to refit from (e.g. :meth:`warmStartReport`);
        ``suggest``: "axes", "oblique" or "off", where to look for the next contour's plane."""
        from shapeprior.mrml import fit_job

        return fit_job(annotation, model, settings, warmStart, suggest).start()

    def warmStartReport(self, model: str):
        """The last fit's report if a fit with ``model`` can start from it (a contour fit by the
        same model file), else None."""
        state = (self.lastReport or {}).get("fit_state")
        if not state:
            return None
        from shapeprior.fit.warm_start import model_digest
        from shapeprior.models.bundle import resolve_model

        try:
            same = model_digest(str(resolve_model(model))) == state.get("model_sha256")
        except (OSError, ValueError):  # a missing or unreadable model (InputError): the fit will say so
            return None
        return self.lastReport if same else None

    def startModelFor(self, model: str) -> str | None:
        """The bundled DeepSSM model that can place ``model`` (a DISSM model) before its refinement, faster
        than its own pose agent; None if there is none."""
        from shapeprior.fit.deepssm_fit import can_place
        from shapeprior.models.bundle import read_header

        def header(path):
            try:
                return read_header(path)
            except Exception:  # missing or unreadable file: no partner (a fit with it will say what is wrong)
                return None

        dissm = header(model)
        partners = (name for name, path in self.shippedModels().items()
                    if dissm is not None and (other := header(path)) is not None and can_place(other, dissm))
        return next(partners, None)

    def startImageFit(self, volumeNode, model: str = "hippocampus", startFrom: str | None = None):
        """Start an image (DISSM or DeepSSM) fit of a volume in a worker thread (``startFrom``: a DeepSSM
        model that places the DISSM model first, see :meth:`startModelFor`); poll the job, then
        :meth:`finishFit`."""
        from shapeprior import mrml

        image = mrml.read_volume_image(self.scene, nodeId(volumeNode))
        return mrml.image_fit_job(image, volumeNode.GetName(), model, volume_node_id=nodeId(volumeNode),
                                  start_from=startFrom).start()

    def startMaskRefinement(self, maskNode, segmentId=None, model: str = "liver", imageNode=None):
        """Start refining a CNN mask (labelmap node, or a segment of a segmentation node; a DISSM model also
        on the volume ``imageNode``) in a worker thread; poll the returned job, then call :meth:`finishFit`."""
        from shapeprior import mrml

        mask, source, _ = mrml.read_mask_node(self.scene, nodeId(maskNode), segmentId)
        image = mrml.read_volume_image(self.scene, nodeId(imageNode)) if imageNode is not None else None
        name = imageNode.GetName() if imageNode is not None else "image"
        return mrml.mask_refine_job(mask, source, model, image, name).start()

    def finishFit(self, job, **outputs):
        """Write a finished job's result to the scene (main thread); None if it was cancelled.

        ``outputs``: segmentation_node_id, model_node_id, segment_name, replace, reference_volume_id.
        """
        from shapeprior.fit.dals_fit import FitCancelled
        from shapeprior.mrml import add_outcome_to_scene

        try:
            outcome = job.result()
        except FitCancelled:
            return None
        return self._written(add_outcome_to_scene(self.scene, outcome, **{**job.outputs, **outputs}))

    def _written(self, result: dict) -> dict:
        self.lastReport = result["report"]
        return result

    def process(self, curveNodes, model: str = "liver", outputSegmentationNode=None, referenceVolumeNode=None,
                settings=None, progress=None, shouldStop=None, warmStart=None, suggest: str = "axes",
                **outputs) -> dict:
        """Fit closed-curve nodes synchronously; returns the node ids and the report.

        ``warmStart``, ``suggest``: as :meth:`startFit`; ``outputs``: more of ``finishFit``'s
        (e.g. ``model_node_id`` and ``replace`` to update an earlier result)."""
        from shapeprior.mrml import fit_contours_in_scene
        from shapeprior.settings import FitSettings

        return self._written(fit_contours_in_scene(
            self.scene, [node.GetID() for node in curveNodes], model, settings or FitSettings(), progress, shouldStop,
            warm_start=warmStart, suggest=suggest, segmentation_node_id=nodeId(outputSegmentationNode),
            reference_volume_id=nodeId(referenceVolumeNode), **outputs,
        ))

    def processImage(self, volumeNode, model: str = "hippocampus", stages=None, progress=None,
                     shouldStop=None, outputSegmentationNode=None, startFrom: str | None = None) -> dict:
        """Fit an image-fitting (DISSM or DeepSSM) model straight to a volume (``startFrom``: as in
        :meth:`startImageFit`); returns the node ids and the report."""
        from shapeprior.mrml import fit_image_in_scene

        return self._written(fit_image_in_scene(
            self.scene, nodeId(volumeNode), model, stages, progress, shouldStop, startFrom,
            segmentation_node_id=nodeId(outputSegmentationNode),
        ))

    def processMask(self, maskNode, segmentId=None, model: str = "liver", progress=None, shouldStop=None,
                    outputSegmentationNode=None, imageNode=None) -> dict:
        """Refine a CNN mask with a shape prior (a DISSM model also on the volume ``imageNode``)
        synchronously; returns the node ids and the report."""
        from shapeprior.mrml import refine_mask_in_scene

        return self._written(refine_mask_in_scene(
            self.scene, nodeId(maskNode), model, segmentId, progress=progress, should_stop=shouldStop,
            image_node_id=nodeId(imageNode), segmentation_node_id=nodeId(outputSegmentationNode),
        ))

    # ---------------------------------------------------------------- scene helpers

    @staticmethod
    def segmentNameTaken(segmentationNode, name: str) -> bool:
        return bool(segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(name))

    def interactionNode(self):
        return self.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")

    def startPlacingContour(self, viewName: str):
        """New closed curve shown (and placed) only on one slice view and the 3D views; enter place mode."""
        scene = self.scene
        sliceNode = scene.GetNodeByID(f"vtkMRMLSliceNode{viewName}")
        if sliceNode is None:
            raise ValueError(_("The layout has no {view} slice view.").format(view=viewName))
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsClosedCurveNode", scene.GenerateUniqueName(f"Contour {viewName}"))
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.AddViewNodeID(sliceNode.GetID())
        for viewNode in self._nodesByClass("vtkMRMLViewNode"):
            display.AddViewNodeID(viewNode.GetID())
        node.SetAttribute("ShapePriorSegment.View", viewName)
        selection = scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
        selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsClosedCurveNode")
        selection.SetActivePlaceNodeID(node.GetID())
        interaction = self.interactionNode()
        if self._placePersistence is None:  # given back when the place mode ends (contourPlacementEnded)
            self._placePersistence = interaction.GetPlaceModePersistence()
        interaction.SetPlaceModePersistence(1)  # keep adding points until the user ends the curve
        interaction.SetCurrentInteractionMode(interaction.Place)
        return node

    @staticmethod
    def setDistanceColoring(modelNode, on: bool) -> None:
        display = modelNode.GetDisplayNode() if modelNode else None
        if display:
            display.SetScalarVisibility(bool(on))

    @staticmethod
    def showScalars(modelNode, arrayName: str) -> bool:
        """Colour the model by its point array ``arrayName`` (mm; active scalars, colour table,
        range 0 to the 95th percentile); False, changing nothing, if it has no such array."""
        from shapeprior.mrml.writer import show_point_array

        poly = modelNode.GetPolyData() if modelNode else None
        if poly is None or poly.GetPointData().GetArray(arrayName) is None:
            return False
        if modelNode.GetDisplayNode() is None:
            modelNode.CreateDefaultDisplayNodes()
        show_point_array(modelNode, arrayName)
        return True

    def setSurfaceColoring(self, modelNode, byDistance: bool = True, byUncertainty: bool = False):
        """Colour a fitted model by its uncertainty (``byUncertainty``, if it has one), else by its
        distance to the annotation (``byDistance``; the writer's first point array), else not at
        all; return the name of the array shown, or None."""
        poly = modelNode.GetPolyData() if modelNode else None
        if poly is None:
            return None
        names = [poly.GetPointData().GetArrayName(i) for i in range(poly.GetPointData().GetNumberOfArrays())]
        distance = next((name for name in names if name not in ("Normals", UNCERTAINTY_ARRAY)), None)
        for name, on in ((UNCERTAINTY_ARRAY, byUncertainty), (distance, byDistance)):
            if on and name and self.showScalars(modelNode, name):
                return name
        self.setDistanceColoring(modelNode, False)
        return None

    def contourPlacementEnded(self, curve):
        """After an interaction-mode change: None while ``curve`` is still being placed (or there is
        none), else whether it was finished with at least 3 points."""
        interaction = self.interactionNode()
        if interaction.GetCurrentInteractionMode() == interaction.Place:
            return None
        if self._placePersistence is not None:  # other modules' placing as it was before ours
            interaction.SetPlaceModePersistence(self._placePersistence)
            self._placePersistence = None
        if curve is None:
            return None
        return bool(self.scene.IsNodePresent(curve) and curve.GetNumberOfDefinedControlPoints() >= 3)

    # The sample loads with MRML's own readers, without the core's dependencies: a new user can
    # try it before the first fit installs them.

    def loadSampleContours(self) -> list:
        """Add the bundled sample contours (three closed curves of a liver) to the scene; return them."""
        path = resourcePath(SAMPLE_CONTOURS)
        with open(path) as file:
            count = len(json.load(file)["markups"])
        # A storage node per curve and no file name, as Slicer's markups reader does for a file of
        # several markups: saving the scene writes each curve to a new file of its own.
        return [
            self.scene.AddNewNodeByClass("vtkMRMLMarkupsJsonStorageNode").AddNewMarkupsNodeFromFile(path, "", index)
            for index in range(count)
        ]

    def loadSamplePainted(self):
        """Add the bundled painted sample (the liver painted on three slices) as a segmentation whose
        one segment is named liver; return the segmentation node."""
        name = self.scene.GenerateUniqueName("liver painted")
        segmentation = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        # The storage node stays out of the scene, so saving the scene never writes into the extension's files.
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(resourcePath(SAMPLE_PAINTED))
        if not storage.ReadData(segmentation):
            self.scene.RemoveNode(segmentation)
            raise RuntimeError(_("Could not read the sample {path}").format(path=storage.GetFileName()))
        segmentation.CreateDefaultDisplayNodes()
        # The fit warns when the model's organ is not in the painted segment's name.
        segmentation.GetSegmentation().GetNthSegment(0).SetName("liver")
        return segmentation

    def loadSample(self) -> tuple:
        """The sample case: (the contour nodes, the painted segmentation node)."""
        return self.loadSampleContours(), self.loadSamplePainted()

    def _nodesByClass(self, className: str) -> list:
        collection = self.scene.GetNodesByClass(className)
        return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
