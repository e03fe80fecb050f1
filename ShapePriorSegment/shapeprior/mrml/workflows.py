"""Fits of what is in a scene: read (main thread), fit (any thread, or a :class:`BackgroundJob`),
write with :func:`~shapeprior.mrml.writer.add_outcome_to_scene` (main thread).

The ``*_job`` functions start nothing: call ``.start()``, poll ``progress``/``done``, then write
``job.result()`` with ``job.outputs`` as defaults. The ``*_in_scene`` functions chain the steps
synchronously and return the writer's node ids and report.
"""

from __future__ import annotations

import os
from typing import Sequence

import SimpleITK as sitk

from ..fit.outcome import Outcome
from ..jobs import BackgroundJob, Progress, ShouldStop
from ..settings import FitSettings
from .nodes import (
    Annotation,
    read_curve_annotation,
    read_mask_node,
    read_painted_segment_annotation,
    read_volume_image,
)
from .writer import add_outcome_to_scene


def fit_annotation(annotation: Annotation, model: str | os.PathLike = "liver", settings: FitSettings = FitSettings(),
                   progress: Progress | None = None, should_stop: ShouldStop | None = None,
                   warm_start: dict | str | os.PathLike | None = None, suggest: str = "axes") -> Outcome:
    """Fit the DALS model to the annotation's curves; touches no MRML (safe in a worker thread).

    ``warm_start``: an earlier fit's report (or its JSON file) to refit from (the report then
    says so under ``warm_start``); ``suggest``: where to look for the next contour's plane
    ("axes", "oblique", "off"; the report's ``suggested_plane``). A model organ that differs
    from the annotated segment's name is the first warning."""
    from ..fit.run import fit_curves

    outcome = fit_curves(annotation.curves, model, settings, annotation.source, progress, should_stop,
                         warm_start=warm_start, suggest=suggest)
    if annotation.label and outcome.organ.lower() not in annotation.label.lower():
        outcome.warnings.insert(0, f"the model is a {outcome.organ} model but the annotation is segment "
                                   f"{annotation.label!r}")
    return outcome


def fit_job(annotation: Annotation, model: str | os.PathLike = "liver", settings: FitSettings = FitSettings(),
            warm_start: dict | str | os.PathLike | None = None, suggest: str = "axes") -> BackgroundJob:
    """:func:`fit_annotation` in a worker thread."""
    return BackgroundJob(lambda progress, stop: fit_annotation(annotation, model, settings, progress, stop,
                                                               warm_start, suggest))


def mask_refine_job(mask: sitk.Image, source: str, model: str | os.PathLike = "liver", image: sitk.Image | None = None,
                    image_source: str = "image") -> BackgroundJob:
    """:func:`~shapeprior.fit.refine_mask.refine_mask` of a mask (and the ``image`` a DISSM model refines
    on) read beforehand, in a worker thread."""
    from ..fit.refine_mask import refine_mask

    return BackgroundJob(lambda progress, stop: refine_mask(mask, model, source, progress=progress, should_stop=stop,
                                                            subregions=None, image=image, image_source=image_source))


def image_fit_job(image: sitk.Image, source: str, model: str | os.PathLike = "hippocampus",
                  stages: Sequence[str] | None = None, volume_node_id: str | None = None,
                  start_from: str | os.PathLike | None = None) -> BackgroundJob:
    """A DISSM or DeepSSM fit of an image read beforehand, in a worker thread (``start_from``: a DeepSSM
    model that places a DISSM model first); the models are loaded now (a bad model file fails at once).
    The volume becomes the segmentation's reference geometry."""
    from ..fit.deepssm_fit import check_placing, fit_image_by_kind, load_image_model
    from ..models.registry import as_loaded

    loaded = load_image_model(model)
    start = as_loaded(start_from, "deepssm") if start_from else None
    if start is not None:
        check_placing(start[0], loaded[0])
    return BackgroundJob(
        lambda progress, stop: fit_image_by_kind(image, loaded, stages, source, progress, stop, start_from=start),
        {"reference_volume_id": volume_node_id} if volume_node_id else None,
    )


def fit_contours_in_scene(scene, curve_node_ids: Sequence[str], model: str | os.PathLike = "liver",
                          settings: FitSettings = FitSettings(), progress: Progress | None = None,
                          should_stop: ShouldStop | None = None, *, warm_start: dict | str | os.PathLike | None = None,
                          suggest: str = "axes", **outputs) -> dict:
    """Closed-curve markups nodes -> fitted model node and segment. ``warm_start``, ``suggest``: as
    :func:`fit_annotation`; ``outputs``: those of :func:`~shapeprior.mrml.writer.add_surface_to_scene`.
    A cancelled fit (:class:`~shapeprior.fit.dals_fit.FitCancelled`) leaves the scene unchanged."""
    annotation = read_curve_annotation(scene, curve_node_ids)
    outcome = fit_annotation(annotation, model, settings, progress, should_stop, warm_start, suggest)
    return add_outcome_to_scene(scene, outcome, **outputs)


def fit_painted_segment_in_scene(scene, segmentation_node_id: str, segment_id: str, model: str | os.PathLike = "liver",
                                 settings: FitSettings = FitSettings(), progress: Progress | None = None,
                                 should_stop: ShouldStop | None = None, **outputs) -> dict:
    """A segment painted on a few slices -> fitted model node and segment (by default in a new
    segmentation node, so the painted one is left as it is)."""
    annotation = read_painted_segment_annotation(scene, segmentation_node_id, segment_id)
    return add_outcome_to_scene(scene, fit_annotation(annotation, model, settings, progress, should_stop), **outputs)


def refine_mask_in_scene(scene, node_id: str, model: str | os.PathLike, segment_id: str | None = None,
                         label: int | None = None, progress: Progress | None = None,
                         should_stop: ShouldStop | None = None, image_node_id: str | None = None, **outputs) -> dict:
    """A mask node (segment or labelmap) refined with the shape prior (a DISSM model also on the volume
    ``image_node_id``); the model node is coloured by the signed distance to the mask boundary; a
    template model's sub-regions become segments too."""
    from ..fit.refine_mask import refine_mask

    mask, source, _ = read_mask_node(scene, node_id, segment_id, label)
    image = read_volume_image(scene, image_node_id) if image_node_id else None
    image_source = scene.GetNodeByID(image_node_id).GetName() if image_node_id else "image"
    outcome = refine_mask(mask, model, source, progress=progress, should_stop=should_stop, subregions=None,
                          image=image, image_source=image_source)
    return add_outcome_to_scene(scene, outcome, **outputs)


def fit_image_in_scene(scene, volume_node_id: str, model: str | os.PathLike = "hippocampus",
                       stages: Sequence[str] | None = None, progress: Progress | None = None,
                       should_stop: ShouldStop | None = None, start_from: str | os.PathLike | None = None,
                       **outputs) -> dict:
    """An image volume node -> the DISSM or DeepSSM fit's model node and segment (the volume is the
    segmentation's reference geometry; ``start_from``: a DeepSSM model that places a DISSM model first);
    the report holds the pose per stage (DISSM) or the loadings (DeepSSM) and warnings such as an
    unusual intensity range."""
    from ..fit.deepssm_fit import fit_image_by_kind

    image = read_volume_image(scene, volume_node_id)
    source = scene.GetNodeByID(volume_node_id).GetName()
    outcome = fit_image_by_kind(image, model, stages, source, progress, should_stop, start_from=start_from)
    outputs.setdefault("reference_volume_id", volume_node_id)
    return add_outcome_to_scene(scene, outcome, **outputs)
