"""A plain 3D U-Net (MONAI) trained on the same images: the CNN baseline of the image benchmarks.

Images are resampled onto a fixed 1 mm grid centred on the image (see ``prep.crops``),
normalised like the pose agent's input, and trained with Dice + cross-entropy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss
from tqdm import tqdm

from ..io import read_image, read_mask
from ..models.bundle import save_bundle
from ..models.unet import build_unet
from ..prep.crops import FINE_GRID, centred_grid, normalised, resample_to
from ..prep.dataset import select_shapes, split_names
from .common import Run, read_manifest
from .settings import UNetTrainSettings


def train_unet(dataset: str | Path, out: str | Path, settings: UNetTrainSettings, command: str = "",
               progress: bool = True, device: str | None = None) -> Path:
    """Train on the dataset's training split (images and masks from its manifest); write a ``unet`` bundle."""
    dataset, out = Path(dataset), Path(out)
    manifest = read_manifest(dataset)
    names, held_out = split_names(select_shapes(manifest, settings.include), settings.holdout_every)
    names = names[: settings.train_cases or None]
    labels = settings.labels or manifest["settings"].get("labels")
    # Class i + 1 is labels[i] with separate labels, else 1 is the merged organ.
    classes = [[label] for label in labels] if settings.separate_labels else [labels]
    run = Run(out, settings, device)
    images, masks = [], []
    for name in tqdm(names, desc="load images", disable=not progress, dynamic_ncols=True):
        entry = manifest["shapes"][name]
        image = read_image(entry["image"])
        reference = centred_grid(image, FINE_GRID)
        images.append(resample_to(normalised(image), reference))
        label = read_mask(entry["source"], classes[0])
        for i, labels_i in enumerate(classes[1:], 2):
            label += read_mask(entry["source"], labels_i) * i
        masks.append(resample_to(label, reference, nearest=True))
    images_t = torch.tensor(np.stack(images))[:, None].to(run.device)
    masks_t = torch.tensor(np.stack(masks))[:, None].long().to(run.device)

    net = build_unet(settings.channels, len(classes)).to(run.device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, settings.steps)

    def step(g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        rows = torch.randperm(len(names), generator=g)[: settings.batch]
        x, y = images_t[rows], masks_t[rows]
        # Intensity augmentation: MR has no fixed scale.
        gain, shift = 0.1 * torch.randn(2, len(rows), 1, 1, 1, 1, generator=g).to(x.device)  # g lives on the CPU
        x = x * (1 + gain) + shift
        loss = loss_fn(net(x), y)
        return loss, {"loss": loss.item()}

    net.train()
    parts = {"net": net, "optimiser": optimiser, "scheduler": scheduler}
    run.train(step, parts, settings.steps, desc="train-unet", progress=progress, log_every=100)
    metadata = {
        "organ": manifest.get("organ", "organ"),
        "units": "mm",
        "frame": f"input resampled to a {FINE_GRID.size} grid at {FINE_GRID.spacing_mm} mm centred on the image",
        "config": {"channels": settings.channels, "classes": len(classes), "grid": FINE_GRID.to_dict()},
        "training": {**run.record(command), "labels": labels, "separate_labels": settings.separate_labels,
                     "shapes": names, "held_out": held_out},
    }
    save_bundle(out, "unet", metadata, {f"net.{k}": v for k, v in net.state_dict().items()})
    return out

