"""``shapeprior benchmark refine``: masks before and after shape-prior refinement.

Settings, each scored against the true mask on the mask grid: Dice; HD95 and ASSD between surface
voxels; and the same between the masks' marching-cubes surfaces (sub-voxel: voxel HD95 takes only
the values 1, 1.41, 1.73 ... voxels, so medians tie where most cases share one):
- ``U-Net``: the U-Net baseline's masks of the held-out hippocampus images;
- ``thick slices``, ``leak``, ``hole``, ``cut-off``: typical CNN failures applied to held-out
  true masks (hippocampus with the implicit model; livers, voxelised from held-out
  surfaces at 2 mm, with the DALS model).
Failures are made reproducibly from the case name (``failure_mask``).
"""

from __future__ import annotations

import resource
import time
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage
from tqdm import tqdm

from ..fit.refine_mask import RefineSettings, refine_mask
from ..io import read_image, read_mask, read_mesh
from ..io.labelmaps import mesh_to_labelmap
from ..models.bundle import load_bundle
from .image import held_out_cases, mask_metrics

FAILURES = ("thick slices", "leak", "hole", "cut-off")
THICK_EVERY = 4  # keep every 4th slice
LIVER_SPACING_MM = 2.0


def _like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def failure_mask(truth: sitk.Image, failure: str, seed: int) -> sitk.Image:
    """A CNN-like failure of the true mask (uint8 on its grid); sizes scale with the organ.

    - thick slices: every 4th slice along k kept, each repeated over its neighbours (nearest upsampling);
    - leak: a ball of radius 0.2 x the organ's extent attached outside at a random boundary voxel;
    - hole: a ball of radius 0.15 x the organ's extent removed around the deepest voxel (it may open to the surface);
    - cut-off: the 20% of the voxels farthest along a random direction removed.
    """
    array = sitk.GetArrayFromImage(truth) > 0
    g = np.random.default_rng(seed)
    spacing = np.array(truth.GetSpacing()[::-1])
    kji = np.argwhere(array)
    mm = kji * spacing
    if failure == "thick slices":
        # Slices 0, 4, 8, ... kept; each slice copies the nearest kept one (ties go up).
        kept = (np.arange(array.shape[0]) + THICK_EVERY // 2) // THICK_EVERY * THICK_EVERY
        index = kept.clip(0, array.shape[0] - 1)
        return _like(array[index], truth)
    grid_mm = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(array.shape, spacing)], indexing="ij"), -1)
    if failure == "leak":
        boundary = np.argwhere(array & ~ndimage.binary_erosion(array)) * spacing
        point = boundary[g.integers(len(boundary))]
        outward = point - mm.mean(0)
        radius = 0.2 * np.ptp(mm, 0).max()
        centre = point + radius * outward / max(np.linalg.norm(outward), 1e-6)
        return _like(array | (np.linalg.norm(grid_mm - centre, axis=-1) < radius), truth)
    if failure == "hole":
        depth = ndimage.distance_transform_edt(array, sampling=spacing)
        centre = np.unravel_index(np.argmax(depth), array.shape) * spacing
        radius = 0.15 * np.ptp(mm, 0).max()
        return _like(array & (np.linalg.norm(grid_mm - centre, axis=-1) >= radius), truth)
    if failure == "cut-off":
        direction = g.normal(size=3)
        direction /= np.linalg.norm(direction)
        along = (grid_mm - mm.mean(0)) @ direction
        return _like(array & (along < np.percentile(mm @ direction - mm.mean(0) @ direction, 80)), truth)
    raise ValueError(f"unknown failure {failure!r}")


def liver_truth(path: Path, mesh_frame: str = "LPS") -> sitk.Image:
    """A held-out liver surface (read in ``mesh_frame``) voxelised on a 2 mm grid around it (LPS mm,
    identity directions)."""
    mesh = read_mesh(path, mesh_frame)
    lo = mesh.bounds[0] - 10.0
    size = np.ceil((mesh.bounds[1] + 10.0 - lo) / LIVER_SPACING_MM).astype(int)
    reference = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    reference.SetSpacing([LIVER_SPACING_MM] * 3)
    reference.SetOrigin(lo.tolist())
    return mesh_to_labelmap(mesh, reference)


def _score(rows: list, setting: str, case: str, mask: sitk.Image, truth: sitk.Image, model: str,
           settings: RefineSettings) -> None:
    rows.append({"setting": setting, "case": case, "method": "mask", "seconds": None,
                 **mask_metrics(mask, truth, surface=True)})
    start = time.perf_counter()
    refined = refine_mask(mask, model, f"{case} ({setting})", settings=settings)
    rows.append({"setting": setting, "case": case, "method": "refined", "seconds": time.perf_counter() - start,
                 **mask_metrics(refined.labelmap, truth, surface=True)})


def run_benchmark(hippocampus_data: str | Path | None, unet: str | None, liver_meshes: str | Path | None,
                  hippocampus_model: str = "hippocampus", liver_model: str = "liver", limit: int | None = None,
                  liver_limit: int = 8, progress: bool = True, settings: RefineSettings = RefineSettings(),
                  mesh_frame: str = "LPS") -> dict:
    """Every setting on the data given; rows of (setting, case, mask|refined, Dice, HD95, ASSD, seconds)."""
    jobs = []  # (setting, case, make (mask, truth), model)
    if hippocampus_data is not None:
        bundle = load_bundle(hippocampus_model)
        held_out = bundle.metadata["sdf_training"]["held_out"]
        net = None
        if unet:
            from ..models.registry import load_model
            from ..models.unet import segment

            net = load_model(unet, kind="unet")[1]
        for name, image_path, mask_path, labels in held_out_cases(Path(hippocampus_data), held_out, limit):
            def truth_of(mask_path=mask_path, labels=labels):
                return read_mask(mask_path, labels)
            if net is not None:
                def unet_case(image_path=image_path, truth_of=truth_of):
                    with torch.no_grad():
                        return segment(net, read_image(image_path)), truth_of()
                jobs.append(("hippocampus U-Net", name, unet_case, hippocampus_model))
            for failure in FAILURES:
                def failure_case(truth_of=truth_of, failure=failure, name=name):
                    truth = truth_of()
                    return failure_mask(truth, failure, zlib.crc32(f"{name}/{failure}".encode())), truth
                jobs.append((f"hippocampus {failure}", name, failure_case, hippocampus_model))
    if liver_meshes is not None:
        paths = sorted(p for pattern in ("LiTS-*.obj", "3Dircadb-*.obj") for p in Path(liver_meshes).glob(pattern))
        chosen = [paths[i] for i in np.linspace(0, len(paths) - 1, min(liver_limit, len(paths))).astype(int)]
        for path in chosen:
            for failure in FAILURES:
                def liver_case(path=path, failure=failure):
                    truth = liver_truth(path, mesh_frame)
                    return failure_mask(truth, failure, zlib.crc32(f"{path.stem}/{failure}".encode())), truth
                jobs.append((f"liver {failure}", path.stem, liver_case, liver_model))
    rows: list[dict] = []
    for setting, case, make, model in tqdm(jobs, desc="benchmark", disable=not progress, dynamic_ncols=True):
        mask, truth = make()
        _score(rows, setting, case, mask, truth, model, settings)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": rows, "peak_rss_mb": peak_mb}


def summarise(result: dict) -> str:
    """Markdown: per setting the medians before -> after and the median refinement time; then the
    per-case view (means, how many cases improve or worsen, the worst case, the slowest mask)."""
    lines = [("| setting | cases | Dice mask -> refined | HD95 mm | ASSD mm | surface HD95 mm | surface ASSD mm "
              "| time s |"), "|---|---|---|---|---|---|---|---|"]
    settings = list(dict.fromkeys(r["setting"] for r in result["rows"]))
    for setting in settings:
        rows = [r for r in result["rows"] if r["setting"] == setting]
        before = [r for r in rows if r["method"] == "mask"]
        after = [r for r in rows if r["method"] == "refined"]
        cells = [f"{_median(before, k):.3g} -> **{_median(after, k):.3g}**"
                 for k in ("dice", "hd95_mm", "assd_mm", "hd95_surface_mm", "assd_surface_mm")]
        seconds = np.median([r["seconds"] for r in after])
        lines.append(f"| {setting} | {len(after)} | " + " | ".join(cells) + f" | {seconds:.1f} |")
    lines += ["", f"Medians; peak memory of the benchmark process {result['peak_rss_mb']:.0f} MB.", ""]
    lines += [("| setting | mean HD95 mm | HD95 lower / higher (cases) | surface HD95 lower / higher | "
               "Dice higher / lower | worst Dice after vs before | max time s |"), "|---|---|---|---|---|---|---|"]
    for setting in settings:
        rows = [r for r in result["rows"] if r["setting"] == setting]
        refined = {r["case"]: r for r in rows if r["method"] == "refined"}
        pairs = [(r, refined[r["case"]]) for r in rows if r["method"] == "mask"]
        before, after = ({k: np.array([p[i][k] for p in pairs], dtype=float)
                          for k in ("dice", "hd95_mm", "hd95_surface_mm")} for i in (0, 1))
        lines.append(
            f"| {setting} | {np.nanmean(before['hd95_mm']):.2f} -> {np.nanmean(after['hd95_mm']):.2f} | "
            f"{_count(after['hd95_mm'] < before['hd95_mm'])} / {_count(after['hd95_mm'] > before['hd95_mm'])} | "
            f"{_count(after['hd95_surface_mm'] < before['hd95_surface_mm'])} / "
            f"{_count(after['hd95_surface_mm'] > before['hd95_surface_mm'])} | "
            f"{_count(after['dice'] > before['dice'])} / {_count(after['dice'] < before['dice'])} | "
            f"{np.nanmin(after['dice']):.3f} vs {np.nanmin(before['dice']):.3f} | "
            f"{max(p[1]['seconds'] for p in pairs):.1f} |")
    return "\n".join(lines)


def _median(rows: list[dict], key: str) -> float:
    # Rounded so a distance that is zero up to float error prints as 0, not 4e-14.
    return round(float(np.nanmedian([r[key] for r in rows])), 9)


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
