"""High-level DALS fits shared by the command line and the MRML bridge (LPS mm in and out)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import InputError
from ..metrics import mesh_quality, self_intersection_fraction
from ..models.bundle import ModelBundle, load_bundle
from ..models.dals import DALSDecoder, decoder_from_bundle
from .contour_interpolation import blend_with_contours
from .contours import Plane, group_planes
from .dals_fit import ContourTask, FitResult, FitSettings, PointTask, contour_residuals, fit_dals

# Fitted sizes beyond these factors of the training range are refused: the curves
# are not of this organ, or not in millimetres.
SIZE_TOLERANCE = 2.0


@dataclass
class DALSFit:
    result: FitResult
    bundle: ModelBundle
    planes: list[Plane] | None
    report: dict


def check_size(bundle: ModelBundle, scale: float, source: str | os.PathLike) -> None:
    lo, hi = bundle.metadata["normalisation"]["mm_per_unit_range"]
    if not lo / SIZE_TOLERANCE <= scale <= hi * SIZE_TOLERANCE:
        raise InputError(
            source,
            f"annotation is {scale / np.median([lo, hi]):.2f}x the typical {bundle.organ} size "
            f"(model range {lo:.0f}-{hi:.0f} mm per unit, got {scale:.0f}): not this organ, or not in mm?",
        )


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


def _fit(fit_with: Callable[[DALSDecoder, torch.Tensor], FitResult], model, source) -> tuple[FitResult, ModelBundle]:
    bundle = load_bundle(model, kind="dals")
    result = fit_with(*decoder_from_bundle(bundle))
    check_size(bundle, result.pose.scale, source)
    return result, bundle


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
) -> DALSFit:
    """Fit the DALS model to closed planar curves (each (N_i, 3), LPS mm) with :func:`fit_planes`."""
    planes = group_planes(curves, str(source))
    result, bundle = _fit(lambda decoder, mean: fit_planes(decoder, mean, planes, settings, progress, should_stop),
                          model, source)
    report = _report(bundle, result, str(source), settings)
    report["planes"] = len(planes)
    report["residuals"] = contour_residuals(result.mesh, planes)
    report["warnings"] = residual_warnings(report["residuals"], result.pose.scale)
    return DALSFit(result, bundle, planes, report)


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
) -> DALSFit:
    """Fit the DALS model to a point cloud (N, 3) in LPS mm."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) < 10:
        raise InputError(source, "a point cloud of at least 10 points (N, 3) is needed")
    if not np.isfinite(points).all():
        raise InputError(source, "points hold NaN or infinite coordinates")
    result, bundle = _fit(
        lambda decoder, mean: fit_dals(decoder, mean, lambda unit_mm: PointTask(points, settings.samples, unit_mm),
                                       settings, progress, should_stop),
        model, source,
    )
    return DALSFit(result, bundle, None, _report(bundle, result, str(source), settings))


def read_point_cloud(path: str | os.PathLike) -> np.ndarray:
    """Points (N, 3) LPS mm from ``.mrk.json`` (point lists), ``.ply`` or ``.xyz``."""
    from ..io.markups import read_point_list

    path = Path(path)
    name = path.name.lower()
    if name.endswith(".mrk.json"):
        return read_point_list(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    if name.endswith(".xyz"):
        try:
            points = np.loadtxt(path, dtype=np.float64, ndmin=2)[:, :3]
        except ValueError:
            raise InputError(path, "not a readable .xyz point file (rows of x y z)") from None
        return points
    if name.endswith(".ply"):
        import trimesh

        try:
            cloud = trimesh.load(path, process=False)
        except Exception as exc:
            raise InputError(path, f"not a readable PLY ({type(exc).__name__})") from None
        return np.asarray(cloud.vertices, dtype=np.float64)
    raise InputError(path, "unsupported point cloud format (expected .mrk.json, .ply or .xyz)")
