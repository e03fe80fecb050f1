"""``shapeprior train-pdm``: a point distribution model from a prepared dataset with images.

1. Correspondences in the unit sphere (shapes already similarity-aligned when the dataset was
   prepared): the reference shape decimated to ``points`` vertices is moved onto every training
   shape by non-rigid CPD; later rounds start from the mean of the last.
2. Each image is registered rigidly onto the reference crop (the training shape of median volume),
   and its points are carried into the reference crop's LPS mm: the frame DeepSSM predicts in.
3. PCA keeping the chosen share of the variance.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import trimesh
from tqdm import tqdm

from ..errors import InputError
from ..io import read_image, read_mesh
from ..models.bundle import save_bundle
from ..models.pdm import PointDistributionModel
from ..prep.correspond import correspond
from ..prep.dataset import select_shapes, split_names
from ..prep.registration import image_geometry, register_rigid
from ..prep.surface import simplify
from ..transform import Similarity
from .common import read_manifest
from .settings import PDMTrainSettings


def reference_name(manifest: dict, names: list[str]) -> str:
    """The training shape of median volume: a typical organ, its crop the frame of the model."""
    ordered = sorted(names, key=lambda n: (manifest["shapes"][n]["volume_mm3"], n))
    return ordered[len(ordered) // 2]


def _correspond_one(job: tuple[str, np.ndarray, int]) -> np.ndarray:
    path, template, seed = job
    return correspond(read_mesh(path), template, seed)


def corresponding_points(paths: list[Path], template: np.ndarray, workers: int, seed: int, desc: str,
                         progress: bool) -> np.ndarray:
    """(N, P, 3) unit-sphere points on each shape of ``paths`` corresponding to ``template`` (P, 3)."""
    jobs = [(str(p), template, seed) for p in paths]

    def shown(found):
        return list(tqdm(found, total=len(jobs), desc=desc, unit="shape", disable=not progress, dynamic_ncols=True))

    if workers == 1:  # in this process: no start-up, plain tracebacks
        return np.stack(shown(map(_correspond_one, jobs)))
    with ProcessPoolExecutor(workers) as pool:
        return np.stack(shown(pool.map(_correspond_one, jobs)))


def train_pdm(dataset: str | Path, out: str | Path, settings: PDMTrainSettings, command: str = "",
              progress: bool = True, device: str | None = None) -> Path:
    """Build the model of the dataset's training split and write a ``pdm`` bundle. ``device`` is unused
    (CPD and registration run on the CPU)."""
    dataset, out = Path(dataset), Path(out)
    manifest = read_manifest(dataset)
    names, held_out = split_names(select_shapes(manifest, settings.include), settings.holdout_every)
    shapes = manifest["shapes"]
    if any("image" not in shapes[n] for n in names):
        raise InputError(dataset, "has no images; prepare it with --images (the model lives in an image frame)")
    reference = reference_name(manifest, names)
    template_mesh = simplify(read_mesh(dataset / shapes[reference]["unit"]), settings.points)
    template = np.asarray(template_mesh.vertices)
    paths = [dataset / shapes[n]["unit"] for n in names]
    for round_ in range(settings.rounds):
        unit = corresponding_points(paths, template, settings.workers, settings.seed,
                                    f"correspondences {round_ + 1}/{settings.rounds}", progress)
        template = unit.mean(0)

    reference_image = read_image(shapes[reference]["image"])
    to_images, points = [], []
    for name, unit_points in tqdm(list(zip(names, unit)), desc="register images", unit="image",
                                  disable=not progress, dynamic_ncols=True):
        to_image = register_rigid(read_image(shapes[name]["image"]), reference_image, settings.seed)
        mm = Similarity.from_dict(shapes[name]["from_unit"]).apply(unit_points)
        points.append(to_image.inverse().apply(mm))
        to_images.append(to_image.to_dict())
    residual = [_coverage(dataset / shapes[n]["unit"], u, template_mesh.faces) *
                Similarity.from_dict(shapes[n]["from_unit"]).scale for n, u in zip(names, unit)]
    metadata = {
        "organ": settings.organ, "units": "mm",
        "frame": f"LPS mm of the reference crop {shapes[reference]['image']} (each image registered rigidly onto it)",
        "pdm": {"names": names, "held_out": held_out, "reference": reference, "to_images": to_images,
                "correspondence_mm": {"mean": float(np.mean(residual)), "max": float(np.max(residual))},
                "training": {**vars(settings), "command": command}},
    }
    model = PointDistributionModel.fit(np.stack(points), template_mesh.faces, template, names, settings.variance,
                                       metadata["pdm"])
    metadata["pdm"] = model.metadata
    metadata["pdm"]["reference_geometry"] = image_geometry(reference_image)
    pixels = torch.tensor(sitk.GetArrayFromImage(sitk.Cast(reference_image, sitk.sitkFloat32)))
    save_bundle(out, "pdm", metadata, {**model.tensors(), "reference_image": pixels})
    return out


def _coverage(path: Path, points: np.ndarray, faces: np.ndarray) -> float:
    """Mean distance (unit sphere) from a shape's vertices to its corresponding-point surface."""
    from ..metrics.surface import point_to_surface

    return float(point_to_surface(np.asarray(read_mesh(path).vertices), trimesh.Trimesh(points, faces)).mean())

