"""``shapeprior benchmark image``: DISSM image fitting per stage against a plain 3D U-Net, and with a
DeepSSM model the shape-model methods of :mod:`.shape_model`.

On the held-out images of the model's dataset split, each stage's shape (the mean
shape under the translation / scale / rotation poses, then the deformed shape) is
voxelised on the image grid and compared with the true mask; the U-Net baseline
segments the same images in the same process.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from ..errors import InputError
from ..fit.image_fit import fit_image, state_from_record, state_mesh
from ..io import read_image, read_mask, read_mesh
from ..io.labelmaps import mesh_to_labelmap
from ..metrics import assd_voxel, dice, hd95_voxel, surface_distances_of_masks
from ..models.registry import load_model
from ..models.unet import segment
from ..train.common import read_manifest
from .shape_model import command_seconds, correlations, deepssm_rows


def mask_metrics(pred: sitk.Image, truth: sitk.Image, surface: bool = False) -> dict:
    """Dice, voxel HD95 and ASSD; with ``surface`` also ``hd95_surface_mm``, ``assd_surface_mm`` and
    ``chamfer_normalised`` between the masks' marching-cubes surfaces (sub-voxel)."""
    a, b = sitk.GetArrayViewFromImage(pred) > 0, sitk.GetArrayViewFromImage(truth) > 0
    spacing = truth.GetSpacing()[::-1]  # array axes are (k, j, i)
    metrics = {"dice": dice(a, b), "hd95_mm": hd95_voxel(a, b, spacing), "assd_mm": assd_voxel(a, b, spacing)}
    if surface:
        distances = surface_distances_of_masks(a, b, spacing)
        metrics.update(hd95_surface_mm=distances["hd95_mm"], assd_surface_mm=distances["assd_mm"],
                       chamfer_normalised=distances["chamfer_normalised"])
    return metrics


def held_out_cases(dataset: Path, names: list[str], limit: int | None) -> list[tuple[str, str, str, list[int]]]:
    """(name, image path, mask path, labels) of the held-out shapes listed in the model."""
    manifest = read_manifest(dataset)
    labels = manifest["settings"].get("labels")
    cases = [(n, manifest["shapes"][n]["image"], manifest["shapes"][n]["source"], labels)
             for n in names if n in manifest["shapes"]]
    if not cases:
        raise InputError(dataset, "none of the model's held-out shapes is in this dataset")
    return cases[:limit] if limit else cases


def run_benchmark(dataset: str | Path, model: str, unet: str | None, limit: int | None = None,
                  progress: bool = True, deepssm: str | None = None) -> dict:
    bundle, dissm = load_model(model, kind="dissm")
    net = load_model(unet, kind="unet")[1] if unet else None
    held_out = bundle.metadata["sdf_training"]["held_out"]
    cases = held_out_cases(Path(dataset), held_out, limit)
    if deepssm:
        command_times = command_seconds(deepssm, [c[1] for c in cases[:5]])  # before the other work loads the CPU
        shapes = load_model(deepssm, kind="deepssm")
        if sorted(shapes[0].metadata["pdm"]["held_out"]) != sorted(held_out):
            raise InputError(deepssm, f"was not trained on the same split as {model}")
        manifest = read_manifest(Path(dataset))
        anchor = read_mesh(Path(dataset) / manifest["shapes"][manifest["anchor"]]["surface"])
    rows = []
    for name, image_path, mask_path, labels in tqdm(cases, desc="benchmark", disable=not progress,
                                                     dynamic_ncols=True):
        image, truth = read_image(image_path), read_mask(mask_path, labels)
        start = time.perf_counter()
        fit = fit_image(image, (bundle, dissm), source=image_path)
        seconds = time.perf_counter() - start
        for index, record in enumerate(fit.detail):
            # Each stage's shape is scored; the last one is the fit's own output.
            if index + 1 == len(fit.detail):
                pred, took = fit.labelmap, seconds
            else:
                pred, took = mesh_to_labelmap(state_mesh(dissm, state_from_record(record)), image), None
            rows.append({"case": name, "method": f"DISSM +{record['stage']}", "seconds": took,
                         **mask_metrics(pred, truth)})
        if net is not None:
            start = time.perf_counter()
            with torch.no_grad():
                pred = segment(net, image)
            rows.append({"case": name, "method": "3D U-Net", "seconds": time.perf_counter() - start,
                         **mask_metrics(pred, truth)})
        if deepssm:
            case = {"image": image, "mask": truth, "path": image_path,
                    "surface": read_mesh(Path(dataset) / manifest["shapes"][name]["surface"])}
            rows += [{"case": name, **row} for row in deepssm_rows(
                case, shapes, (bundle, dissm), net, anchor, manifest["settings"]["align_points"], mask_metrics)]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"cases": [c[0] for c in cases], "rows": rows, "peak_rss_mb": peak_mb}
    if deepssm:
        result["deepssm_command_seconds"] = command_times
        result["correlations"] = {m: correlations(rows, m) for m in ("DeepSSM", "U-Net -> CPD -> projection")
                                  if any(r["method"] == m for r in rows)}
    return result


def summarise(result: dict) -> str:
    """Markdown table: per method the median [IQR] of each metric, the worst Dice and the median time."""
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    lines = ["| method | Dice | HD95 mm | ASSD mm | worst Dice | time s |", "|---|---|---|---|---|---|"]
    for m in methods:
        rows = [r for r in result["rows"] if r["method"] == m]
        cells = []
        for key in ("dice", "hd95_mm", "assd_mm"):
            q1, med, q3 = np.nanpercentile([r[key] for r in rows], [25, 50, 75])
            cells.append(f"{med:.3g} [{q1:.3g}-{q3:.3g}]")
        cells.append(f"{min(r['dice'] for r in rows):.3f}")
        times = [r["seconds"] for r in rows if r["seconds"] is not None]
        cells.append(f"{np.median(times):.2f}" if times else "")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if "correlations" in result:
        lines += ["", shape_table(result)]
    lines.append("")
    lines.append(f"{len(result['cases'])} held-out images; peak memory of the benchmark process "
                 f"{result['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def shape_table(result: dict) -> str:
    """Markdown table of the shape-model methods: surface distance and correspondence RMSE (median [IQR]),
    the correlation of the first modes' loadings and of the Mahalanobis distance with the truth, and the
    whole command's time with DeepSSM."""
    lines = ["| method | surface distance mm | correspondence RMSE mm | loadings r (modes 1-5) | Mahalanobis r |",
             "|---|---|---|---|---|"]
    for m in dict.fromkeys(r["method"] for r in result["rows"] if "surface_mm" in r):
        rows = [r for r in result["rows"] if r["method"] == m]
        cells = []
        for key in ("surface_mm", "correspondence_rmse_mm"):
            values = [r[key] for r in rows if key in r]
            q1, med, q3 = np.percentile(values, [25, 50, 75]) if values else (np.nan,) * 3
            cells.append(f"{med:.3g} [{q1:.3g}-{q3:.3g}]" if values else "")
        r = result["correlations"].get(m)
        cells += [", ".join(f"{v:.2f}" for v in r["loadings_r"]), f"{r['mahalanobis_r']:.2f}"] if r else ["", ""]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    times = result["deepssm_command_seconds"]
    lines += ["", f"`shapeprior fit-image IMAGE --model ... --out-seg ...` with DeepSSM, the whole process "
              f"(model loading included): median {np.median(times):.2f} s over {len(times)} images"]
    return "\n".join(lines)
