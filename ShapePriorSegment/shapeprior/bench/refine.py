"""``shapeprior benchmark refine``: masks before and after shape-prior refinement, every method side by side.

Inputs, each scored against the true mask on the mask grid:
- ``U-Net``: the masks of the held-out hippocampus images by a U-Net (``--unet``; one trained on the two
  labels is merged, and is also the baseline of the label transfer) and ``weak U-Net`` (``--weak-unet``,
  one trained on a few cases);
- typical CNN failures (:mod:`.mask_failures`) applied to held-out true masks: hippocampi, and livers
  voxelised from held-out surfaces at 2 mm.
Methods: the mask as given, then each refinement model of :class:`Methods` on the same masks.
Metrics: Dice; HD95 and ASSD between surface voxels; HD95, ASSD and the normalised Chamfer distance between
the masks' marching-cubes surfaces (sub-voxel: voxel HD95 takes only the values 1, 1.41, 1.73 ... voxels);
time; the parts of the prior fit (spurious components).
Ablations (template models trained without codes or the valid-template term, and kept shares) run on one
input, the weak U-Net's masks (else the U-Net's); label transfer scores the template models' sub-regions
carried onto the U-Net's masks against the U-Net's own labels.
"""

from __future__ import annotations

import json
import resource
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from ..errors import InputError
from ..fit.refine_mask import RefineSettings, refine_mask
from ..io import read_image, read_mask
from ..io.labelmaps import mesh_to_labelmap
from ..metrics import dice
from ..models.bundle import has_refiner, load_bundle, read_header
from .image import held_out_cases, mask_metrics
from .mask_failures import FAILURES, failure_mask, liver_truth

METRICS = ("dice", "hd95_mm", "hd95_surface_mm", "assd_surface_mm", "chamfer_normalised")


@dataclass
class Methods:
    """The refinement models of a run by display name (each a shipped model's name or a bundle path)."""

    hippocampus: dict[str, str] = field(default_factory=lambda: {"DISSM": "hippocampus"})
    liver: dict[str, str] = field(default_factory=lambda: {"DALS": "liver"})
    ablations: dict[str, str] = field(default_factory=dict)  # hippocampus template models
    keep_shares: tuple[float, ...] = ()  # tried with the last hippocampus template model
    # "also": DISSM models refine on the mask's image too (rows "NAME + image"); "only": just those rows (to
    # merge with an earlier run of the same masks)
    with_image: str = ""


def _unet_masks(path: str | None) -> tuple[object, list[int]] | None:
    """(network, the source label of each class) of a U-Net bundle."""
    if not path:
        return None
    from ..models.registry import load_model

    bundle, net = load_model(path, kind="unet")
    training = bundle.metadata["training"]
    return net, ([[label] for label in training["labels"]] if training.get("separate_labels") else [training["labels"]])


def _check_held_out(cases: list[str], models: list[str]) -> None:
    """Every case must be outside every model's training shapes."""
    for model in models:
        metadata = load_bundle(model).metadata
        trained = set(metadata.get("training", {}).get("shapes", []))
        if trained & set(cases):
            raise InputError(model, f"was trained on benchmark cases ({', '.join(sorted(trained & set(cases))[:3])})")


def _jobs(hippocampus_data, unets: dict[str, str | None], liver_meshes, models: Methods, inputs: set[str] | None,
          limit, liver_limit, mesh_frame) -> list[tuple]:
    """(organ, setting, case, make) with ``make() -> (mask, truth, (true labels, U-Net labels) or None, the
    image's path or None)``."""
    unets = {k: v for k, v in unets.items() if inputs is None or k in inputs}
    failures = [f for f in FAILURES if inputs is None or f in inputs]
    jobs = []
    if hippocampus_data is not None:
        metadata = load_bundle(next(iter(models.hippocampus.values()))).metadata
        held_out = metadata["sdf_training" if "sdf_training" in metadata else "training"]["held_out"]
        cases = held_out_cases(Path(hippocampus_data), held_out, limit)
        _check_held_out([c[0] for c in cases], [*models.hippocampus.values(), *models.ablations.values(),
                                                 *(u for u in unets.values() if u)])
        nets = {setting: _unet_masks(path) for setting, path in unets.items()}
        for name, image_path, mask_path, labels in cases:
            def truth_of(mask_path=mask_path, labels=labels):
                return read_mask(mask_path, labels)
            for setting, net in nets.items():
                if net is None:
                    continue
                def unet_case(image_path=image_path, mask_path=mask_path, truth_of=truth_of, net=net):
                    from ..models.unet import segment

                    with torch.no_grad():
                        classes = segment(net[0], read_image(image_path))
                    truth_labels = {tuple(c): read_mask(mask_path, c) for c in net[1]} if len(net[1]) > 1 else None
                    unet_labels = {tuple(c): classes == i + 1 for i, c in enumerate(net[1])}
                    return classes > 0, truth_of(), (truth_labels, unet_labels), image_path
                jobs.append(("hippocampus", f"hippocampus {setting}", name, unet_case))
            for failure in failures:
                def failure_case(truth_of=truth_of, failure=failure, name=name, image_path=image_path):
                    truth = truth_of()
                    seed = zlib.crc32(f"{name}/{failure}".encode())
                    return failure_mask(truth, failure, seed), truth, None, image_path
                jobs.append(("hippocampus", f"hippocampus {failure}", name, failure_case))
    if liver_meshes is not None:
        paths = sorted(p for pattern in ("LiTS-*.obj", "3Dircadb-*.obj") for p in Path(liver_meshes).glob(pattern))
        chosen = [paths[i] for i in np.linspace(0, len(paths) - 1, min(liver_limit, len(paths))).astype(int)]
        for path in chosen:
            for failure in failures:
                def liver_case(path=path, failure=failure):
                    truth = liver_truth(path, mesh_frame)
                    seed = zlib.crc32(f"{path.stem}/{failure}".encode())
                    return failure_mask(truth, failure, seed), truth, None, None
                jobs.append(("liver", f"liver {failure}", path.stem, liver_case))
    return jobs


def _refined_row(setting, case, method, model, mask, truth, settings, labels=None, image=None) -> dict:
    """Refine ``mask`` with ``model`` (on ``image`` if given) and score it; with ``labels`` (true, U-Net) also
    the sub-regions."""
    with_labels = labels is not None and labels[0] is not None
    start = time.perf_counter()
    refined = refine_mask(mask, model, f"{case} ({setting})", settings=settings,
                          subregions=None if with_labels else False, image=image)  # None: when the model has them
    row = {"setting": setting, "case": case, "method": method, "seconds": time.perf_counter() - start,
           "prior_parts": len(refined.detail.split(only_watertight=False)), **mask_metrics(refined.labelmap, truth, True)}
    if refined.subregions is not None:
        transferred = sitk.GetArrayViewFromImage(refined.subregions)
        row["label_dice"] = {str(c[0]): dice(transferred == c[0], sitk.GetArrayViewFromImage(t) > 0)
                             for c, t in labels[0].items()}
    return row


def run_benchmark(hippocampus_data: str | Path | None, unets: dict[str, str | None], liver_meshes: str | Path | None,
                  models: Methods = Methods(), inputs: set[str] | None = None, limit: int | None = None,
                  liver_limit: int = 8, progress: bool = True, settings: RefineSettings = RefineSettings(),
                  mesh_frame: str = "LPS") -> dict:
    """Every input (all, or ``inputs`` by name) and method on the data given: rows of (setting, case,
    method, metrics, seconds)."""
    jobs = _jobs(hippocampus_data, unets, liver_meshes, models, inputs, limit, liver_limit, mesh_frame)
    ablation_input = next((f"hippocampus {s}" for s in ("weak U-Net", "U-Net") if unets.get(s)), None)
    template = next((m for m in reversed(models.hippocampus.values()) if load_bundle(m).kind == "template"), None)
    ablations = [(name, model, settings) for name, model in models.ablations.items()]
    ablations += [(f"kept share {share:.0%}", template,
                   replace(settings, template=replace(settings.template, keep_share=share)))
                  for share in models.keep_shares if template]
    on_image = {m for m in models.hippocampus.values() if models.with_image and has_refiner(read_header(m))}
    rows: list[dict] = []
    for organ, setting, case, make in tqdm(jobs, desc="benchmark", disable=not progress, dynamic_ncols=True):
        mask, truth, labels, image_path = make()
        rows.append({"setting": setting, "case": case, "method": "mask", "seconds": None,
                     **mask_metrics(mask, truth, surface=True)})
        if labels is not None and labels[0] is not None:
            rows[-1]["label_dice"] = {str(c[0]): dice(sitk.GetArrayViewFromImage(labels[1][c]) > 0,
                                                      sitk.GetArrayViewFromImage(t) > 0) for c, t in labels[0].items()}
        for method, model in getattr(models, organ).items():
            if models.with_image != "only":
                rows.append(_refined_row(setting, case, method, model, mask, truth, settings, labels))
            if model in on_image and image_path is not None:
                rows.append(_refined_row(setting, case, f"{method} + image", model, mask, truth, settings,
                                         image=read_image(image_path)))
        if setting == ablation_input and models.with_image != "only":
            for method, model, ablation_settings in ablations:
                rows.append({**_refined_row(setting, case, method, model, mask, truth, ablation_settings),
                             "ablation": True})
    parts = {name: _template_parts(model) for name, model in {**models.hippocampus, **models.ablations}.items()
             if load_bundle(model).kind == "template"}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": rows, "template_parts": parts, "ablation_input": ablation_input, "peak_rss_mb": peak_mb}


def merge_results(paths: list[str | Path]) -> dict:
    """Several runs' results (``--out`` JSON) as one: their rows in order (a row of the same input, case
    and method as an earlier one is left out), the peak of their memory."""
    results = []
    for path in paths:
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as error:
            raise InputError(path, f"not a benchmark result: {error}") from None
        if not isinstance(results[-1], dict) or "rows" not in results[-1]:
            raise InputError(path, "not a `benchmark refine --out` result (no rows)")
    rows = {}  # a case run twice (same input, method) counts once: the first run's row
    for row in (r for result in results for r in result["rows"]):
        rows.setdefault((row["setting"], row["case"], row["method"], bool(row.get("ablation"))), row)
    merged = {"rows": list(rows.values()),
              "template_parts": {k: v for result in results for k, v in result.get("template_parts", {}).items()},
              "ablation_input": next((r["ablation_input"] for r in results if r.get("ablation_input")), None),
              "peak_rss_mb": max(r["peak_rss_mb"] for r in results), "merged": [str(p) for p in paths]}
    merged.update({k: r[k] for r in results for k in ("ct_example",) if k in r})
    return merged


def _template_parts(model: str) -> int:
    """Connected components of a template model's decoded template surface (64^3 marching cubes)."""
    from ..geometry.level_set import field_mesh
    from ..models.registry import build_model

    template = build_model(load_bundle(model))
    with torch.no_grad():
        mesh = field_mesh(lambda p: template.template_sdf(p), 64)
    return len(mesh.split(only_watertight=False)) if len(mesh.faces) else 0


def summarise(result: dict) -> str:
    """Markdown: medians per input and method, the change against the mask, the ablations, the label
    transfer, and the per-case view (how many cases improve or worsen, the worst case, the slowest)."""
    rows = [r for r in result["rows"] if not r.get("ablation")]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    lines = ["| input | method | cases | Dice | HD95 mm | surface HD95 mm | surface ASSD mm | CD x 1e3 | "
             "CD / HD95 vs mask | time s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for setting in settings:
        for method in dict.fromkeys(r["method"] for r in rows if r["setting"] == setting):
            lines.append(_medians_row(setting, method, rows))
    lines += ["", f"Medians over the cases; CD: normalised Chamfer distance (squared, true organ's bounding sphere "
              f"of radius 1). Peak memory of the benchmark process {result['peak_rss_mb']:.0f} MB.", ""]
    # The template constraint's target: spurious components, in the decoded template and in the fits
    # (template_parts holds the hippocampus models; a liver method may share a name).
    spurious = [f"{method}: template {parts} part{'s' * (parts != 1)}, "
                f"{sum(r['prior_parts'] > 1 for r in fits)} of {len(fits)} fits with more than one"
                for method, parts in result.get("template_parts", {}).items()
                if (fits := [r for r in rows if r["method"] == method and r["setting"].startswith("hippocampus")])]
    if spurious:
        lines += ["Template models (connected parts, decoded at 64^3): " + "; ".join(spurious) + ".", ""]
    ablation = [r for r in result["rows"] if r.get("ablation")]
    if ablation:
        lines += [f"Ablations on the {result['ablation_input']} masks:", "",
                  "| model | cases | Dice | HD95 mm | surface HD95 mm | CD x 1e3 | CD / HD95 vs mask | fits with "
                  "> 1 part | template parts | time s |", "|---|---|---|---|---|---|---|---|---|---|"]
        cases = {r["case"] for r in ablation}  # the mask's medians over the same cases
        base = [r for r in rows if r["setting"] == result["ablation_input"] and r["case"] in cases]
        for method in dict.fromkeys(r["method"] for r in ablation):
            lines.append(_ablation_row(method, [r for r in ablation if r["method"] == method], base,
                                       result["template_parts"].get(method)))
        lines.append("")
    labelled = [r for r in rows if "label_dice" in r]
    if labelled:
        keys = list(labelled[0]["label_dice"])
        lines += ["Sub-regions on the U-Net's masks (Dice against the true labels, median):", "",
                  "| method | cases | " + " | ".join(f"label {k}" for k in keys) + " | time s |",
                  "|---|---|" + "---|" * (len(keys) + 1)]
        for method in dict.fromkeys(r["method"] for r in labelled):
            group = [r for r in labelled if r["method"] == method]
            cells = [f"{np.median([r['label_dice'][k] for r in group]):.3f}" for k in keys]
            name = "U-Net (its own labels)" if method == "mask" else f"{method} (transferred)"
            lines.append(f"| {name} | {len(group)} | " + " | ".join(cells) + f" | {_seconds(group)} |")
        lines.append("")
    lines += ["| input | method | HD95 lower / higher (cases) | surface HD95 lower / higher | Dice higher / lower | "
              "worst Dice after vs before | max time s |", "|---|---|---|---|---|---|---|"]
    for setting in settings:
        before = {r["case"]: r for r in rows if r["setting"] == setting and r["method"] == "mask"}
        for method in dict.fromkeys(r["method"] for r in rows if r["setting"] == setting and r["method"] != "mask"):
            pairs = [(before[r["case"]], r) for r in rows if r["setting"] == setting and r["method"] == method]
            b, a = ({k: np.array([p[i][k] for p in pairs], dtype=float) for k in ("dice", "hd95_mm", "hd95_surface_mm")}
                    for i in (0, 1))
            lines.append(
                f"| {setting} | {method} | {_count(a['hd95_mm'] < b['hd95_mm'])} / {_count(a['hd95_mm'] > b['hd95_mm'])} "
                f"| {_count(a['hd95_surface_mm'] < b['hd95_surface_mm'])} / "
                f"{_count(a['hd95_surface_mm'] > b['hd95_surface_mm'])} | {_count(a['dice'] > b['dice'])} / "
                f"{_count(a['dice'] < b['dice'])} | {np.nanmin(a['dice']):.3f} vs {np.nanmin(b['dice']):.3f} | "
                f"{max(p[1]['seconds'] for p in pairs):.1f} |")
    return "\n".join(lines)


def _medians(rows: list[dict]) -> dict[str, float]:
    # Rounded so a distance that is zero up to float error prints as 0, not 4e-14.
    return {k: round(float(np.nanmedian([r[k] for r in rows])), 9) for k in METRICS}


def _change(after: dict, before: dict) -> str:
    """Relative change of the median normalised Chamfer distance and HD95 (surface) against the mask's."""
    return " / ".join(f"{100 * (after[k] / before[k] - 1):+.0f}%" if before[k] else "-"
                      for k in ("chamfer_normalised", "hd95_surface_mm"))


def _medians_row(setting: str, method: str, rows: list[dict]) -> str:
    group = [r for r in rows if r["setting"] == setting and r["method"] == method]
    m = _medians(group)
    change = "" if method == "mask" else _change(m, _medians([r for r in rows if r["setting"] == setting
                                                             and r["method"] == "mask"]))
    name = f"**{method}**" if method != "mask" else method
    return (f"| {setting} | {name} | {len(group)} | {m['dice']:.3f} | {m['hd95_mm']:.3g} | {m['hd95_surface_mm']:.3g} "
            f"| {m['assd_surface_mm']:.3g} | {1e3 * m['chamfer_normalised']:.3g} | {change} | {_seconds(group)} |")


def _seconds(group: list[dict]) -> str:
    """The median time of the rows that took any (the mask as given took none)."""
    seconds = [r["seconds"] for r in group if r["seconds"] is not None]
    return f"{np.median(seconds):.1f}" if seconds else ""


def _ablation_row(method: str, group: list[dict], base: list[dict], parts: int | None) -> str:
    m = _medians(group)
    change = _change(m, _medians([r for r in base if r["method"] == "mask"]))
    split = sum(r["prior_parts"] > 1 for r in group)
    return (f"| {method} | {len(group)} | {m['dice']:.3f} | {m['hd95_mm']:.3g} | {m['hd95_surface_mm']:.3g} | "
            f"{1e3 * m['chamfer_normalised']:.3g} | {change} | {split} | {'' if parts is None else parts} | "
            f"{_seconds(group)} |")


def _count(flags: np.ndarray) -> int:
    return int(np.count_nonzero(flags))


def _crop_offset(crop: sitk.Image, full: sitk.Image) -> int:
    """The k index of the full scan's slice where the crop's voxels start (matched by intensity):
    the example's crop keeps the full scan's origin in its header although it holds its last slices."""
    a, b = sitk.GetArrayViewFromImage(full), sitk.GetArrayViewFromImage(crop)
    errors = [np.abs(a[k:k + len(b)].astype(np.float32) - b).mean() for k in range(len(a) - len(b) + 1)]
    return int(np.argmin(errors))


def ct_example(folder: str | Path, figure: str | Path | None, model: str = "liver", label: int = 5) -> dict:
    """Refine the example CT's CNN liver mask; optionally draw mask (red), refined (green) and the
    prior fit before the fusion (blue) over the full scan's slices."""
    folder = Path(folder)
    full = read_image(folder / "example_ct.nii.gz")
    crop = read_image(folder / "example_ct_sm.nii.gz")
    mask = read_mask(folder / "example_seg.nii.gz", [label])
    offset = _crop_offset(crop, full)
    mask.SetOrigin(full.TransformIndexToPhysicalPoint((0, 0, offset)))
    refined = refine_mask(mask, model, folder / "example_seg.nii.gz")
    if figure is not None:
        from .overlay import overlay_png

        on_full = [sitk.Resample(mask, full, sitk.Transform(), sitk.sitkNearestNeighbor, 0),
                   mesh_to_labelmap(refined.mesh, full), mesh_to_labelmap(refined.detail, full)]
        depth = mask.GetSize()[2]
        axial = [offset + round(f * (depth - 1)) for f in (0.15, 0.5, 0.85)]
        coronal = int(np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)[:, 1].mean())
        overlay_png(full, on_full, figure, (-150, 250), axial, coronal, pixel_mm=1.5)
    return {"crop_first_slice": offset, **{k: refined.report[k] for k in (
        "seconds", "dice_with_mask", "mask_volume_ml", "refined_volume_ml", "added_ml", "removed_ml",
        "border_faces", "warnings", "distance_to_mask_boundary_mm")}}
