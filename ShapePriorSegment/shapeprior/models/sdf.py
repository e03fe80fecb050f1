"""DeepSDF-style implicit decoder f(x, z) -> signed distance, its PCA shape space and meshing.

Coordinates are in the model's unit sphere (the anchor-aligned training frame);
signed distances are in the same units, negative inside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from ..geometry.level_set import field_grid, field_mesh
from .bundle import ModelBundle


@dataclass
class SDFConfig:
    latent_dim: int = 64
    width: int = 256
    layers: int = 6
    skip_layer: int = 3  # the input (xyz, z) is concatenated again before this hidden layer
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, d: dict) -> "SDFConfig":
        return cls(int(d["latent_dim"]), int(d["width"]), int(d["layers"]), int(d["skip_layer"]), float(d["dropout"]))


class SDFDecoder(nn.Module):
    """Weight-normalised MLP with ReLU and dropout, input re-injected at ``skip_layer``, linear output."""

    def __init__(self, config: SDFConfig = SDFConfig()):
        super().__init__()
        self.config = config
        inputs = 3 + config.latent_dim
        self.hidden = nn.ModuleList()
        for i in range(config.layers):
            fan_in = inputs if i == 0 else config.width
            # The layer before the skip shrinks so that its output plus the input is ``width`` wide.
            fan_out = config.width - inputs if i + 1 == config.skip_layer else config.width
            self.hidden.append(weight_norm(nn.Linear(fan_in, fan_out)))
        self.out = nn.Linear(config.width, 1)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, points: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Signed distances.

        Args:
            points: (..., N, 3) unit-sphere coordinates.
            latent: (..., C) one latent per point set, broadcast over N, or (..., N, C).
        Returns:
            (..., N) signed distances in unit-sphere units.
        """
        if latent.dim() == points.dim() - 1:
            latent = latent.unsqueeze(-2).expand(*points.shape[:-1], latent.shape[-1])
        x = inputs = torch.cat([points, latent], dim=-1)
        for i, layer in enumerate(self.hidden):
            if i == self.config.skip_layer:
                x = torch.cat([x, inputs], dim=-1)
            x = self.dropout(torch.relu(layer(x)))
        return self.out(x).squeeze(-1)


@dataclass
class ShapeSpace:
    """PCA of the training latents: ``z = mean + loadings @ basis``.

    ``basis`` rows are principal directions scaled by their standard deviations, so the
    loadings of training shapes are about N(0, I) and ``||loadings||^2`` is the prior.
    """

    mean: torch.Tensor  # (C,)
    basis: torch.Tensor  # (K, C)
    explained: float  # fraction of the latents' variance the K components keep

    def latent(self, loadings: torch.Tensor) -> torch.Tensor:
        """(..., K) loadings -> (..., C) latents."""
        return self.mean + loadings @ self.basis

    @classmethod
    def fit(cls, latents: torch.Tensor, variance: float) -> "ShapeSpace":
        """Keep the fewest components whose cumulative explained variance reaches ``variance``."""
        mean = latents.mean(0)
        _, s, vt = torch.linalg.svd(latents - mean, full_matrices=False)
        var = s**2 / (len(latents) - 1)
        cumulative = torch.cumsum(var, 0) / var.sum()
        k = int(torch.searchsorted(cumulative, torch.tensor(variance)).item()) + 1
        k = min(k, len(var))
        return cls(mean, vt[:k] * var[:k, None].sqrt(), float(cumulative[k - 1]))


def decoder_from_bundle(bundle: ModelBundle) -> tuple[SDFDecoder, ShapeSpace]:
    """(decoder in eval mode, PCA shape space) from an ``sdf`` bundle."""
    decoder = SDFDecoder(SDFConfig.from_dict(bundle.metadata["config"]))
    state = {k[len("decoder."):]: v for k, v in bundle.tensors.items() if k.startswith("decoder.")}
    decoder.load_state_dict(state)
    decoder.eval()
    space = ShapeSpace(
        bundle.tensors["pca_mean"].float(), bundle.tensors["pca_basis"].float(),
        float(bundle.metadata["pca"]["explained_variance"]),
    )
    return decoder, space


def evaluate_grid(decoder: SDFDecoder, latent: torch.Tensor, resolution: int = 96, radius: float = 1.05,
                  band_cells: float = 2.0) -> tuple[np.ndarray, float]:
    """The decoded SDF of ``latent`` on a grid: :func:`~shapeprior.geometry.level_set.field_grid`."""
    return field_grid(lambda points: decoder(points, latent), resolution, radius, band_cells)


def extract_mesh(decoder: SDFDecoder, latent: torch.Tensor, resolution: int = 96, radius: float = 1.05
                 ) -> trimesh.Trimesh:
    """Zero level set of the decoded SDF (unit-sphere coordinates); empty mesh if there is none."""
    return field_mesh(lambda points: decoder(points, latent), resolution, radius)
