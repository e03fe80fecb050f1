"""The plain 3D U-Net (MONAI) of the image benchmarks: built from a bundle, and its segmentation.

Images are resampled onto a fixed 1 mm grid centred on the image (``prep.crops``), normalised
like the pose agent's input.
"""

from __future__ import annotations

import SimpleITK as sitk
import torch
from monai.networks.nets import UNet

from ..prep.crops import FINE_GRID, centred_grid, normalised, resample_to
from .bundle import ModelBundle


def build_unet(channels: list[int], classes: int = 1) -> UNet:
    """A U-Net with ``classes`` foreground classes and the background."""
    return UNet(spatial_dims=3, in_channels=1, out_channels=classes + 1, channels=tuple(channels),
                strides=(2,) * (len(channels) - 1), num_res_units=2)


def unet_from_bundle(bundle: ModelBundle) -> UNet:
    config = bundle.metadata["config"]
    net = build_unet(config["channels"], config.get("classes", 1))
    net.load_state_dict({k[len("net."):]: v for k, v in bundle.tensors.items() if k.startswith("net.")})
    return net.eval()


@torch.no_grad()
def segment(net: UNet, image: sitk.Image) -> sitk.Image:
    """Class map (uint8; 0 background, 1 the organ or, with separate labels, 1, 2 ... the training labels in
    order) on ``image``'s grid: the U-Net's argmax on the centred 1 mm grid, resampled back."""
    reference = centred_grid(image, FINE_GRID)
    volume = torch.tensor(resample_to(normalised(image), reference))[None, None]
    label = net(volume).argmax(1)[0].to(torch.uint8).numpy()
    grid_image = sitk.GetImageFromArray(label)
    grid_image.CopyInformation(reference)
    return sitk.Resample(grid_image, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
