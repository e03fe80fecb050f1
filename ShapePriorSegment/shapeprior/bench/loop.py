"""``shapeprior benchmark loop``: a simulated clinician adding one contour at a time.

Each held-out liver (LPS mm) starts from the three central orthogonal contours; then, up to
``max_contours``, one more contour cut from the true surface is added at a time, by
- ``suggested``: the fitted surface's ``suggested_plane``, refitted from the previous fit;
- ``fixed``: the contour benchmark's schedule (axial at +25% of the height, then coronal,
  sagittal, ...), refitted from the previous fit;
- ``oracle``: at the fourth contour only, the best by the true surface of every candidate
  axis plane (the ceiling of any suggestion among them), each refitted from the first fit;
- ``RBF oracle``: thin-plate interpolation with its best candidate plane at each step,
  stopped once it reaches the target F@2%.
Each suggested step is also fitted cold (from scratch) on the same curves, and its
uncertainty is compared with the fitted surface's true error.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import trimesh
from scipy.stats import rankdata
from tqdm import tqdm

from ..errors import InputError
from ..fit.contours import group_planes
from ..fit.run import fit_planes
from ..fit.uncertainty import shape_posterior, suggest_plane, training_model
from ..io import read_mesh
from ..metrics import surface_metrics
from ..metrics.surface import point_to_surface
from ..models.registry import load_model
from ..prep.surface import repair_mesh
from ..settings import FitSettings
from .baselines import rbf_surface
from .contours import cut_curves, held_out_cases, section_curves

TARGET = 90.0  # NoC@90: contours needed to reach F@2% >= 90
# Candidate planes: offsets from the centre, x the extent (the fixed schedule's +-25% among them).
ORACLE_FRACTIONS = (-0.375, -0.25, -0.125, 0.125, 0.25, 0.375)


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` (N,) for the boolean labels ``positive`` (N,) (Mann-Whitney)."""
    n1, n0 = int(positive.sum()), int((~positive).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float((rankdata(score)[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def calibration(mesh: trimesh.Trimesh, uncertainty: np.ndarray, truth: trimesh.Trimesh) -> dict:
    """How the per-vertex ``uncertainty`` (V,) mm ranks and bounds the vertices' true error."""
    error = point_to_surface(np.asarray(mesh.vertices), truth)
    tau = 0.04 * float(truth.bounding_sphere.primitive.radius)  # the F@2% tolerance
    return {"auroc": auroc(uncertainty, error > tau), "coverage": float(np.mean(error <= uncertainty))}


def candidate_planes(truth: trimesh.Trimesh) -> list[tuple[np.ndarray, np.ndarray]]:
    """The oracles' candidates: axis planes at :data:`ORACLE_FRACTIONS` of the true extent (LPS mm)."""
    lo, hi = truth.bounds
    return [((lo + hi) / 2 + np.eye(3)[axis] * f * (hi[axis] - lo[axis]), np.eye(3)[axis])
            for axis in range(3) for f in ORACLE_FRACTIONS]


class Case:
    """One liver: its truth, the model, and a refit of any curve set from any earlier fit."""

    def __init__(self, path: Path, model: tuple, settings: FitSettings, mesh_frame: str):
        self.truth, _ = repair_mesh(read_mesh(path, mesh_frame))
        self.name = path.name
        self.bundle, (self.decoder, self.mean) = model
        self.settings = settings

    def fit(self, curves: list[np.ndarray], start=None) -> dict:
        """A fit (or refit from ``start``) with its uncertainty and suggestion, as the user waits for it."""
        began = time.perf_counter()
        planes = group_planes(curves, self.name)
        result = fit_planes(self.decoder, self.mean, planes, self.settings, start=start)
        shapes, modes = training_model(self.bundle, self.decoder, self.settings.level)
        posterior = shape_posterior(result.mesh, result.pose, shapes, modes,
                                    [(p.origin, p.normal, p.points) for p in planes])
        uncertainty = posterior.uncertainty_mm()
        suggestion = suggest_plane(posterior)
        seconds = time.perf_counter() - began
        return {"result": result, "uncertainty": uncertainty, "suggestion": suggestion, "seconds": seconds,
                **self.metrics(result.mesh)}

    def metrics(self, mesh: trimesh.Trimesh) -> dict:
        m = surface_metrics(mesh, self.truth)
        return {"fscore_2": m["fscore_2"], "assd_mm": m["assd_mm"], "hd95_mm": m["hd95_mm"]}

    def extend(self, curves: list[np.ndarray], origin, normal) -> list[np.ndarray]:
        """``curves`` and the truth's cut with the plane, unless the cut's curves cannot be drawn
        with them (they cross a drawn curve where the plane grazes the surface)."""
        new = section_curves(self.truth, np.asarray(origin, dtype=float), np.asarray(normal, dtype=float))
        try:
            group_planes(curves + new, self.name)
        except InputError:
            return curves
        return curves + new


def _row(case: Case, strategy: str, contours: int, fit: dict, **extra) -> dict:
    keep = {k: fit[k] for k in ("fscore_2", "assd_mm", "hd95_mm")}
    return {"case": case.name, "strategy": strategy, "contours": contours, **keep,
            "seconds": fit.get("seconds", float("nan")), **extra}


def run_case(case: Case, max_contours: int) -> list[dict]:
    """Every strategy's rows for one liver."""
    curves = cut_curves(case.truth, 3)
    first = case.fit(curves)
    rows = [_row(case, s, 3, first, **calibration(first["result"].mesh, first["uncertainty"], case.truth))
            for s in ("suggested", "fixed")]
    # Suggested planes, each refit from the previous fit, and a cold fit of the same curves.
    fit, drawn = first, list(curves)
    for count in range(4, max_contours + 1):
        plane, before = fit["suggestion"], len(drawn)
        if plane is not None:
            drawn = case.extend(drawn, plane["origin"], plane["normal"])
        fit = case.fit(drawn, start=fit["result"].state)
        cold = case.fit(drawn)
        rows.append(_row(case, "suggested", count, fit, cold_fscore_2=cold["fscore_2"], cold_seconds=cold["seconds"],
                         axis=plane["axis"] if plane else None, new_curves=len(drawn) - before,
                         **calibration(fit["result"].mesh, fit["uncertainty"], case.truth)))
    fit = first
    for count in range(4, max_contours + 1):
        fit = case.fit(cut_curves(case.truth, count), start=fit["result"].state)  # same cut as the contour benchmark
        rows.append(_row(case, "fixed", count, fit))
    candidates = candidate_planes(case.truth)
    trials = [case.fit(case.extend(curves, o, n), start=first["result"].state) for o, n in candidates]
    rows.append(_row(case, "oracle", 4, max(trials, key=lambda t: t["fscore_2"])))
    rows += rbf_oracle(case, curves, candidates, max_contours)
    return rows


def rbf_oracle(case: Case, curves: list[np.ndarray], candidates: list, max_contours: int) -> list[dict]:
    """Thin-plate interpolation with the best candidate plane added at each step, until F@2% >= TARGET."""
    rows, drawn, left = [], list(curves), list(candidates)
    score = case.metrics(rbf_surface(group_planes(drawn, case.name)))
    rows.append(_row(case, "RBF oracle", 3, score))
    for count in range(4, max_contours + 1):
        if score["fscore_2"] >= TARGET or not left:
            break
        trials = []
        for origin, normal in left:
            more = case.extend(drawn, origin, normal)
            trials.append((case.metrics(rbf_surface(group_planes(more, case.name))), more, (origin, normal)))
        score, drawn, chosen = max(trials, key=lambda t: t[0]["fscore_2"])
        left = [c for c in left if not (np.array_equal(c[0], chosen[0]) and np.array_equal(c[1], chosen[1]))]
        rows.append(_row(case, "RBF oracle", count, score))
    return rows


def run_loop(data: Path, patterns: list[str], model: str, settings: FitSettings, limit: int = 16, stride: int = 2,
             max_contours: int = 8, progress: bool = True, mesh_frame: str = "LPS") -> dict:
    """Rows for every case, strategy and contour count; cases: every ``stride``-th of the contour
    benchmark's ``limit`` held-out livers."""
    loaded = load_model(model, kind="dals")
    cases = held_out_cases(data, patterns, limit)[::stride]
    rows = []
    for path in tqdm(cases, desc="loop", disable=not progress, dynamic_ncols=True):
        rows += run_case(Case(path, loaded, settings, mesh_frame), max_contours)
    return {"cases": [c.name for c in cases], "rows": rows, "max_contours": max_contours}


def noc(rows: list[dict], strategy: str, cases: list[str], cap: int) -> float:
    """Mean number of contours to reach F@2% >= TARGET (``cap`` when never reached)."""
    counts = []
    for case in cases:
        reached = [r["contours"] for r in rows if r["case"] == case and r["strategy"] == strategy
                   and r["fscore_2"] >= TARGET]
        counts.append(min(reached, default=cap))
    return float(np.mean(counts))


def summarise(result: dict) -> str:
    """Markdown: per contour count and strategy, median [IQR] F@2%, ASSD, HD95; NoC@90; refit times;
    warm against cold; calibration of the uncertainty."""
    rows, cases, cap = result["rows"], result["cases"], result["max_contours"]

    def cell(strategy: str, count: int, key: str) -> str:
        v = np.array([r[key] for r in rows if r["strategy"] == strategy and r["contours"] == count], dtype=float)
        if len(v) == 0:
            return "-"
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        return f"{med:.3g} [{q1:.3g}-{q3:.3g}]" + ("" if len(v) == len(cases) else f" (n={len(v)})")

    counts = list(range(3, cap + 1))
    lines = []
    for key, label in (("fscore_2", "F@2%"), ("assd_mm", "ASSD mm"), ("hd95_mm", "HD95 mm")):
        lines += [f"| {label} by contours | " + " | ".join(map(str, counts)) + " |", "|---" * (len(counts) + 1) + "|"]
        for strategy in ("suggested", "fixed", "oracle", "RBF oracle"):
            lines.append(f"| {strategy} | " + " | ".join(cell(strategy, c, key) for c in counts) + " |")
        lines.append("")
    suggested = [r for r in rows if r["strategy"] == "suggested" and r["contours"] > 3]
    warm, cold = np.array([r["fscore_2"] for r in suggested]), np.array([r["cold_fscore_2"] for r in suggested])
    refit = np.array([r["seconds"] for r in suggested])
    calib = [r for r in rows if r["strategy"] == "suggested" and "auroc" in r]
    lines += [
        f"NoC@{TARGET:g} (mean, capped at {cap}): suggested {noc(rows, 'suggested', cases, cap):.2f}, "
        f"fixed {noc(rows, 'fixed', cases, cap):.2f}, RBF oracle {noc(rows, 'RBF oracle', cases, cap):.2f}.",
        "",
        f"Refit from the previous fit (fit, blend, uncertainty and suggestion, one thread): median "
        f"{np.median(refit):.2f} s (max {refit.max():.2f} s); F@2% median {np.median(warm):.1f} against "
        f"{np.median(cold):.1f} for a cold fit of the same curves (median of the differences "
        f"{np.median(warm - cold):+.1f}); cold fit median {np.median([r['cold_seconds'] for r in suggested]):.2f} s.",
        "",
        f"Uncertainty (90% band) against the true error, suggested fits of 3-{cap} contours: AUROC for errors over "
        f"2% of the diameter median {np.nanmedian([r['auroc'] for r in calib]):.3f} "
        f"(three contours: {np.nanmedian([r['auroc'] for r in calib if r['contours'] == 3]):.3f}); share of "
        f"vertices within their band {np.mean([r['coverage'] for r in calib]):.3f} (nominal 0.90).",
        "",
        f"{len(cases)} held-out livers: {', '.join(cases)}",
    ]
    return "\n".join(lines)


def plot(result: dict, path: str) -> None:
    """Median F@2% against the number of contours, one line per strategy (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io.atomic import atomic_output

    figure, axes = plt.subplots(figsize=(6, 4))
    for strategy, style in (("suggested", "o-"), ("fixed", "s--"), ("oracle", "*"), ("RBF oracle", "^:")):
        counts = sorted({r["contours"] for r in result["rows"] if r["strategy"] == strategy})
        medians = [np.median([r["fscore_2"] for r in result["rows"] if r["strategy"] == strategy
                              and r["contours"] == c]) for c in counts]
        label = f"{strategy} (each liver until {TARGET:g})" if strategy == "RBF oracle" else strategy
        axes.plot(counts, medians, style, label=label, markersize=8)
    axes.axhline(TARGET, color="grey", linewidth=0.8)
    axes.set_xlabel("contours drawn")
    axes.set_ylabel("median F@2% (held-out livers)")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    plt.close(figure)
