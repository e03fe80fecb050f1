"""DISSM pose agent: image + current shape state -> pose and shape corrections.

Pose convention (batched, torch): the model's unit sphere maps to LPS mm by
``x = t + R (s * u)`` with an anisotropic scale ``s`` (mm per unit, per model axis),
a rotation ``R`` and a translation ``t`` (mm); image points go back by
``u = R^T (x - t) / s``. The agent is applied stage by stage (marginal space
learning): translation -> scale -> rotation -> shape (PCA loadings); each stage
corrects its own parameters and fine-tunes those of the stages before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.blocks import ResidualUnit
from torch import nn

from ..geometry import rotation_6d_to_matrix

STAGES = ("translation", "scale", "rotation", "shape")
SCALE_LIMITS = (0.5, 2.0)  # anisotropic scale, as a factor of the model's median scale
IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# Output units of the agent's heads: one unit of output moves this much per step.
STEP_TRANSLATION_MM = 4.0
STEP_LOG_SCALE = 0.1
STEP_ROTATION_6D = 0.1


@dataclass
class PoseState:
    """A batch of poses and PCA loadings (all (B, ...) tensors)."""

    translation: torch.Tensor  # (B, 3) mm
    scale: torch.Tensor  # (B, 3) mm per unit
    rotation: torch.Tensor  # (B, 3, 3)
    loadings: torch.Tensor  # (B, K)

    def to_unit(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) LPS mm -> (B, N, 3) model unit sphere."""
        return ((points - self.translation[:, None]) @ self.rotation) / self.scale[:, None]

    def from_unit(self, points: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) model unit sphere -> (B, N, 3) LPS mm."""
        return (points * self.scale[:, None]) @ self.rotation.transpose(1, 2) + self.translation[:, None]

    def mm_per_unit(self) -> torch.Tensor:
        """(B,) geometric-mean scale: converts unit-sphere distances to mm."""
        return self.scale.prod(-1) ** (1 / 3)

    def detach(self) -> "PoseState":
        return PoseState(*(t.detach() for t in (self.translation, self.scale, self.rotation, self.loadings)))

    def to(self, device: torch.device | str) -> "PoseState":
        return PoseState(*(t.to(device) for t in (self.translation, self.scale, self.rotation, self.loadings)))

    def index(self, rows: torch.Tensor) -> "PoseState":
        return PoseState(self.translation[rows], self.scale[rows], self.rotation[rows], self.loadings[rows])


class CanonicalSDF:
    """SDF grids of the mean shape and its PCA derivatives in the unit frame, for fast state rendering.

    ``grids[0]`` is f(u, mean latent) and ``grids[k]`` df/d(loading k) on a cube
    [-radius, radius]^3, so ``f(u, mean + loadings @ basis) ~= grids[0] + sum_k l_k grids[k]``:
    a first-order rendering, cheap enough for the agent's state at every step.
    """

    def __init__(self, grids: torch.Tensor, radius: float):
        self.grids = grids  # (1 + K, R, R, R), indexed [x, y, z]
        self.radius = radius

    def __call__(self, unit_points: torch.Tensor, loadings: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, 3) unit points -> (B, N) SDF in unit-sphere units (linear outside the cube)."""
        batch = unit_points.shape[0]
        clamped = unit_points.clamp(-self.radius, self.radius)
        outside = (unit_points - clamped).norm(dim=-1)
        # grid_sample's last coordinate indexes the first array axis: (x, y, z) -> (z, y, x).
        coords = (clamped / self.radius).flip(-1).reshape(batch, -1, 1, 1, 3)
        channels = 1 if loadings is None else 1 + loadings.shape[1]
        grids = self.grids[:channels].unsqueeze(0).expand(batch, -1, -1, -1, -1)
        values = torch.nn.functional.grid_sample(grids, coords, align_corners=True).reshape(batch, channels, -1)
        sdf = values[:, 0]
        if loadings is not None:
            sdf = sdf + (loadings[:, :, None] * values[:, 1:]).sum(1)
        return sdf + outside


class PoseAgent(nn.Module):
    """Residual 3D CNN encoder with global average pooling and one linear head.

    Input (B, 2, K, J, I): the normalised image and the shape's SDF under the current
    pose (mm, divided by 10). Output (B, 12 + K): translation (3), log-scale (3),
    6D rotation deviation (6), loadings (K), in the step units above.
    """

    def __init__(self, num_loadings: int, channels: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 2
        for i, ch in enumerate(channels):
            layers.append(ResidualUnit(3, in_ch, ch, strides=1 if i == 0 else 2, subunits=2, norm="INSTANCE"))
            in_ch = ch
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Linear(in_ch, 12 + num_loadings)
        nn.init.zeros_(self.head.weight)  # start as "no correction"
        nn.init.zeros_(self.head.bias)

    def forward(self, image: torch.Tensor, state_sdf: torch.Tensor) -> torch.Tensor:
        features = self.encoder(torch.stack([image, state_sdf], 1)).mean(dim=(2, 3, 4))
        return self.head(features)


def apply_correction(
    state: PoseState, output: torch.Tensor, stage: str, median_scale: float
) -> tuple[PoseState, torch.Tensor]:
    """New state after one agent step of ``stage`` (earlier stages' parameters are fine-tuned too).

    Returns the state, with the scale clipped to ``SCALE_LIMITS``, and a (B,) penalty on
    how far (in log scale) the unclipped scale went outside them.
    """
    level = STAGES.index(stage)
    translation = state.translation + STEP_TRANSLATION_MM * output[:, :3]
    scale, rotation, loadings = state.scale, state.rotation, state.loadings
    penalty = torch.zeros(len(output), dtype=output.dtype, device=output.device)
    if level >= 1:
        lo, hi = SCALE_LIMITS
        log_relative = torch.log(scale / median_scale) + STEP_LOG_SCALE * output[:, 3:6]
        excess = torch.relu(log_relative - torch.log(torch.tensor(hi))) + torch.relu(torch.log(torch.tensor(lo)) - log_relative)
        penalty = (excess**2).sum(-1)
        scale = median_scale * torch.exp(log_relative).clamp(lo, hi)
    if level >= 2:
        identity = torch.tensor(IDENTITY_6D, dtype=output.dtype, device=output.device)
        delta = rotation_6d_to_matrix(identity + STEP_ROTATION_6D * output[:, 6:12])
        rotation = delta @ rotation
    if level >= 3:
        loadings = loadings + output[:, 12:]
    return PoseState(translation, scale, rotation, loadings), penalty


def render_state(sdf: CanonicalSDF, state: PoseState, grid_mm: torch.Tensor, use_loadings: bool) -> torch.Tensor:
    """(B, K, J, I) SDF in mm of the current shape on the agent grid (``grid_mm`` (B or 1, K, J, I, 3))."""
    batch = state.translation.shape[0]
    shape = grid_mm.shape[1:4]
    points = grid_mm.reshape(grid_mm.shape[0], -1, 3).expand(batch, -1, -1)
    values = sdf(state.to_unit(points), state.loadings if use_loadings else None)
    return (values * state.mm_per_unit()[:, None]).reshape(batch, *shape)


@torch.no_grad()
def build_canonical_sdf(decoder: nn.Module, mean: torch.Tensor, basis: torch.Tensor, resolution: int = 40,
                        radius: float = 1.25, chunk: int = 65536) -> CanonicalSDF:
    """Tabulate f(u, mean) and its central differences along each PCA direction (one std each way)."""
    axis = torch.linspace(-radius, radius, resolution)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)

    def decode(latent: torch.Tensor) -> torch.Tensor:
        return torch.cat([decoder(p, latent) for p in points.split(chunk)]).reshape((resolution,) * 3)

    grids = [decode(mean)] + [(decode(mean + b) - decode(mean - b)) / 2 for b in basis]
    return CanonicalSDF(torch.stack(grids), radius)
