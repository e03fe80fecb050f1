"""DALS decoder: template vertex + latent -> vertex offset (Deep Active Latent Surfaces).

The decoder is pointwise: each template vertex is decoded independently with its
own latent vector, so a single shape latent (broadcast to all vertices) gives a
shape of the learned space, and per-vertex latents (fitting) let it deviate locally.
Coordinates are in the model's unit sphere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .bundle import ModelBundle


@dataclass
class DALSConfig:
    latent_dim: int = 128
    hidden: tuple[int, ...] = (256, 256, 128)

    def to_dict(self) -> dict:
        return {"latent_dim": self.latent_dim, "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, d: dict) -> "DALSConfig":
        return cls(int(d["latent_dim"]), tuple(int(h) for h in d["hidden"]))


class DALSDecoder(nn.Module):
    """MLP f(x, z) -> offset; hidden layers Linear + LayerNorm + ReLU, linear output."""

    def __init__(self, config: DALSConfig = DALSConfig()):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = 3 + config.latent_dim
        for h in config.hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.ReLU()]
            width = h
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(width, 3)
        nn.init.zeros_(self.out.bias)
        nn.init.normal_(self.out.weight, std=1e-3)  # start as the template itself

    def forward(self, template: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Decode vertex positions.

        Args:
            template: (V, 3) shared or (B, V, 3) per-shape template vertices (unit sphere).
            latent: (B, C) one latent per shape, or (B, V, C) one per vertex.
        Returns:
            (B, V, 3) vertex positions: template + offset.
        """
        num_verts = template.shape[-2]
        first, rest = self.hidden[0], self.hidden[1:]
        if latent.dim() == 2:
            # One latent per shape: its share of the first layer is computed once per
            # shape, not once per vertex (a quarter of the training cost).
            w_x, w_z = first.weight[:, :3], first.weight[:, 3:]
            h = template @ w_x.T + (latent @ w_z.T + first.bias)[:, None, :]
            template = template.expand(latent.shape[0], num_verts, 3)
        else:
            template = template.expand(latent.shape[0], num_verts, 3)
            h = first(torch.cat([template, latent], dim=-1))
        offsets = self.out(rest(h))
        return template + offsets


def decoder_from_bundle(bundle: ModelBundle) -> tuple[DALSDecoder, torch.Tensor]:
    """(decoder in eval mode, mean training latent (C,)) from a ``dals`` bundle."""
    config = DALSConfig.from_dict(bundle.metadata["config"])
    decoder = DALSDecoder(config)
    state = {k[len("decoder."):]: v for k, v in bundle.tensors.items() if k.startswith("decoder.")}
    decoder.load_state_dict(state)
    decoder.eval()
    return decoder, bundle.tensors["latent_mean"].float()


def rotated_tensors(bundle: ModelBundle, rotation: torch.Tensor) -> dict[str, torch.Tensor]:
    """A ``dals`` bundle's tensors for the same shapes turned by ``rotation`` (3, 3), exactly.

    The first layer reads R^T x and the output layer writes R offset, so decoding the template
    vertex R x gives R f(x). For a rotation that maps the icosphere onto itself (half-turns about the
    axes do), every decoded surface is the old one turned, its vertices renumbered.
    """
    rotation = rotation.to(torch.float32)
    tensors = dict(bundle.tensors)
    first = tensors["decoder.hidden.0.weight"].clone()
    first[:, :3] = first[:, :3] @ rotation.T
    tensors["decoder.hidden.0.weight"] = first
    tensors["decoder.out.weight"] = rotation @ tensors["decoder.out.weight"]
    tensors["decoder.out.bias"] = rotation @ tensors["decoder.out.bias"]
    return tensors


def bundle_tensors(decoder: DALSDecoder, latents: torch.Tensor) -> dict[str, torch.Tensor]:
    """Tensors to store for a trained decoder and its (N, C) training latents."""
    tensors = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    tensors["latents"] = latents.detach()
    tensors["latent_mean"] = latents.detach().mean(0)
    return tensors

