"""The shape-data pipeline: a folder of masks or meshes -> a prepared dataset folder.

Layout of a dataset folder::

    manifest.json          settings, anchor, and per shape: source, repairs, transforms
    surfaces/<name>.ply    clean closed surface, LPS millimetres (source frame)
    unit/<name>.ply        the same surface aligned to the anchor, in the unit sphere
    sdf/<name>.npz         SDF samples in the unit sphere: ``pos``/``neg`` (N/2, 4)

Each shape's transforms map its source frame (LPS mm) to the unit sphere
(``to_unit``) and back (``from_unit``). Every file is written atomically and the
manifest after each shape, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import fnmatch
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import trimesh
from tqdm import tqdm

from .. import __version__
from ..errors import InputError
from ..io import (
    atomic_output,
    check_same_grid,
    read_image,
    read_mask,
    read_mesh,
    write_json,
    write_mesh,
)
from ..io.formats import IMAGE_SUFFIXES, MESH_SUFFIXES, file_stem
from ..settings import PrepareSettings
from ..transform import Similarity
from .align import align_to_anchor
from .normalise import transformed, unit_sphere_transform
from .sdf import sample_sdf
from .surface import mask_to_surface, repair_mesh

MANIFEST = "manifest.json"


def select_shapes(manifest: dict, patterns: list[str]) -> list[str]:
    """Sorted names of the prepared shapes matching any of the ``fnmatch`` patterns."""
    names = [n for n in manifest["shapes"] if any(fnmatch.fnmatch(n, p) for p in patterns)]
    names = [n for n in names if "unit" in manifest["shapes"][n]]
    if not names:
        raise InputError(None, f"no prepared shapes match {', '.join(patterns)}")
    return sorted(names)


def split_names(names: list[str], holdout_every: int) -> tuple[list[str], list[str]]:
    """(training, held out): every ``holdout_every``-th of the sorted names is held out (0: none)."""
    names = sorted(names)
    if holdout_every <= 0:
        return names, []
    held = names[::holdout_every]
    return [n for n in names if n not in held], held


def find_inputs(src: Path) -> list[tuple[str, Path, str]]:
    """(name, path, kind) for every mask image or mesh in ``src``, sorted by name."""
    if not src.is_dir():
        raise InputError(src, "not a folder")
    found = []
    for path in sorted(src.iterdir()):
        lower = path.name.lower()
        if path.name.startswith(".") or not path.is_file():
            continue
        if lower.endswith(IMAGE_SUFFIXES):
            found.append((file_stem(path), path, "mask"))
        elif lower.endswith(MESH_SUFFIXES):
            found.append((file_stem(path), path, "mesh"))
    if not found:
        raise InputError(src, "no masks (.nii.gz, .nrrd, .mha) or meshes (.obj, .stl, .ply, .vtk, .vtp) found")
    names = [n for n, _, _ in found]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(src, f"several files share the name {dupes[0]!r}; keep one format per shape")
    return found


def find_image(images_dir: Path, name: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        candidate = images_dir / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    raise InputError(images_dir, f"no image named {name} for the mask of the same name")


def _open_manifest(out: Path, src: Path, settings: PrepareSettings) -> dict:
    path = out / MANIFEST
    if path.is_file():
        manifest = json.loads(path.read_text())
        if manifest.get("settings") != asdict(settings):
            raise InputError(out, "was prepared with other settings; use a new output folder")
        return manifest
    if out.exists() and any(out.iterdir()):
        raise InputError(out, "exists, is not empty and holds no manifest.json; choose an empty or new folder")
    return {
        "format": "shapeprior-dataset/1",
        "created_by": f"shapeprior {__version__}",
        "source": str(src.resolve()),
        "frames": {
            "surfaces": "LPS millimetres, source frame",
            "unit": "anchor-aligned, unit sphere (to_unit maps source mm -> unit)",
        },
        "settings": asdict(settings),
        "anchor": None,
        "shapes": {},
    }


def _check_input(path: Path, kind: str, settings: PrepareSettings, image: Path | None) -> None:
    if kind == "mesh":
        read_mesh(path)
        return
    mask = read_mask(path, settings.labels)
    if image is not None:
        check_same_grid(read_image(image), mask, image, path)


def _extract_surface(path: Path, kind: str, settings: PrepareSettings, image: Path | None) -> tuple[trimesh.Trimesh, dict]:
    info: dict = {}
    if kind == "mask":
        mask = read_mask(path, settings.labels)
        if image is not None:
            check_same_grid(read_image(image), mask, image, path)
            info["image"] = str(image.resolve())
        info["spacing_mm"] = list(mask.GetSpacing())
        mesh = mask_to_surface(mask, settings.smoothing_mm, settings.interpolate_slices, settings.target_vertices)
        if len(mesh.faces) == 0:
            raise InputError(path, "mask too small to extract a surface")
        if not mesh.is_watertight:  # decimation pinched it: rebuild closed
            mesh, report = repair_mesh(mesh, settings.repair_voxel_mm, settings.target_vertices)
            info["repair"] = report.to_dict()
    else:
        mesh, report = repair_mesh(read_mesh(path, settings.mesh_frame), settings.repair_voxel_mm,
                                   settings.target_vertices)
        info["repair"] = report.to_dict()
    return mesh, info


def _choose_anchor(manifest: dict, settings: PrepareSettings) -> str:
    shapes = manifest["shapes"]
    if settings.anchor is not None:
        if settings.anchor not in shapes:
            raise InputError(None, f"--anchor {settings.anchor!r} is not one of the input shapes")
        return settings.anchor
    # The median-volume shape: a typical organ, not an outlier.
    names = sorted(shapes, key=lambda n: (shapes[n]["volume_mm3"], n))
    return names[len(names) // 2]


def _progress(items: Iterable, total: int, desc: str, enabled: bool) -> Iterable:
    return tqdm(items, total=total, desc=desc, unit="shape", disable=not enabled, dynamic_ncols=True)


def prepare_dataset(
    src: str | os.PathLike,
    out: str | os.PathLike,
    settings: PrepareSettings | None = None,
    images: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda msg: None,
) -> dict:
    """Run the whole pipeline (surfaces -> alignment -> unit sphere -> SDF samples).

    Returns the manifest. Finished shapes of an earlier run with the same settings
    are skipped.
    """
    settings = settings or PrepareSettings()
    src, out = Path(src), Path(out)
    inputs = find_inputs(src)
    if settings.anchor is not None and settings.anchor not in {name for name, _, _ in inputs}:
        # Checked before any output exists: found only after the surfaces, it would leave a
        # folder that a re-run with the corrected --anchor refuses as "other settings".
        raise InputError(None, f"--anchor {settings.anchor!r} is not one of the input shapes")
    images_dir = Path(images) if images is not None else None
    if images_dir is not None and not images_dir.is_dir():
        raise InputError(images_dir, "not a folder")
    manifest = _open_manifest(out, src, settings)
    shapes = manifest["shapes"]
    todo = [item for item in inputs if not (out / shapes.get(item[0], {}).get("surface", "-")).is_file()]
    # Every input is read once before anything is written, so a bad file stops the run
    # with an empty output folder: the user fixes it (or --label) and starts afresh.
    for name, path, kind in _progress(todo, len(todo), "checking inputs", progress):
        _check_input(path, kind, settings, find_image(images_dir, name) if images_dir and kind == "mask" else None)
    out.mkdir(parents=True, exist_ok=True)

    for name, path, kind in _progress(todo, len(todo), "surfaces", progress):
        image = find_image(images_dir, name) if images_dir is not None and kind == "mask" else None
        mesh, info = _extract_surface(path, kind, settings, image)
        rel = f"surfaces/{name}.ply"
        write_mesh(mesh, out / rel)
        shapes[name] = {
            "source": str(path.resolve()),
            "kind": kind,
            **info,
            "surface": rel,
            "vertices": len(mesh.vertices),
            "volume_mm3": float(mesh.volume),
        }
        write_json(manifest, out / MANIFEST)

    anchor = manifest["anchor"] or _choose_anchor(manifest, settings)
    manifest["anchor"] = anchor
    anchor_mesh = read_mesh(out / shapes[anchor]["surface"])
    todo = [n for n, _, _ in inputs if "to_unit" not in shapes[n]]
    for name in _progress(todo, len(todo), "align + SDF", progress):
        entry = shapes[name]
        mesh = read_mesh(out / entry["surface"])
        align = Similarity.identity() if name == anchor else align_to_anchor(
            mesh, anchor_mesh, settings.align_points, settings.seed
        )
        aligned = transformed(mesh, align)
        to_unit = unit_sphere_transform(aligned).compose(align)
        unit = transformed(mesh, to_unit)
        write_mesh(unit, out / f"unit/{name}.ply")
        entry["unit"] = f"unit/{name}.ply"
        if settings.sdf_samples:
            pos, neg = sample_sdf(unit, settings.sdf_samples, seed=settings.seed)
            with atomic_output(out / f"sdf/{name}.npz") as tmp:
                np.savez_compressed(tmp, pos=pos, neg=neg)
            entry["sdf"] = f"sdf/{name}.npz"
        entry["align"] = align.to_dict()
        entry["from_unit"] = to_unit.inverse().to_dict()
        entry["to_unit"] = to_unit.to_dict()
        write_json(manifest, out / MANIFEST)
    log(f"prepared {len(shapes)} shapes in {out} (anchor {anchor})")
    return manifest
