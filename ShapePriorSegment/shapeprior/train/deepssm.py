"""``shapeprior train-deepssm``: the DeepSSM network on a point distribution model's training images.

Every image is registered onto the reference crop (the maps ``train-pdm`` found) and resampled on
the 64^3 network grid. Augmentation as the paper: new loadings drawn from a Gaussian kernel density
estimate of the training loadings (Scott's bandwidth), each with an image made by warping the
nearest training image with the thin-plate spline that carries that image's points onto the new ones.
The loss is the mean squared error of the corresponding points (mm^2) through the frozen PCA layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy.interpolate import RBFInterpolator
from tqdm import tqdm

from ..errors import InputError
from ..io import read_image, read_mask
from ..io.frames import index_to_physical
from ..metrics import dice
from ..models.bundle import load_bundle, save_bundle
from ..models.deepssm import build_net, reference_image
from ..models.pdm import PointDistributionModel
from ..prep.crops import centred_grid, intensity_stats
from ..prep.registration import NETWORK_GRID, network_input
from ..transform import Similarity
from .common import Run, read_manifest
from .settings import DeepSSMTrainSettings

WARP_CONTROL_EVERY = 4  # every 4th corresponding point steers the thin-plate spline (256 of 1024)
WARP_COARSE = 16  # the warp is evaluated on 16^3 points and interpolated: it is smooth at that scale
MASK_OFFSETS_MM = np.round(np.arange(0.0, 1.01, 0.1), 1)  # the candidates of the mask calibration


class ImageWarper:
    """Backward thin-plate-spline warps of volumes on the network grid (reference-frame mm)."""

    def __init__(self, reference) -> None:
        grid = centred_grid(reference, NETWORK_GRID)
        self.to_index = np.linalg.inv(index_to_physical(grid))
        size = np.array(NETWORK_GRID.size)
        axes = [np.linspace(0, s - 1, WARP_COARSE) for s in size[::-1]]  # k, j, i
        k, j, i = np.meshgrid(*axes, indexing="ij")
        self.coarse_mm = (np.stack([i, j, k, np.ones_like(i)], -1) @ index_to_physical(grid).T)[..., :3]
        self.size = size

    def warp(self, volume: torch.Tensor, source: np.ndarray, target: np.ndarray) -> torch.Tensor:
        """``volume`` (K, J, I), whose shape has points ``source`` (P, 3), redrawn so those points move to
        ``target`` (P, 3): each output voxel at x samples the input at x + d(x), d the spline of source - target."""
        spline = RBFInterpolator(target[::WARP_CONTROL_EVERY], (source - target)[::WARP_CONTROL_EVERY],
                                 kernel="thin_plate_spline")
        moved = self.coarse_mm + spline(self.coarse_mm.reshape(-1, 3)).reshape(self.coarse_mm.shape)
        index = moved @ self.to_index[:3, :3].T + self.to_index[:3, 3]  # (c, c, c, 3) as (i, j, k)
        normalised = torch.tensor(2 * index / (self.size - 1) - 1, dtype=torch.float32)
        dense = F.interpolate(normalised.permute(3, 0, 1, 2)[None], size=tuple(self.size[::-1]), mode="trilinear",
                              align_corners=True)[0].permute(1, 2, 3, 0)
        return F.grid_sample(volume[None, None].float(), dense[None], align_corners=True)[0, 0]


def sample_loadings(loadings: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(count, K) loadings drawn from the Gaussian KDE of ``loadings`` (N, K), and for each the index of
    the nearest training shape."""
    n, k = loadings.shape
    bandwidth = n ** (-1.0 / (k + 4)) * loadings.std(0)  # Scott's rule, per mode
    drawn = loadings[rng.integers(0, n, count)] + rng.normal(size=(count, k)) * bandwidth
    nearest = ((drawn[:, None] - loadings[None]) ** 2).sum(-1).argmin(1)
    return drawn, nearest


def calibrate_mask_offset(pdm: PointDistributionModel, held: np.ndarray, predicted: np.ndarray,
                          manifest: dict) -> tuple[float, dict[str, float]]:
    """The outward offset (mm) of the predicted surfaces (``predicted``: (H, P, 3) reference-crop mm of the
    validation shapes ``held``) whose masks best match the true masks (mean Dice over the validation
    images), and the mean Dice of each candidate offset."""
    labels = manifest["settings"].get("labels")
    cases = []
    for i, points in zip(held, predicted):
        shape = manifest["shapes"][pdm.names[i]]
        truth = read_mask(shape["source"], labels)
        cases.append((Similarity.from_dict(pdm.metadata["to_images"][i]).apply(points), truth))
    scores = {f"{offset:.1f}": float(np.mean([dice(sitk.GetArrayViewFromImage(pdm.segmentation(p, t, offset)) > 0,
                                                   sitk.GetArrayViewFromImage(t) > 0) for p, t in cases]))
              for offset in MASK_OFFSETS_MM}
    return float(max(scores, key=scores.get)), scores


def train_deepssm(pdm_path: str | Path, dataset: str | Path, out: str | Path, settings: DeepSSMTrainSettings,
                  command: str = "", progress: bool = True, device: str | None = None) -> Path:
    """Train on the shape model's training images (from ``dataset``'s manifest); write a ``deepssm`` bundle."""
    bundle = load_bundle(pdm_path, "pdm")
    pdm = PointDistributionModel.from_bundle(bundle)
    manifest = read_manifest(Path(dataset))
    missing = [n for n in pdm.names if "image" not in manifest["shapes"].get(n, {})]
    if missing:
        raise InputError(dataset, f"has no image for {missing[0]}: use the dataset the shape model was built on")
    run = Run(Path(out), settings, device)
    reference = reference_image(bundle)
    volumes, spreads = [], []
    for name, to_image in tqdm(list(zip(pdm.names, pdm.metadata["to_images"])), desc="load images",
                               unit="image", disable=not progress, dynamic_ncols=True):
        image = read_image(manifest["shapes"][name]["image"])
        spreads.append(intensity_stats(image)[1])
        volumes.append(torch.tensor(network_input(image, reference, Similarity.from_dict(to_image))))
    rows = np.arange(len(pdm.names))
    held = rows[:: settings.validation_every] if settings.validation_every else rows[:0]
    train = np.setdiff1d(rows, held)

    loadings = [pdm.loadings[i] for i in train]
    images = [volumes[i].half() for i in train]
    rng = np.random.default_rng(settings.seed)
    drawn, nearest = sample_loadings(pdm.loadings[train], settings.augment, rng)
    warper = ImageWarper(reference)
    for z, j in tqdm(list(zip(drawn, nearest)), desc="augment", unit="image", disable=not progress,
                     dynamic_ncols=True):
        source = train[j]
        images.append(warper.warp(volumes[source], pdm.points(pdm.loadings[source]), pdm.points(z)).half())
        loadings.append(z)
    images_t = torch.stack(images).to(run.device)
    targets = torch.tensor(np.stack(loadings), dtype=torch.float32, device=run.device)

    net = build_net(pdm, tuple(settings.channels)).to(run.device)
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, settings.steps)

    def step(g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        batch = torch.randperm(len(images_t), generator=g)[: settings.batch].to(run.device)
        predicted = net.points(net(images_t[batch, None].float()))
        loss = ((predicted - net.points(targets[batch])) ** 2).sum(-1).mean()
        return loss, {"mse_mm2": loss.item()}

    net.train()
    run.train(step, {"net": net, "optimiser": optimiser, "scheduler": scheduler}, settings.steps,
              desc="train-deepssm", progress=progress, log_every=25)
    net.eval()
    validation, offset = {}, 0.0
    if len(held):
        with torch.no_grad():
            predicted = net.points(net(torch.stack([volumes[i] for i in held])[:, None].to(run.device)))
        truth = torch.tensor(pdm.points(pdm.loadings[held]), dtype=torch.float32, device=run.device)
        validation = {"names": [pdm.names[i] for i in held],
                      "rmse_mm": float(((predicted - truth) ** 2).sum(-1).mean().sqrt())}
        offset, validation["mask_dice"] = calibrate_mask_offset(pdm, held, predicted.double().cpu().numpy(), manifest)
    metadata = {
        "organ": bundle.organ, "units": "mm", "frame": bundle.metadata["frame"],
        "config": {"channels": list(settings.channels), "grid": NETWORK_GRID.to_dict()},
        "intensity_spread_range": [float(min(spreads)), float(max(spreads))],
        "pdm": {**pdm.metadata, "mask_offset_mm": offset},
        "training": {**run.record(command), "pdm_model": str(pdm_path), "images": len(train),
                     "augmented": int(settings.augment), "validation": validation},
    }
    tensors = {**{k: v for k, v in bundle.tensors.items() if k.startswith("pdm.") or k == "reference_image"},
               **{f"net.{k}": v for k, v in net.state_dict().items()}}
    # The network is stored in float16 (half the file); the benchmark is measured on the file as written.
    save_bundle(out, "deepssm", metadata, tensors, half_precision=("net.",))
    return out
