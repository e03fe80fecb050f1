"""Refine a CNN mask with a shape prior: a smooth, plausible surface and segment (LPS mm).

1. The mask is prepared (largest part, border check, signed distance map).
2. The model is fitted to it robustly: a DALS mesh model to the boundary's distance map
   (``fit.mask_dals``), an implicit model by pose and PCA loadings (``fit.mask_implicit``).
   Given the image the mask came from, a DISSM model goes on from that fit to its narrow-band
   refinement on the image: the shape then follows the image where the mask is wrong.
3. Trust-weighted fusion of the fitted surface with the mask's signed distance map
   (``fit.mask_fusion``): the mask's detail where both agree to within about tau, the prior
   where they disagree (a leak, a hole, a staircase, a cut-off part) and outside the image.
The report holds each vertex's signed distance to the mask boundary (+ outside the mask).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch
import trimesh
from scipy.spatial import cKDTree

from ..errors import InputError
from ..io.frames import lps_to_index
from ..metrics import dice, mesh_quality
from ..models.bundle import ModelBundle, has_refiner, load_bundle
from ..models.registry import build_model
from ..prep.mask_distance import (
    DistanceSampler,
    PreparedMask,
    boundary_points,
    prepare_mask,
)
from ..settings import RefineSettings
from .dals_fit import FitCancelled, fit_dals
from .mask_dals import MaskTask
from .mask_fusion import fuse_with_mask
from .correspondence import transfer_labels
from .mask_template import TemplateFit, fit_template_to_mask
from .outcome import Outcome
from .uncertainty import UNCERTAINTY_ARRAY, point_weights, shape_posterior, training_model

MESH_KINDS = ("dals",)
IMPLICIT_KINDS = ("dissm", "sdf")
TEMPLATE_KINDS = ("template",)
# Size warning: fitted mm-per-unit scales beyond this factor of the training range.
SIZE_WARNING = 1.3
# Vertices farther than this many voxels from the mask boundary are where the prior disagrees.
DISAGREE_VOXELS = 2.0
# Default fusion tau per model kind, in voxels: the implicit hippocampus prior is accurate to about
# a voxel; the DALS liver prior is coarser than the masks' 2-3 mm voxels, so the mask is followed further.
# Chosen among 0.5/1/(0.7 Gaussian) voxels on 8 held-out hippocampi and 2/3/5/8 voxels on 3 held-out
# livers, all of them also in `benchmark refine`'s sets.
TRUST_VOXELS = {"dals": 5.0, "dissm": 1.0, "sdf": 1.0, "template": 1.0}
# Refined on the image, the prior is as good as the U-Net's masks (held-out hippocampi: Dice 0.871 against
# 0.883) and far better than a weak U-Net's (0.873 against 0.822), so it keeps more of the surface: 0.5 voxels
# (chosen among 0.5 / 1 on the first 12 held-out hippocampi, weak and full U-Net masks; docs/experiments.md).
IMAGE_TRUST_VOXELS = 0.5
# An image larger than the training crops (31-43 x 40-59 x 24-46 mm along L, P, S) is cut to a typical crop's
# size around the mask before the refinement: the refiner has seen nothing beyond such a crop. A held-out
# hippocampus image mirror-padded to 75 x 96 x 75 mm: Dice 0.865 (0.853 unpadded); cut to 48 x 64 x 48 mm 0.738.
IMAGE_BOX_MM = (36.0, 50.0, 36.0)
LARGEST_CROP_MM = (44.0, 60.0, 47.0)
# The mask is cropped to its bounding box grown by this plus twice the fusion tau: beyond that
# the fusion keeps the prior whatever the mask says.
CROP_MARGIN_MM = 10.0
# Name of the per-vertex signed distance to the mask boundary on output models.
DISTANCE_ARRAY = "DistanceToMaskBoundary_mm"
# Per-vertex template coordinates (template models): corresponding points share them across cases.
TEMPLATE_ARRAY = "TemplateCoordinates"


@dataclass
class PriorFit:
    """The model's robust fit to the mask, before the fusion."""

    mesh: trimesh.Trimesh  # LPS mm
    mm_per_unit: float
    pose: dict  # the report's record of the model -> LPS mm placement
    uncertainty: np.ndarray | None = None  # (V,) mm given the mask's boundary (DALS models)
    template: TemplateFit | None = None  # template models: codes and frame, for correspondences


def crop_to_mask(mask: sitk.Image, margin_mm: float, source: str) -> sitk.Image:
    """The mask's bounding box grown by ``margin_mm``, within the image (the same voxels and
    physical frame): a CT-sized grid would cost seconds and gigabytes for nothing."""
    array = sitk.GetArrayViewFromImage(mask)
    if not array.any():
        raise InputError(source, "empty mask (no voxels of the chosen label)")
    kji = np.argwhere(array)
    margin = np.ceil(margin_mm / np.array(mask.GetSpacing()[::-1])).astype(int)
    lo = np.maximum(kji.min(0) - margin, 0)
    hi = np.minimum(kji.max(0) + margin + 1, array.shape)
    return sitk.RegionOfInterest(mask, [int(v) for v in (hi - lo)[::-1]], [int(v) for v in lo[::-1]])


def _fit_prior(bundle: ModelBundle, model, prepared: PreparedMask, settings: RefineSettings, source: str, progress,
               should_stop) -> PriorFit:
    """The model's robust fit to the prepared mask."""
    if bundle.kind in TEMPLATE_KINDS:
        fit = fit_template_to_mask(model, prepared, settings.template, source, progress, should_stop)
        pose = {"lps_to_unit": fit.to_unit.to_dict(), "kept_share": float(fit.kept.mean())}
        return PriorFit(fit.mesh_lps(settings.template.resolution), 1.0 / fit.to_unit.scale, pose, template=fit)
    if bundle.kind in MESH_KINDS:
        decoder, latent_mean = model

        def make_task(unit_mm: float) -> MaskTask:
            return MaskTask(prepared, settings.dals.samples, unit_mm, settings.robust_mm, settings.dals.global_steps)

        result = fit_dals(decoder, latent_mean, make_task, settings.dals, progress, should_stop)
        shapes, modes = training_model(bundle, decoder, settings.dals.level)
        seen = point_weights(result.mesh, boundary_points(prepared))
        uncertainty = shape_posterior(result.mesh, result.pose, shapes, modes, [], seen).uncertainty_mm()
        return PriorFit(result.mesh, result.pose.scale, result.pose.to_dict(), uncertainty)
    # Here: the implicit route's modules import MONAI's networks (seconds of a template or DALS refinement).
    from .image_fit import state_record
    from .mask_implicit import fit_mask_implicit, implicit_mesh

    decoder, space = (model.decoder, model.space) if bundle.kind == "dissm" else model
    rotation = np.array(bundle.metadata.get("agent", {}).get("mean_rotation", np.eye(3)), dtype=np.float64)
    state, latent, _ = fit_mask_implicit(decoder, space, prepared, rotation, settings.implicit, progress, should_stop)
    pose = state_record("pose + shape", state)
    return PriorFit(implicit_mesh(decoder, latent, state), float(state.mm_per_unit()[0]), pose)


def _size_warning(bundle: ModelBundle, scale: float, source: str) -> str | None:
    lo, hi = bundle.metadata["normalisation"]["mm_per_unit_range"]
    if lo / SIZE_WARNING <= scale <= hi * SIZE_WARNING:
        return None
    typical = bundle.metadata["normalisation"]["mm_per_unit_median"]
    return (f"{source}: the mask is {scale / typical:.2f}x the typical {bundle.organ} size of the model "
            f"(training range {lo / typical:.2f}-{hi / typical:.2f}x): another organ, or not in mm?")


def refine_mask(
    mask: sitk.Image, model: str | os.PathLike, source: str | os.PathLike = "mask", all_parts: bool = False,
    settings: RefineSettings = RefineSettings(), progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None, subregions: bool | None = False,
    image: sitk.Image | None = None, image_source: str | os.PathLike = "image",
) -> Outcome:
    """Refine a binary mask (uint8 image, any grid) with ``model``; see the module doc.

    The outcome's segmentation is on the mask's grid; its vertices carry their signed distance to
    the mask boundary (``DISTANCE_ARRAY``, mm, + outside, NaN outside the image); ``detail`` is the
    model's fit before the fusion (LPS mm). ``subregions``: carry the template's sub-regions onto the
    segmentation (a template model trained with them; None: when the model has them). ``image``: the
    scan the mask was made from (any grid in the same LPS frame); a DISSM model with a refiner refines its
    fit on it, other models refuse it."""
    began = time.perf_counter()
    source = str(source)
    bundle = load_bundle(model)
    if bundle.kind not in MESH_KINDS + IMPLICIT_KINDS + TEMPLATE_KINDS:
        raise InputError(bundle.path, f"a {bundle.kind!r} model cannot refine masks (needs a dals, sdf, dissm or "
                                      "template model)")
    if subregions is None:
        subregions = "labels.grid" in bundle.tensors
    if subregions and "labels.grid" not in bundle.tensors:
        raise InputError(bundle.path, "has no sub-regions to transfer: this template model was trained without "
                                      "--subregions")
    if image is not None and not has_refiner(bundle):
        raise InputError(bundle.path, "cannot refine on an image (only a DISSM model with a refiner can); "
                                      "leave out the image")
    voxel = float(min(mask.GetSpacing()))
    default_trust = IMAGE_TRUST_VOXELS if image is not None else TRUST_VOXELS[bundle.kind]
    trust = default_trust if settings.trust_voxels is None else settings.trust_voxels
    full = mask
    mask = crop_to_mask(full, CROP_MARGIN_MM + 2 * trust * voxel, source)
    offset = [int(round(v)) for v in full.TransformPhysicalPointToContinuousIndex(mask.GetOrigin())]
    prepared = prepare_mask(mask, source, all_parts)

    def fit_progress(fraction: float, stage: str) -> None:
        if progress is not None:
            progress(0.9 * fraction, stage)

    built = build_model(bundle)
    fit = _fit_prior(bundle, built, prepared, settings, source, fit_progress, should_stop)
    warnings = list(prepared.warnings)
    if image is not None:
        if should_stop is not None and should_stop():
            raise FitCancelled("fit cancelled")
        if progress is not None:
            progress(0.9, "refinement on the image")
        fit.mesh, image_warning = _refined_on_image(built, image, str(image_source), fit, boundary_points(prepared))
        warnings += [image_warning] if image_warning else []
    prior = fit.mesh
    if len(prior.faces) == 0:
        raise InputError(source, "the model found no surface for this mask (is this the model's organ?)")
    if prior.volume < 0:
        prior.invert()
    if progress is not None:
        progress(0.92, "fusion with the mask")
    refined, segmentation = fuse_with_mask(prior, prepared, trust * voxel, settings.smoothing_voxels)
    if len(refined.faces) == 0:
        raise InputError(source, "the refined shape is empty (is this the model's organ?)")
    distances = _distances_to_mask(refined, prepared, full)
    warnings += [w for w in [_size_warning(bundle, fit.mm_per_unit, source)] if w]
    report = _report(bundle, prepared, refined, segmentation, distances, voxel, fit.pose, source, warnings)
    report["image"] = None if image is None else str(image_source)
    report["trust_mm"] = trust * voxel
    vertex_data = {DISTANCE_ARRAY: distances}
    if fit.uncertainty is not None:  # the prior's, at each refined vertex's nearest prior vertex
        vertex_data[UNCERTAINTY_ARRAY] = fit.uncertainty[cKDTree(prior.vertices).query(refined.vertices)[1]]
    if fit.template is not None:
        vertex_data[TEMPLATE_ARRAY] = fit.template.template_coordinates(np.asarray(refined.vertices))
    regions = None
    if subregions:  # on the cropped grid, before the paste: only its voxels can be inside
        regions = _on_full_grid(transfer_labels(segmentation, fit.template.template_coordinates,
                                                bundle.tensors["labels.grid"].numpy()), full, offset)
        report["subregions"] = bundle.metadata["subregions"]
    segmentation = _on_full_grid(segmentation, full, offset)
    report["seconds"] = time.perf_counter() - began
    if progress is not None:
        progress(1.0, "done")
    return Outcome(refined, bundle.organ, report, labelmap=segmentation, vertex_data=vertex_data,
                   summary=_summary(report), subregions=regions, detail=prior)


def _refined_on_image(model, image: sitk.Image, source: str, fit: PriorFit,
                      mask_points: np.ndarray) -> tuple[trimesh.Trimesh, str | None]:
    """The DISSM refinement of the mask fit's shape on ``image`` cut around the mask (its boundary points
    ``mask_points`` (N, 3), LPS mm), and a warning if the image's intensities are unlike the training images'."""
    from ..prep.crops import intensity_warning
    from .image_fit import refined_fit, state_from_record

    cropped = image_around(image, mask_points, IMAGE_BOX_MM, LARGEST_CROP_MM, source)
    warning = intensity_warning(model.metadata["agent"]["intensity_spread_range"], cropped, source)
    mesh = refined_fit(model, cropped, state_from_record(fit.pose))
    if len(mesh.faces) == 0:
        raise InputError(source, "the refinement on the image found no surface (is this the mask's image?)")
    return mesh, warning


def image_around(image: sitk.Image, points_lps: np.ndarray, box_mm: tuple[float, float, float],
                 largest_mm: tuple[float, float, float], source: str) -> sitk.Image:
    """``image`` (same voxels) cut to ``box_mm`` around the centre of ``points_lps`` (N, 3) along the axes
    where it is longer than ``largest_mm`` (extents along L, P, S; each image axis takes those of the patient
    axis it runs closest to). Most of the points must lie in the image."""
    index = lps_to_index(image, points_lps)
    size = np.array(image.GetSize())
    if np.mean(np.all((index > -0.5) & (index < size - 0.5), axis=1)) < 0.9:
        raise InputError(source, "does not cover the mask (another scan, or another frame?)")
    centre = index.mean(0)
    nearest_axis = np.abs(np.array(image.GetDirection()).reshape(3, 3)).argmax(0)  # LPS axis of each of i, j, k
    half = np.array(box_mm)[nearest_axis] / 2 / np.array(image.GetSpacing())
    lo = np.clip(np.floor(centre - half), 0, size - 1).astype(int)
    hi = np.clip(np.ceil(centre + half) + 1, lo + 1, size).astype(int)
    whole = size * np.array(image.GetSpacing()) <= np.array(largest_mm)[nearest_axis]
    lo, hi = np.where(whole, 0, lo), np.where(whole, size, hi)
    return sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])


def _on_full_grid(cropped: sitk.Image, full: sitk.Image, offset: list[int]) -> sitk.Image:
    """A uint8 image on the crop pasted into zeros on the full mask's grid (``offset``: the crop's first voxel)."""
    image = sitk.Paste(sitk.Image(full.GetSize(), sitk.sitkUInt8), cropped, cropped.GetSize(), [0, 0, 0], offset)
    image.CopyInformation(full)
    return image


def _summary(report: dict) -> str:
    """What the command line prints: agreement with the mask and the largest disagreeing patches."""
    distance = report["distance_to_mask_boundary_mm"]
    on_image = f" on {report['image']}" if report.get("image") else ""
    lines = [f"refined {report['organ']} mask {report['input']}{on_image} in {report['seconds']:.1f} s: Dice with the mask "
             f"{report['dice_with_mask']:.3f}, {report['added_ml']:.1f} ml added, {report['removed_ml']:.1f} ml "
             f"removed; {100 * (distance['disagreeing_fraction'] or 0):.0f}% of the surface is over "
             f"{distance['disagreeing_threshold_mm']:.1f} mm from the mask boundary"]
    lines += [f"  {r['area_mm2']:.0f} mm2 around LPS {r['centre_lps_mm']} mm, {r['mean_distance_mm']:+.1f} mm: "
              f"{r['reading']}" for r in distance["regions"][:3]]
    return "\n".join(lines)


def _distances_to_mask(mesh: trimesh.Trimesh, prepared: PreparedMask, full: sitk.Image) -> np.ndarray:
    """(V,) signed distance (mm, + outside) of each vertex to the mask boundary; NaN outside the image.

    Sampled from the cropped mask's map; vertices beyond the crop but inside ``full`` lie outside
    the mask (the crop holds all of it), at their distance to the nearest boundary point.
    """
    verts = np.asarray(mesh.vertices)
    distances, valid = DistanceSampler(prepared.sdf_mm, prepared.mask)(torch.tensor(verts, dtype=torch.float32))
    distances, valid = distances.double().numpy(), valid.numpy()
    index = lps_to_index(full, verts)
    in_image = np.all((index >= 0) & (index <= np.array(full.GetSize()) - 1), axis=1)
    beyond_crop = in_image & ~valid
    if beyond_crop.any():
        distances[beyond_crop] = cKDTree(boundary_points(prepared)).query(verts[beyond_crop])[0]
    return np.where(in_image, distances, np.nan)


def disagreement_regions(mesh: trimesh.Trimesh, distances: np.ndarray, threshold_mm: float,
                         limit: int = 10) -> list[dict]:
    """Connected surface patches (LPS mm) farther than ``threshold_mm`` from the mask boundary, largest first.

    A positive mean distance means the surface lies outside the mask there (the mask may miss a
    part), a negative one that the mask reaches beyond the surface (a leak, or a staircase).
    """
    far = np.abs(np.nan_to_num(distances)) > threshold_mm
    edges = mesh.edges_unique[far[mesh.edges_unique].all(1)]
    patches = trimesh.graph.connected_components(edges, nodes=np.flatnonzero(far), min_len=1)
    areas = np.zeros(len(mesh.vertices))
    np.add.at(areas, mesh.faces.ravel(), np.repeat(mesh.area_faces / 3.0, 3))  # one third of each face per corner
    regions = []
    for patch in patches:
        mean = float(distances[patch].mean())
        regions.append({
            "centre_lps_mm": mesh.vertices[patch].mean(0).round(1).tolist(), "area_mm2": float(areas[patch].sum()),
            "mean_distance_mm": mean, "max_abs_distance_mm": float(np.abs(distances[patch]).max()),
            "reading": "the mask misses a part here?" if mean > 0 else "the mask leaks beyond the shape here?",
        })
    return sorted(regions, key=lambda r: -r["area_mm2"])[:limit]


def _report(bundle, prepared, mesh, segmentation, distances, voxel, pose, source, warnings) -> dict:
    inside = sitk.GetArrayViewFromImage(prepared.mask) > 0
    refined = sitk.GetArrayViewFromImage(segmentation) > 0
    ml = float(np.prod(prepared.mask.GetSpacing())) / 1000.0
    known = distances[np.isfinite(distances)]
    far = np.abs(known) > DISAGREE_VOXELS * voxel
    return {
        "input": source, "model": str(bundle.path), "organ": bundle.organ, "route": bundle.kind, "frame": "LPS mm",
        "pose": pose, "parts_in_mask": prepared.parts, "border_faces": prepared.border_faces, "warnings": warnings,
        "mask_volume_ml": float(inside.sum()) * ml, "refined_volume_ml": float(refined.sum()) * ml,
        "added_ml": float((refined & ~inside).sum()) * ml, "removed_ml": float((inside & ~refined).sum()) * ml,
        "dice_with_mask": dice(refined, inside),
        "distance_to_mask_boundary_mm": {
            "sign": "+ outside the mask, - inside",
            "median_abs": float(np.median(np.abs(known))) if len(known) else None,
            "p95_abs": float(np.percentile(np.abs(known), 95)) if len(known) else None,
            "max_abs": float(np.abs(known).max()) if len(known) else None,
            "vertices_outside_image": int((~np.isfinite(distances)).sum()),
            "disagreeing_fraction": float(far.mean()) if len(known) else None,
            "disagreeing_threshold_mm": DISAGREE_VOXELS * voxel,
            "regions": disagreement_regions(mesh, distances, DISAGREE_VOXELS * voxel),
        },
        "mesh": {"vertices": len(mesh.vertices), "quality": mesh_quality(mesh), "volume_ml": float(mesh.volume) / 1000},
    }
