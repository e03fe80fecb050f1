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

from ..geometry.level_set import level_set_mesh
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


@torch.no_grad()
def evaluate_grid(
    decoder: SDFDecoder, latent: torch.Tensor, resolution: int = 96, radius: float = 1.05, band_cells: float = 2.0,
    chunk: int = 65536,
) -> tuple[np.ndarray, float]:
    """SDF on a ``resolution``^3 grid over [-radius, radius]^3, evaluated coarse to fine.

    The decoder runs on a grid 4x coarser first; fine points are decoded only where the
    coarse value is within ``band_cells`` coarse cells of zero, elsewhere the coarse
    field is interpolated (its sign is all marching cubes needs there).

    Returns ``(values (R, R, R) float32, spacing)`` with grid index i at ``-radius + i * spacing``.
    """

    def decode(points: torch.Tensor) -> torch.Tensor:
        return torch.cat([decoder(p, latent) for p in points.split(chunk)]) if len(points) else points[:, 0]

    coarse_res = max(8, resolution // 4)
    axis = torch.linspace(-radius, radius, coarse_res)
    coarse = decode(torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3))
    coarse = coarse.reshape(1, 1, coarse_res, coarse_res, coarse_res)
    fine = torch.nn.functional.interpolate(coarse, size=(resolution,) * 3, mode="trilinear", align_corners=True)[0, 0]
    coarse_cell = 2 * radius / (coarse_res - 1)
    near = fine.abs() < band_cells * coarse_cell
    index = near.nonzero()
    spacing = 2 * radius / (resolution - 1)
    fine[near] = decode(-radius + index.float() * spacing)
    return fine.numpy(), spacing


def extract_mesh(
    decoder: SDFDecoder, latent: torch.Tensor, resolution: int = 96, radius: float = 1.05
) -> trimesh.Trimesh:
    """Zero level set of the decoded SDF (unit-sphere coordinates); empty mesh if there is none."""
    values, spacing = evaluate_grid(decoder, latent, resolution, radius)
    # values[a, b, c] is at (a, b, c) * spacing - radius: array axes are x, y, z.
    to_unit = np.zeros((4, 4))
    to_unit[[0, 1, 2], [2, 1, 0]] = spacing
    to_unit[:3, 3] = -radius
    return level_set_mesh(values, 0.0, to_unit)
