"""The module's Logic: everything the panel does, without GUI, importable outside Slicer.

In Slicer it works on the application's scene; with the PyPI package slicer-core
(tests, scripts) it takes any ``vtkMRMLScene``. The MRML work itself is in the core's
Qt-free bridge (``shapeprior.mrml.bridge``).
"""

import importlib
import os

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

MODULE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Python packages of the core that Slicer does not bundle (numpy, SimpleITK and VTK come
# with Slicer); kept equal to pyproject.toml by a test. torch is installed through the PyTorch extension when that is present.
PIP_REQUIREMENTS = [
    "scipy>=1.10", "trimesh>=4.0", "fast-simplification>=0.1", "pycpd>=2.0", "scikit-image>=0.21", "libigl>=2.5",
    "tqdm>=4.60", "monai>=1.3",
]
TORCH_REQUIREMENT = "torch>=2.1"
SAMPLE_CONTOURS = "SampleData/liver-contours.mrk.json"
LOAD_MODEL_ITEM = "Load model file..."
ANNOTATION_MODES = ("curves", "painted", "mask", "image")
# The model kinds each mode can use, and the bundled model to switch to when the chosen one is of
# another kind (the default of the first kind listed).
MODE_MODEL_KINDS = {"curves": ("dals",), "painted": ("dals",), "mask": ("dals", "dissm", "sdf"), "image": ("dissm",)}
DEFAULT_MODEL = {"dals": "liver", "dissm": "hippocampus"}


def resourcePath(relativePath: str) -> str:
    """A resource beside the module (installed extension) or one folder up (source tree)."""
    roots = [os.path.join(MODULE_DIR, "Resources"), os.path.join(os.path.dirname(MODULE_DIR), "Resources")]
    for root in roots:
        if os.path.exists(os.path.join(root, relativePath)):
            return os.path.join(root, relativePath)
    return os.path.join(roots[0], relativePath)


def nodeId(node):
    return node.GetID() if node else None


class ShapePriorSegmentLogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, without GUI: usable from Slicer's Python console.

    The MRML work is in the Qt-free bridge ``shapeprior.mrml.bridge``; the core is
    imported lazily because its dependencies may not be installed yet.
    """

    def __init__(self, scene=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        # The application's scene in Slicer; any vtkMRMLScene elsewhere (tests with slicer-core).
        self.scene = scene if scene is not None else slicer.mrmlScene
        # The core finds bundled models here (installed extension or source tree).
        os.environ.setdefault("SHAPEPRIOR_MODELS", resourcePath("Models"))
        self._organs = {}

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
        """Install what is missing: torch through the PyTorch extension if present, the rest with pip."""
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
        """``pip_ensure`` (slicer.packaging, Slicer >= 5.12; slicer.pydeps in 5.11), else ``pip_install``."""
        for moduleName in ("slicer.packaging", "slicer.pydeps"):
            try:
                pipModule = importlib.import_module(moduleName)
            except ImportError:
                continue
            if hasattr(pipModule, "pip_ensure"):
                from packaging.requirements import Requirement

                pipModule.pip_ensure([Requirement(r) for r in requirements], requester="ShapePriorSegment")
                return
        slicer.util.pip_install(requirements)

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
        """(kind, organ) of a bundled model name or model file, read from the bundle once."""
        if model not in self._organs:
            from shapeprior.models.bundle import load_bundle

            bundle = load_bundle(model)
            self._organs[model] = (bundle.kind, bundle.organ)
        return self._organs[model]

    def modelOrgan(self, model: str) -> str:
        """The organ of a bundled model name or model file."""
        return self._modelInfo(model)[1]

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
        from shapeprior.fit.dals_fit import FitSettings

        return FitSettings(
            level=parameterNode.level, global_steps=parameterNode.globalSteps,
            vertex_steps=parameterNode.vertexSteps, lambda_dir=parameterNode.smoothness,
            contour_blend_mm=parameterNode.contourBlend,
        )

    # ---------------------------------------------------------------- annotation and fit

    def readAnnotation(self, mode: str, curveNodes=(), segmentationNode=None, segmentId=None):
        """Read a curve or painted annotation from the scene (main thread) into plain arrays for the worker."""
        from shapeprior.mrml import bridge

        scene = self.scene
        if mode == "curves":
            return bridge.read_curve_annotation(scene, [node.GetID() for node in curveNodes])
        if mode == "painted":
            return bridge.read_painted_segment_annotation(scene, nodeId(segmentationNode), segmentId)
        raise ValueError(f"unknown annotation mode {mode!r}")

    @staticmethod
    def startFit(annotation, model: str, settings):
        """Start fitting in a worker thread; poll the returned job, then call :meth:`finishFit`."""
        from shapeprior.mrml.bridge import FitJob

        return FitJob(annotation, model, settings).start()

    def startImageFit(self, volumeNode, model: str = "hippocampus"):
        """Start an image (DISSM) fit of a volume in a worker thread; poll the job, then :meth:`finishFit`."""
        from shapeprior.mrml import bridge

        image = bridge.read_volume_image(self.scene, nodeId(volumeNode))
        return bridge.ImageFitJob(image, volumeNode.GetName(), model, volume_node_id=nodeId(volumeNode)).start()

    def startMaskRefinement(self, maskNode, segmentId=None, model: str = "liver"):
        """Start refining a CNN mask (labelmap node, or a segment of a segmentation node) in a worker
        thread; poll the returned job, then call :meth:`finishFit`."""
        from shapeprior.mrml import bridge

        mask, source, _ = bridge.read_mask_node(self.scene, nodeId(maskNode), segmentId)
        return bridge.MaskRefineJob(mask, source, model).start()

    def finishFit(self, job, **outputs):
        """Write a finished job's result to the scene (main thread); None if it was cancelled.

        ``outputs``: segmentation_node_id, model_node_id, segment_name, replace, reference_volume_id.
        """
        from shapeprior.fit.dals_fit import FitCancelled
        from shapeprior.mrml import bridge

        try:
            fit = job.result()
        except FitCancelled:
            return None
        if isinstance(job, bridge.ImageFitJob):
            outputs.setdefault("reference_volume_id", job.volume_node_id)
            return bridge.add_image_fit_to_scene(self.scene, fit, job.bundle, job.source, **outputs)
        if isinstance(job, bridge.MaskRefineJob):
            return bridge.add_refinement_to_scene(self.scene, fit, **outputs)
        return bridge.add_fit_to_scene(self.scene, fit, job.annotation, **outputs)

    def process(self, curveNodes, model: str = "liver", outputSegmentationNode=None, referenceVolumeNode=None,
                settings=None, progress=None, shouldStop=None) -> dict:
        """Fit closed-curve nodes synchronously; returns the node ids and the report."""
        from shapeprior.fit.dals_fit import FitSettings
        from shapeprior.mrml import bridge

        return bridge.fit_contours_in_scene(
            self.scene, [node.GetID() for node in curveNodes], model, nodeId(outputSegmentationNode),
            settings or FitSettings(), progress, shouldStop, reference_volume_id=nodeId(referenceVolumeNode),
        )

    def processImage(self, volumeNode, model: str = "hippocampus", stages=None, progress=None,
                     shouldStop=None, outputSegmentationNode=None) -> dict:
        """Fit an image-fitting (DISSM) model straight to a volume; returns the node ids and the report."""
        from shapeprior.mrml import bridge

        return bridge.fit_image_in_scene(
            self.scene, nodeId(volumeNode), model, stages, progress, shouldStop,
            segmentation_node_id=nodeId(outputSegmentationNode),
        )

    def processMask(self, maskNode, segmentId=None, model: str = "liver", progress=None, shouldStop=None,
                    outputSegmentationNode=None) -> dict:
        """Refine a CNN mask with a shape prior synchronously; returns the node ids and the report."""
        from shapeprior.mrml import bridge

        return bridge.refine_mask_in_scene(
            self.scene, nodeId(maskNode), model, segmentId, progress=progress, should_stop=shouldStop,
            segmentation_node_id=nodeId(outputSegmentationNode),
        )

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
        interaction.SetPlaceModePersistence(1)  # keep adding points until the user ends the curve
        interaction.SetCurrentInteractionMode(interaction.Place)
        return node

    @staticmethod
    def setDistanceColoring(modelNode, on: bool) -> None:
        display = modelNode.GetDisplayNode() if modelNode else None
        if display:
            display.SetScalarVisibility(bool(on))

    def loadSampleContours(self) -> list:
        """Add the bundled sample contours to the scene as closed-curve nodes; return them."""
        from shapeprior.io.markups import read_closed_curves
        from shapeprior.mrml.bridge import add_closed_curves

        path = resourcePath(SAMPLE_CONTOURS)
        curves = read_closed_curves(path)
        ids = add_closed_curves(self.scene, curves, [f"liver contour {i + 1}" for i in range(len(curves))])
        return [self.scene.GetNodeByID(i) for i in ids]

    def _nodesByClass(self, className: str) -> list:
        collection = self.scene.GetNodesByClass(className)
        return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
