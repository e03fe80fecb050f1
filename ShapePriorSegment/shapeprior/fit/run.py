"""High-level DALS fits shared by the command line and the MRML bridge: LPS mm in, an :class:`Outcome` out."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..io.points import check_fit_points
from ..metrics import mesh_quality, self_intersection_fraction
from ..models.bundle import ModelBundle
from ..models.dals import DALSDecoder
from ..models.registry import load_model
from ..settings import FitSettings
from .contour_interpolation import blend_with_contours
from .contours import Plane, group_planes
from .dals_fit import ContourTask, FitResult, FitState, PointTask, contour_residuals, fit_dals
from .outcome import Outcome
from .size import check_extent, check_size
from .uncertainty import (UNCERTAINTY_ARRAY, describe_plane, point_weights, shape_posterior, suggest_plane,
                          training_model)
from .warm_start import fit_state_record, read_warm_start

# Per-vertex distance to the nearest annotation point (mm): colours the fitted model.
DISTANCE_ARRAY = "DistanceToAnnotation"


def _report(bundle: ModelBundle, result: FitResult, source: str, settings: FitSettings) -> dict:
    return {
        "input": str(source),
        "model": str(bundle.path),
        "organ": bundle.organ,
        "frame": "LPS mm",
        "pose_model_to_lps": result.pose.to_dict(),
        "iterations": result.iterations,
        "seconds": result.seconds,
        "settings": vars(settings).copy(),
        "mesh": {
            "vertices": len(result.mesh.vertices),
            "quality": mesh_quality(result.mesh),
            "self_intersecting_faces": self_intersection_fraction(result.mesh),
            "volume_ml": float(result.mesh.volume) / 1000.0,
        },
    }


def _load(model: str | os.PathLike, points_lps: np.ndarray, source) -> tuple[ModelBundle, DALSDecoder, torch.Tensor]:
    """The DALS model, once the annotation's size is checked against it."""
    bundle, (decoder, latent_mean) = load_model(model, kind="dals")
    check_extent(bundle, points_lps, source)
    return bundle, decoder, latent_mean


def _outcome(result: FitResult, bundle: ModelBundle, report: dict, points_lps: np.ndarray, summary: str,
             uncertainty: np.ndarray, curves: list[np.ndarray] = ()) -> Outcome:
    """The fit's :class:`Outcome`, its vertices coloured by their distance to ``points_lps`` (N, 3),
    with their ``uncertainty`` (V,) mm beside."""
    distances = cKDTree(points_lps).query(np.asarray(result.mesh.vertices))[0]
    report["distance_to_annotation_mm"] = {"median": float(np.median(distances)), "max": float(distances.max())}
    report["uncertainty_mm"] = {
        "coverage": 0.9, "median": float(np.median(uncertainty)), "p90": float(np.percentile(uncertainty, 90)),
        "max": float(uncertainty.max()), "tolerance": _tolerance_mm(result.pose.scale),
        "share_above_tolerance": float(np.mean(uncertainty > _tolerance_mm(result.pose.scale))),
    }
    report["fit_state"] = fit_state_record(result.state, bundle, curves, report["settings"]["level"])
    report.setdefault("warnings", [])
    return Outcome(result.mesh, bundle.organ, report, vertex_data={DISTANCE_ARRAY: distances,
                                                                   UNCERTAINTY_ARRAY: uncertainty},
                   curves=list(curves), summary=summary, detail=result)


def _tolerance_mm(mm_per_unit: float) -> float:
    """The F@2% tolerance, 2% of the organ's bounding-sphere diameter (the unit sphere's is 2 units)."""
    return 0.04 * mm_per_unit


def fit_planes(
    decoder: DALSDecoder,
    latent_mean: torch.Tensor,
    planes: list[Plane],
    settings: FitSettings = FitSettings(),
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    start: FitState | None = None,
) -> FitResult:
    """:func:`fit_dals` to the curves of ``planes`` (LPS mm), or a refit from ``start``; then, near
    the drawn planes, the surface is blended onto the curves' interpolant (``settings.contour_blend_mm``,
    0: not), so it passes through the curves. ``seconds`` includes the blend."""
    result = fit_dals(decoder, latent_mean, lambda unit_mm: ContourTask(planes, settings.samples, unit_mm), settings,
                      progress, should_stop, start)
    if settings.contour_blend_mm <= 0:
        return result
    began = time.perf_counter()
    mesh = blend_with_contours(result.mesh, planes, settings.contour_blend_mm)
    return replace(result, mesh=mesh, seconds=result.seconds + time.perf_counter() - began)


def fit_curves(
    curves: list[np.ndarray],
    model: str | os.PathLike = "liver",
    settings: FitSettings = FitSettings(),
    source: str | os.PathLike = "contours",
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    warm_start: str | os.PathLike | dict | None = None,
    suggest: str = "axes",
    bounds: np.ndarray | None = None,
) -> Outcome:
    """Fit the DALS model to closed planar curves (each (N_i, 3), LPS mm) with :func:`fit_planes`, or
    refit from an earlier fit (``warm_start``: its report, or the report's path).

    The outcome carries each vertex's uncertainty and, unless ``suggest`` is "off", the report's
    ``suggested_plane`` ("axes": on a patient axis; "oblique": any direction) inside ``bounds``
    ((2, 3) LPS mm, e.g. the image's box). ``detail`` is the :class:`FitResult`."""
    planes = group_planes(curves, str(source))  # the curves' own defects first, before the model loads
    bundle, decoder, latent_mean = _load(model, np.concatenate(curves), source)
    start, notes = (read_warm_start(warm_start, bundle, curves, settings.level, settings.vertex_modes)
                    if warm_start is not None else (None, []))
    result = fit_planes(decoder, latent_mean, planes, settings, progress, should_stop, start)
    check_size(bundle, result.pose.scale, source)
    report = _report(bundle, result, str(source), settings)
    report["planes"] = len(planes)
    report["residuals"] = contour_residuals(result.mesh, planes)
    report["warnings"] = residual_warnings(report["residuals"], result.pose.scale)
    report["warm_start"] = notes[0] if notes else None
    mean = float(np.mean([r["mean_mm"] for r in report["residuals"]]))
    worst = max(r["max_mm"] for r in report["residuals"])
    lines = [f"{'refitted' if start else 'fitted'} {bundle.organ} to {len(curves)} curves on {len(planes)} planes "
             f"in {result.seconds:.1f} s: contour residual mean {mean:.2f} mm, max {worst:.2f} mm"]
    shapes, modes = training_model(bundle, decoder, settings.level)
    posterior = shape_posterior(result.mesh, result.pose, shapes, modes,
                                [(p.origin, p.normal, p.points) for p in planes])
    uncertainty = posterior.uncertainty_mm()
    if suggest != "off":
        report["suggested_plane"], line = _suggestion(posterior, uncertainty, result.pose.scale, suggest, bounds)
        lines.append(line)
    resampled = np.concatenate([c for plane in planes for c in plane.curves])
    return _outcome(result, bundle, report, resampled, "\n".join(lines), uncertainty, curves)


def _suggestion(posterior, uncertainty: np.ndarray, mm_per_unit: float, mode: str,
                bounds: np.ndarray | None) -> tuple[dict | None, str]:
    """(the report's ``suggested_plane``, the line that tells the user) for a fitted surface."""
    tolerance = _tolerance_mm(mm_per_unit)
    if uncertainty.max() <= tolerance:
        return None, (f"next: no contour needed: the uncertainty is under the {tolerance:.1f} mm tolerance "
                      f"everywhere (at most {uncertainty.max():.1f} mm)")
    plane = suggest_plane(posterior, oblique=mode == "oblique", bounds=bounds)
    if plane is None:
        return None, "next: no suggestion: no plane inside the reference image cuts the surface"
    gain = plane["expected_gain"]
    return plane, (f"next: {describe_plane(plane)} (expected to lower the RMS uncertainty from "
                   f"{gain['rms_uncertainty_before_mm']:.1f} to "
                   f"{gain['rms_uncertainty_before_mm'] - gain['rms_uncertainty_mm']:.1f} mm)")


def residual_warnings(residuals: list[dict], mm_per_unit: float) -> list[str]:
    """A warning for each curve the surface does not follow: mean residual over 2% of the
    organ's size (the F@2% tolerance; 2 mm at least). Small separate curves, such as a
    plane grazing a lobe's tip, are the usual case."""
    tolerance = max(2.0, 0.04 * mm_per_unit)  # the unit sphere's diameter is 2 units
    return [
        f"curve {r['curve']} is {r['mean_mm']:.1f} mm from the surface on average (tolerance {tolerance:.1f} mm): "
        f"the model does not follow it; check the curve, or add a contour near it"
        for r in residuals if not r["mean_mm"] <= tolerance
    ]


def fit_points(
    points: np.ndarray,
    model: str | os.PathLike = "liver",
    settings: FitSettings = FitSettings(),
    source: str | os.PathLike = "points",
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Outcome:
    """Fit the DALS model to a point cloud (N, 3) in LPS mm; ``detail`` is the :class:`FitResult`."""
    points = check_fit_points(points, source)
    bundle, decoder, latent_mean = _load(model, points, source)
    result = fit_dals(decoder, latent_mean, lambda unit_mm: PointTask(points, settings.samples, unit_mm), settings,
                      progress, should_stop)
    check_size(bundle, result.pose.scale, source)
    summary = f"fitted {bundle.organ} to {len(points)} points in {result.seconds:.1f} s"
    shapes, modes = training_model(bundle, decoder, settings.level)
    posterior = shape_posterior(result.mesh, result.pose, shapes, modes, [], point_weights(result.mesh, points))
    return _outcome(result, bundle, _report(bundle, result, str(source), settings), points, summary,
                    posterior.uncertainty_mm())
