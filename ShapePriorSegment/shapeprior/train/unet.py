"""A plain 3D U-Net (MONAI) trained on the same images: the CNN baseline of the image benchmarks.

Images are resampled onto a fixed 1 mm grid centred on the image (see ``prep.crops``),
normalised like the pose agent's input, and trained with Dice + cross-entropy.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from tqdm import tqdm

from ..io import read_image, read_mask
from ..models.bundle import ModelBundle, save_bundle
from ..prep.crops import FINE_GRID, centred_grid, normalised, resample_to
from ..prep.dataset import select_shapes, split_names
from .common import load_checkpoint, read_manifest, save_checkpoint

@dataclass
class UNetTrainSettings:
    include: list[str] = field(default_factory=lambda: ["*"])
    holdout_every: int = 5
    labels: list[int] | None = None
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    steps: int = 1500
    batch: int = 4
    lr: float = 1e-3
    seed: int = 0


def build_unet(channels: list[int]) -> UNet:
    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=2)


def unet_from_bundle(bundle: ModelBundle) -> UNet:
    net = build_unet(bundle.metadata["config"]["channels"])
    net.load_state_dict({k[len("net."):]: v for k, v in bundle.tensors.items() if k.startswith("net.")})
    return net.eval()


@torch.no_grad()
def segment(net: UNet, image: sitk.Image) -> sitk.Image:
    """Binary mask (uint8) on ``image``'s grid: the U-Net's argmax on the centred 1 mm grid, resampled back."""
    reference = centred_grid(image, FINE_GRID)
    volume = torch.tensor(resample_to(normalised(image), reference))[None, None]
    label = net(volume).argmax(1)[0].to(torch.uint8).numpy()
    grid_image = sitk.GetImageFromArray(label)
    grid_image.CopyInformation(reference)
    return sitk.Resample(grid_image, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def train_unet(dataset: str | Path, out: str | Path, settings: UNetTrainSettings, command: str = "",
               progress: bool = True, device: str | None = None) -> Path:
    """Train on the dataset's training split (images and masks from its manifest); write a ``unet`` bundle."""
    dataset, out = Path(dataset), Path(out)
    manifest = read_manifest(dataset)
    names, held_out = split_names(select_shapes(manifest, settings.include), settings.holdout_every)
    labels = settings.labels or manifest["settings"].get("labels")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    images, masks = [], []
    for name in tqdm(names, desc="load images", disable=not progress, dynamic_ncols=True):
        entry = manifest["shapes"][name]
        image = read_image(entry["image"])
        reference = centred_grid(image, FINE_GRID)
        images.append(resample_to(normalised(image), reference))
        masks.append(resample_to(read_mask(entry["source"], labels), reference, nearest=True))
    images_t = torch.tensor(np.stack(images))[:, None].to(device)
    masks_t = torch.tensor(np.stack(masks))[:, None].long().to(device)

    torch.manual_seed(settings.seed)
    net = build_unet(settings.channels).to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, settings.steps)
    start, history = 0, []
    state = load_checkpoint(out, asdict(settings), device)
    if state is not None:
        net.load_state_dict(state["net"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        start, history = int(state["step"]), list(state["history"])
    began = time.perf_counter()
    bar = tqdm(total=settings.steps, initial=start, desc="train-unet", disable=not progress, dynamic_ncols=True)
    window = []
    net.train()
    for step in range(start, settings.steps):
        g = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
        rows = torch.randperm(len(names), generator=g)[: settings.batch]
        x, y = images_t[rows], masks_t[rows]
        # Intensity augmentation: MR has no fixed scale.
        x = x * (1 + 0.1 * torch.randn(len(rows), 1, 1, 1, 1, generator=g)) + 0.1 * torch.randn(
            len(rows), 1, 1, 1, 1, generator=g)
        loss = loss_fn(net(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        window.append(loss.item())
        if (step + 1) % 100 == 0:
            history.append({"step": step + 1, "loss": float(np.mean(window))})
            window = []
            save_checkpoint(out, {"settings": asdict(settings), "step": step + 1, "history": history,
                                  "net": net.state_dict(), "optimiser": optimiser.state_dict(),
                                  "scheduler": scheduler.state_dict()})
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        bar.update(1)
    bar.close()
    metadata = {
        "organ": manifest.get("organ", "organ"),
        "units": "mm",
        "frame": f"input resampled to a {FINE_GRID.size} grid at {FINE_GRID.spacing_mm} mm centred on the image",
        "config": {"channels": settings.channels, "grid": FINE_GRID.to_dict()},
        "training": {**asdict(settings), "labels": labels, "shapes": names, "held_out": held_out,
                     "history": history, "seconds_this_run": time.perf_counter() - began,
                     "command": command or " ".join(sys.argv)},
    }
    save_bundle(out, "unet", metadata, {f"net.{k}": v for k, v in net.state_dict().items()})
    return out
