"""``shapeprior benchmark image --deepssm``: DeepSSM against the shape-study pipelines it replaces.

On each held-out image, in one process: DeepSSM's prediction; the best any shape-model prediction can do
(the PCA projection of the true surface's correspondences); the mean shape; the classic pipeline
(U-Net mask -> surface -> CPD correspondences -> PCA projection); and DISSM started from DeepSSM's pose.
Correspondences of a surface are found as the shape model's were (similarity to the dataset's anchor,
unit sphere, non-rigid CPD from the model's template), and every method's points are placed in the image
by the same rigid registration onto the reference crop, so only the shape differs.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import trimesh

from ..fit.deepssm_fit import fit_image_by_kind, fit_image_deepssm
from ..io.labelmaps import mesh_to_labelmap
from ..metrics.surface import surface_metrics
from ..models.pdm import PointDistributionModel
from ..models.unet import segment
from ..prep.align import align_to_anchor
from ..prep.correspond import correspond
from ..prep.normalise import transformed, unit_sphere_transform
from ..prep.surface import mask_to_surface
from ..transform import Similarity

MODES_CORRELATED = 5  # the first modes whose predicted loadings are correlated with the true ones


def surface_correspondences(mesh: trimesh.Trimesh, anchor: trimesh.Trimesh, template: np.ndarray,
                            align_points: int, seed: int = 0) -> np.ndarray:
    """(P, 3) points on ``mesh`` (LPS mm) corresponding to the shape model's unit-sphere ``template``:
    as the dataset's shapes were prepared (similarity onto ``anchor``, unit sphere) and then put in
    correspondence (non-rigid CPD)."""
    align = align_to_anchor(mesh, anchor, align_points, seed)
    to_unit = unit_sphere_transform(transformed(mesh, align)).compose(align)
    return to_unit.inverse().apply(correspond(transformed(mesh, to_unit), template, seed))


def projected(pdm: PointDistributionModel, points: np.ndarray, to_image: Similarity) -> tuple[np.ndarray, np.ndarray]:
    """(loadings (K,), points (P, 3) image mm) of the shape model's closest shape to ``points`` (image mm)."""
    loadings = pdm.project(to_image.inverse().apply(points))
    return loadings, to_image.apply(pdm.points(loadings))


def shape_row(method: str, pdm: PointDistributionModel, points: np.ndarray, loadings: np.ndarray, image: sitk.Image,
              truth: dict, seconds: float | None, mask_metrics) -> dict:
    """Scores of one method's corresponding points (P, 3) image mm: mask metrics of its voxelisation, surface
    distances to the true surface, correspondence RMSE against the true correspondences."""
    mesh = pdm.mesh(points)
    surface = surface_metrics(mesh, truth["surface"], num_points=10000)
    return {"method": method, "seconds": seconds, **mask_metrics(mesh_to_labelmap(mesh, image), truth["mask"]),
            "surface_mm": surface["assd_mm"], "surface_hd95_mm": surface["hd95_mm"],
            "correspondence_rmse_mm": float(np.sqrt(((points - truth["points"]) ** 2).sum(1).mean())),
            "loadings": np.asarray(loadings).tolist(), "mahalanobis": float(pdm.mahalanobis(loadings))}


def deepssm_rows(case: dict, deepssm, dissm, net, anchor: trimesh.Trimesh, align_points: int, mask_metrics) -> list:
    """The rows of one held-out case (``case``: image, mask, surface LPS mm, image path)."""
    image, pdm = case["image"], deepssm[1].pdm
    began = time.perf_counter()
    outcome = fit_image_deepssm(case["image"], deepssm, case["path"])
    seconds = time.perf_counter() - began
    to_image = outcome.detail["to_image"]
    truth = {"mask": case["mask"], "surface": case["surface"],
             "points": surface_correspondences(case["surface"], anchor, pdm.template, align_points)}
    best_loadings, best_points = projected(pdm, truth["points"], to_image)
    truth["loadings"] = best_loadings
    rows = [shape_row("DeepSSM", pdm, outcome.points, outcome.detail["loadings"], image, truth, seconds, mask_metrics),
            shape_row("PCA projection of the truth", pdm, best_points, best_loadings, image, truth, None, mask_metrics),
            shape_row("mean shape", pdm, to_image.apply(pdm.mean), np.zeros(pdm.size), image, truth, None,
                      mask_metrics)]
    if net is not None:
        began = time.perf_counter()
        mask = segment(net, image) > 0
        surface = mask_to_surface(mask)
        loadings, points = projected(pdm, surface_correspondences(surface, anchor, pdm.template, align_points),
                                     to_image)
        rows.append(shape_row("U-Net -> CPD -> projection", pdm, points, loadings, image, truth,
                              time.perf_counter() - began, mask_metrics))
    if dissm is not None:
        fit = fit_image_by_kind(image, dissm, source=case["path"], start_from=deepssm)
        rows.append({"method": "DISSM from DeepSSM", "seconds": fit.report["seconds"],
                     **mask_metrics(fit.labelmap, case["mask"]),
                     "surface_mm": surface_metrics(fit.mesh, case["surface"], num_points=10000)["assd_mm"]})
    for row in rows:
        row["true_loadings"], row["true_mahalanobis"] = best_loadings.tolist(), float(pdm.mahalanobis(best_loadings))
    return rows


def command_seconds(model: str, images: list[str]) -> list[float]:
    """Wall time (s) of the whole ``shapeprior fit-image IMAGE --model MODEL --out-seg ...`` process per image:
    the time a user meets, model loading included."""
    times = []
    with tempfile.TemporaryDirectory() as folder:
        for index, image in enumerate(images):
            began = time.perf_counter()
            subprocess.run([sys.executable, "-m", "shapeprior.cli", "-q", "fit-image", image, "--model", model,
                            "--out-seg", str(Path(folder) / f"{index}.nii.gz")], check=True, capture_output=True)
            times.append(time.perf_counter() - began)
    return times


def correlations(rows: list[dict], method: str) -> dict:
    """Pearson r of a method's loadings (first modes) and Mahalanobis distances with the true ones."""
    rows = [r for r in rows if r["method"] == method and "loadings" in r]
    predicted, true = np.array([r["loadings"] for r in rows]), np.array([r["true_loadings"] for r in rows])
    modes = min(MODES_CORRELATED, predicted.shape[1])
    r = [float(np.corrcoef(predicted[:, k], true[:, k])[0, 1]) for k in range(modes)]
    mahalanobis = np.corrcoef([x["mahalanobis"] for x in rows], [x["true_mahalanobis"] for x in rows])[0, 1]
    return {"loadings_r": r, "mahalanobis_r": float(mahalanobis)}

