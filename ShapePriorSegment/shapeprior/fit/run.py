"""High-level DALS fits shared by the command line and the MRML bridge: LPS mm in, an :class:`Outcome` out."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Callable

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
from .dals_fit import ContourTask, FitResult, PointTask, contour_residuals, fit_dals
from .outcome import Outcome
from .size import check_extent, check_size

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
             curves: list[np.ndarray] = ()) -> Outcome:
    """The fit's :class:`Outcome`, its vertices coloured by their distance to ``points_lps`` (N, 3)."""
    distances = cKDTree(points_lps).query(np.asarray(result.mesh.vertices))[0]
    report["distance_to_annotation_mm"] = {"median": float(np.median(distances)), "max": float(distances.max())}
    report.setdefault("warnings", [])
    return Outcome(result.mesh, bundle.organ, report, vertex_data={DISTANCE_ARRAY: distances}, curves=list(curves),
                   summary=summary, detail=result)


def fit_planes(
    decoder: DALSDecoder,
    latent_mean: torch.Tensor,
    planes: list[Plane],
    settings: FitSettings = FitSettings(),
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FitResult:
    """:func:`fit_dals` to the curves of ``planes`` (LPS mm); then, near the drawn planes, the
    surface is blended onto the curves' interpolant (``settings.contour_blend_mm``, 0: not),
    so it passes through the curves. ``seconds`` includes the blend."""
    result = fit_dals(decoder, latent_mean, lambda unit_mm: ContourTask(planes, settings.samples, unit_mm), settings,
                      progress, should_stop)
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
) -> Outcome:
    """Fit the DALS model to closed planar curves (each (N_i, 3), LPS mm) with :func:`fit_planes`;
    ``detail`` is the :class:`FitResult`."""
    planes = group_planes(curves, str(source))  # the curves' own defects first, before the model loads
    bundle, decoder, latent_mean = _load(model, np.concatenate(curves), source)
    result = fit_planes(decoder, latent_mean, planes, settings, progress, should_stop)
    check_size(bundle, result.pose.scale, source)
    report = _report(bundle, result, str(source), settings)
    report["planes"] = len(planes)
    report["residuals"] = contour_residuals(result.mesh, planes)
    report["warnings"] = residual_warnings(report["residuals"], result.pose.scale)
    mean = float(np.mean([r["mean_mm"] for r in report["residuals"]]))
    worst = max(r["max_mm"] for r in report["residuals"])
    summary = (f"fitted {bundle.organ} to {len(curves)} curves on {len(planes)} planes in {result.seconds:.1f} s: "
               f"contour residual mean {mean:.2f} mm, max {worst:.2f} mm")
    resampled = np.concatenate([c for plane in planes for c in plane.curves])
    return _outcome(result, bundle, report, resampled, summary, curves)


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
    return _outcome(result, bundle, _report(bundle, result, str(source), settings), points, summary)
