"""The fit the panel asks for, without GUI: which job to start for the parameter node's mode,
where its result goes, and the result recorded in the parameter node.

The panel passes what needs it: a function that reads the annotation's nodes from its selectors,
and one that asks whether to replace an existing segment.
"""

from __future__ import annotations  # Slicer 5.6 and 5.8 run Python 3.9: no `str | None` at run time

from .logic import nodeId


def outputOptions(logic, parameterNode, refit: bool, askReplace):
    """Where the result goes (the keyword arguments of the Logic's ``finishFit``); None if the user
    cancelled ``askReplace(segmentationName, segmentName)`` (True: replace; False: keep both; None: cancel)."""
    p = parameterNode
    options = {"reference_volume_id": nodeId(p.inputVolume)}
    if refit and p.resultModel and p.resultSegmentation:
        return {**options, "model_node_id": p.resultModel.GetID(), "segmentation_node_id": p.resultSegmentation.GetID(),
                "segment_name": p.resultSegmentName, "replace": True}
    organ = logic.modelOrgan(p.model)
    options.update(segmentation_node_id=nodeId(p.outputSegmentation), replace=False)
    if p.outputSegmentation and logic.segmentNameTaken(p.outputSegmentation, organ):
        replace = askReplace(p.outputSegmentation.GetName(), organ)
        if replace is None:
            return None
        options["replace"] = replace
    return options


def startJob(logic, parameterNode, annotationInputs, refit: bool, askReplace):
    """Start the fit of the parameter node's annotation mode: (the job, its ``outputOptions``), or None
    if the user cancelled. ``annotationInputs()`` gives the annotation's nodes (not called for "image");
    a refit (curves, painted) replaces the last result and starts from its fit state."""
    p = parameterNode
    if p.annotationMode in ("image", "mask"):
        inputs = annotationInputs() if p.annotationMode == "mask" else {}
        start = startModel(logic, p) if p.annotationMode == "image" else None  # refused before any question
        outputs = outputOptions(logic, p, False, askReplace)
        if outputs is None:
            return None
        if p.annotationMode == "image":
            return logic.startImageFit(p.inputVolume, p.model, start), outputs
        return logic.startMaskRefinement(model=p.model, imageNode=maskImage(logic, p), **inputs), outputs
    # The annotation is read before the question: an unreadable one asks nothing.
    annotation = logic.readAnnotation(p.annotationMode, **annotationInputs())
    outputs = outputOptions(logic, p, refit, askReplace)
    if outputs is None:
        return None
    warmStart = logic.warmStartReport(p.model) if refit else None  # a refit starts from the last fit
    return logic.startFit(annotation, p.model, logic.fitSettings(p), warmStart), outputs


def startModel(logic, parameterNode) -> str | None:
    """The DeepSSM model that places an image fit's DISSM model when the user asked for one (a
    ``ValueError`` saying so if the model has none), else None."""
    if not parameterNode.placeByDeepSSM or logic.modelKind(parameterNode.model) != "dissm":
        return None
    start = logic.startModelFor(parameterNode.model)
    if start is None:
        raise ValueError(f"No bundled DeepSSM model can place {parameterNode.model}; "
                         "untick 'Place by DeepSSM first (faster)'.")
    return start


def maskImage(logic, parameterNode):
    """The volume a mask refinement also fits: the input volume, when the user asked for it and the model
    (DISSM with a refiner) can refine on images; else None."""
    p = parameterNode
    if not p.refineOnImage or p.inputVolume is None or not logic.modelRefinesOnImage(p.model):
        return None
    return p.inputVolume


def recordResult(parameterNode, result: dict, scene) -> None:
    """Keep a finished fit's outputs in the parameter node (a refit updates them); a fit into a new
    segmentation makes it the output segmentation."""
    p = parameterNode
    p.resultModel = scene.GetNodeByID(result["model_node_id"])
    p.resultSegmentation = scene.GetNodeByID(result["segmentation_node_id"])
    p.resultSegmentName = result["segment_name"]
    if not p.outputSegmentation:
        p.outputSegmentation = p.resultSegmentation
