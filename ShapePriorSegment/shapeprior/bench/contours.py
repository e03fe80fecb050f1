"""``shapeprior benchmark contours``: whole organs from a few true contours, DALS vs baselines.

For each held-out surface (LPS mm) the contours are cut from the true surface on
axis planes through the organ's centre (3 planes), plus parallel planes at +-25%
of the extent for the planes-count curve (up to 9). Every method gets the same
curves in the same process; metrics compare each result with the true surface.
"""

from __future__ import annotations

import fnmatch
import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import trimesh
from tqdm import tqdm

from ..errors import InputError
from ..fit.contour_interpolation import plane_distances
from ..fit.contours import Plane, group_planes
from ..fit.run import fit_planes
from ..io import read_mesh
from ..metrics import mesh_quality, self_intersection_fraction, surface_metrics
from ..models.registry import load_model
from ..prep.surface import repair_mesh
from ..settings import FitSettings
from .baselines import convex_hull, fill_between_slices, rbf_surface

MAIN_METHOD = "DALS (per-vertex + contour blend)"  # what fit-contours does
CURVE_METHODS = (MAIN_METHOD, "RBF thin-plate", "fill between slices (ITK)")
# F@2% is also reported near the drawn planes, where interpolation is at its best, and far from them.
NEAR_MM, FAR_MM = 10.0, 20.0
# Plane k (0-based): axis and offset as a fraction of the organ's extent on that axis.
PLANE_SCHEDULE = [(2, 0.0), (1, 0.0), (0, 0.0), (2, 0.25), (1, 0.25), (0, 0.25), (2, -0.25), (1, -0.25), (0, -0.25)]


def section_curves(mesh: trimesh.Trimesh, origin: np.ndarray, normal: np.ndarray) -> list[np.ndarray]:
    """The closed curves (LPS mm) where the plane through ``origin`` with ``normal`` cuts ``mesh``."""
    section = mesh.section(plane_origin=origin, plane_normal=normal)
    return [] if section is None else [np.asarray(loop) for loop in section.discrete if len(loop) >= 4]


def cut_curves(mesh: trimesh.Trimesh, num_planes: int = 3) -> list[np.ndarray]:
    """Closed curves (LPS mm) of ``mesh`` cut by the first ``num_planes`` schedule planes."""
    lo, hi = mesh.bounds
    centre = (lo + hi) / 2
    curves = []
    for axis, fraction in PLANE_SCHEDULE[:num_planes]:
        normal = np.eye(3)[axis]
        curves += section_curves(mesh, centre + normal * fraction * (hi[axis] - lo[axis]), normal)
    return curves


@dataclass
class Method:
    name: str
    run: Callable[[list[Plane]], trimesh.Trimesh]


def dals_methods(model: str, settings: FitSettings) -> list[Method]:
    _, (decoder, mean) = load_model(model, kind="dals")

    def fitter(s: FitSettings) -> Callable[[list[Plane]], trimesh.Trimesh]:
        return lambda planes: fit_planes(decoder, mean, planes, s).mesh

    unblended = replace(settings, contour_blend_mm=0.0)
    return [
        Method("DALS global latent", fitter(replace(unblended, vertex_steps=0))),
        Method("DALS per-vertex, no contour blend", fitter(unblended)),
        Method(MAIN_METHOD, fitter(settings)),
    ]


def baseline_methods() -> list[Method]:
    return [
        Method("convex hull", convex_hull),
        Method("RBF thin-plate", rbf_surface),
        Method("fill between slices (ITK)", fill_between_slices),
    ]


def plane_regions(planes: list[Plane]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Masks of points (N, 3) LPS mm within NEAR_MM of a drawn plane, and beyond FAR_MM of all."""
    return {"near": lambda points: plane_distances(points, planes) < NEAR_MM,
            "far": lambda points: plane_distances(points, planes) >= FAR_MM}


def held_out_cases(data: Path, patterns: list[str], limit: int | None) -> list[Path]:
    files = sorted(p for p in data.iterdir() if any(fnmatch.fnmatch(p.name, pat) for pat in patterns))
    if not files:
        raise InputError(data, f"no meshes match {', '.join(patterns)}")
    if limit:
        # Spread the subset over the datasets instead of taking the first names.
        files = [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]
    return files


def run_benchmark(
    data: Path, patterns: list[str], model: str, settings: FitSettings, limit: int | None = None,
    planes_curve: tuple[int, ...] = (3, 5, 7, 9), progress: bool = True, mesh_frame: str = "LPS",
) -> dict:
    """Per-case metrics for every method (3 planes) and the F@2% vs planes curve for DALS; the true
    surfaces are read in ``mesh_frame`` (see :func:`~shapeprior.io.read_mesh`)."""
    methods = baseline_methods() + dals_methods(model, settings)
    cases = held_out_cases(data, patterns, limit)
    rows, curve_rows = [], []
    for path in tqdm(cases, desc="benchmark", disable=not progress, dynamic_ncols=True):
        truth, _ = repair_mesh(read_mesh(path, mesh_frame))
        for count in sorted(set(planes_curve) | {3}):
            planes = group_planes(cut_curves(truth, count), str(path))
            for method in methods:
                if count != 3 and method.name not in CURVE_METHODS:
                    continue
                start = time.perf_counter()
                mesh = method.run(planes)
                seconds = time.perf_counter() - start
                metrics = surface_metrics(mesh, truth, regions=plane_regions(planes))
                row = {"case": path.name, "method": method.name, "planes": count, "seconds": seconds, **metrics}
                if count == 3:
                    row["quality"] = mesh_quality(mesh)
                    row["self_intersections_pct"] = 100 * self_intersection_fraction(mesh)
                    rows.append(row)
                curve_rows.append(row)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"cases": [c.name for c in cases], "rows": rows, "curve": curve_rows, "peak_rss_mb": peak_mb}


def summarise(result: dict) -> str:
    """Markdown tables: medians [IQR] per method, and F@2% by number of planes."""
    keys = [("fscore_1", "F@1%"), ("fscore_2", "F@2%"), ("fscore_2_box", "F@2% box"),
            ("fscore_2_near", f"F@2% <{NEAR_MM:g} mm"), ("fscore_2_far", f"F@2% >{FAR_MM:g} mm"),
            ("assd_mm", "ASSD mm"), ("hd95_mm", "HD95 mm"),
            ("chamfer_normalised", "norm. Chamfer"), ("quality", "quality"),
            ("self_intersections_pct", "self-int. %"), ("seconds", "time s")]
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    lines = ["| method | " + " | ".join(k[1] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for m in methods:
        cells = []
        for key, _ in keys:
            v = np.array([r[key] for r in result["rows"] if r["method"] == m], dtype=float)
            q1, med, q3 = np.percentile(v, [25, 50, 75])
            cells.append(f"{med:.3g} [{q1:.3g}-{q3:.3g}]")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    counts = sorted({r["planes"] for r in result["curve"]})
    curve_methods = list(dict.fromkeys(r["method"] for r in result["curve"] if r["planes"] != 3))
    lines += ["", "| median F@2% | " + " | ".join(f"{c} planes" for c in counts) + " |", "|---" * (len(counts) + 1) + "|"]
    for m in curve_methods:
        cells = [f"{np.median([r['fscore_2'] for r in result['curve'] if r['method'] == m and r['planes'] == c]):.1f}"
                 for c in counts]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"{len(result['cases'])} held-out cases; peak memory of the benchmark process {result['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)
