"""DeepSSM: an image registered onto the reference crop -> the loadings of a point distribution model.

The network is the paper's (Bhalodia et al. 2018): five 3D convolutions (no padding; BatchNorm,
PReLU; max-pooling after the first, third and fifth), then 384 -> 96 -> K fully connected; a frozen
last layer holds the PCA basis and mean, so training compares corresponding points (mm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from ..prep.registration import NETWORK_GRID, image_from_array
from .bundle import ModelBundle
from .pdm import PointDistributionModel

CHANNELS = (12, 24, 48, 96, 192)
POOL_AFTER = (0, 2, 4)  # max-pooling after these convolutions


class DeepSSMNet(nn.Module):
    """(B, 1, 64, 64, 64) image -> (B, K) whitened loadings; :meth:`points` -> (B, P, 3) mm."""

    def __init__(self, mean: torch.Tensor, basis: torch.Tensor, channels: tuple[int, ...] = CHANNELS,
                 grid: tuple[int, int, int] = NETWORK_GRID.size):
        """``mean`` (P, 3) mm; ``basis`` (K, P, 3): each mode scaled by its standard deviation (mm)."""
        super().__init__()
        layers, width = [], 1
        for index, out in enumerate(channels):
            layers += [nn.Conv3d(width, out, 5), nn.BatchNorm3d(out), nn.PReLU()]
            layers += [nn.MaxPool3d(2)] if index in POOL_AFTER else []
            width = out
        self.features = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            flat = self.features(torch.zeros(1, 1, *grid[::-1])).shape[1]
        k = basis.shape[0]
        self.head = nn.Sequential(nn.Linear(flat, 384), nn.PReLU(), nn.Linear(384, 96), nn.PReLU(), nn.Linear(96, k))
        self.register_buffer("mean", mean.float())
        self.register_buffer("basis", basis.float())

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(volume))

    def points(self, loadings: torch.Tensor) -> torch.Tensor:
        """(B, P, 3) reference-frame mm of whitened loadings (B, K): the frozen PCA layer."""
        return self.mean + torch.einsum("bk,kpd->bpd", loadings, self.basis)


def build_net(pdm: PointDistributionModel, channels: tuple[int, ...] = CHANNELS) -> DeepSSMNet:
    basis = pdm.modes * np.sqrt(pdm.variances)[:, None, None]
    return DeepSSMNet(torch.tensor(pdm.mean), torch.tensor(basis), tuple(channels))


def reference_image(bundle: ModelBundle) -> sitk.Image:
    """The reference crop stored in a ``pdm`` or ``deepssm`` bundle."""
    return image_from_array(bundle.tensors["reference_image"].float().numpy(),
                            bundle.metadata["pdm"]["reference_geometry"])


@dataclass
class DeepSSMModel:
    """Everything a DeepSSM fit needs: the network, its shape model and the reference crop."""

    net: DeepSSMNet
    pdm: PointDistributionModel
    reference: sitk.Image
    metadata: dict

    @classmethod
    def from_bundle(cls, bundle: ModelBundle) -> "DeepSSMModel":
        pdm = PointDistributionModel.from_bundle(bundle)
        net = build_net(pdm, bundle.metadata["config"]["channels"])
        net.load_state_dict({k[len("net."):]: v.float() for k, v in bundle.tensors.items() if k.startswith("net.")})
        return cls(net.eval(), pdm, reference_image(bundle), bundle.metadata)
