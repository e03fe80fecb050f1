"""Mask refinement with an implicit (DeepSDF + PCA) model: pose and loadings so that the
decoded SDF matches the mask's signed distance map.

The pose follows ``models.pose_agent``: ``x = t + R (s * u)``, LPS mm. It starts from
the mask (centroid, volume, the training set's mean rotation); then a robust fit of the
pose alone, then pose and loadings together. Residuals use a Cauchy loss: voxels where
the mask and the model disagree by several mm (a leak, a hole, a cut-off part) barely
pull on the shape.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import SimpleITK as sitk
import torch
import trimesh

from ..geometry import matrix_to_rotation_6d, rotation_6d_to_matrix
from ..io.frames import index_to_lps
from ..models.pose_agent import PoseState
from ..models.sdf import SDFDecoder, ShapeSpace, extract_mesh
from ..prep.mask_distance import DistanceSampler, PreparedMask
from ..settings import ImplicitMaskSettings
from .dals_fit import FitCancelled
from .mask_dals import annealed_scale, cauchy


class _Pose(torch.nn.Module):
    def __init__(self, translation: np.ndarray, scale: float, rotation: np.ndarray, components: int):
        super().__init__()
        self.t0 = torch.tensor(translation, dtype=torch.float32)
        self.s0 = float(scale)
        self.shift = torch.nn.Parameter(torch.zeros(3))
        self.log_scale = torch.nn.Parameter(torch.zeros(3))
        self.rot6d = torch.nn.Parameter(matrix_to_rotation_6d(torch.tensor(rotation, dtype=torch.float32)))
        self.loadings = torch.nn.Parameter(torch.zeros(components))

    def state(self) -> PoseState:
        return PoseState(
            (self.t0 + self.s0 * self.shift)[None], (self.s0 * torch.exp(self.log_scale))[None],
            rotation_6d_to_matrix(self.rot6d)[None], self.loadings[None],
        )


def _mean_shape(decoder: SDFDecoder, space: ShapeSpace) -> tuple[np.ndarray, float]:
    """Centroid (unit frame) and volume (unit^3) of the mean shape."""
    mesh = extract_mesh(decoder, space.mean, resolution=48)
    return np.asarray(mesh.center_mass), float(mesh.volume)


class _PointSampler:
    """Random LPS points (mm) at voxel centres jittered within their voxel: two thirds within
    ``band_mm`` of the mask boundary, a third anywhere in the band's bounding box."""

    def __init__(self, prepared: PreparedMask, band_mm: float, seed: int):
        sdf = prepared.sdf_mm
        self.shape = sdf.shape
        self.near = np.flatnonzero(np.abs(sdf.ravel()) < band_mm)
        box = np.argwhere(sdf < band_mm)
        self.lo, self.hi = box.min(0), box.max(0) + 1
        self.reference = prepared.mask
        self.g = np.random.default_rng(seed)

    def __call__(self, count: int) -> torch.Tensor:
        n_near = 2 * count // 3
        kji = np.concatenate([
            np.stack(np.unravel_index(self.g.choice(self.near, n_near), self.shape), -1),
            self.g.integers(self.lo, self.hi, (count - n_near, 3)),
        ]) + self.g.uniform(-0.5, 0.5, (count, 3))
        return torch.tensor(index_to_lps(self.reference, kji[:, ::-1]), dtype=torch.float32)


def fit_mask_implicit(
    decoder: SDFDecoder, space: ShapeSpace, prepared: PreparedMask, mean_rotation: np.ndarray,
    settings: ImplicitMaskSettings = ImplicitMaskSettings(),
    progress: Callable[[float, str], None] | None = None, should_stop: Callable[[], bool] | None = None,
) -> tuple[PoseState, torch.Tensor, list[dict]]:
    """The fitted pose and loadings, the latent (C,) and the loss history."""
    torch.manual_seed(settings.seed)
    for p in decoder.parameters():
        p.requires_grad_(False)
    centre_unit, volume_unit = _mean_shape(decoder, space)
    binary = sitk.GetArrayViewFromImage(prepared.mask) > 0
    centroid = index_to_lps(prepared.mask, np.argwhere(binary).mean(0)[::-1])
    scale = (prepared.volume_ml * 1000.0 / volume_unit) ** (1 / 3)
    pose = _Pose(centroid - mean_rotation @ (scale * centre_unit), scale, mean_rotation, space.basis.shape[0])
    sampler = DistanceSampler(prepared.sdf_mm, prepared.mask)
    sample_points = _PointSampler(prepared, settings.band_mm, settings.seed)
    total = settings.pose_steps + settings.shape_steps
    history = []
    delta, c = settings.band_mm, settings.robust_mm

    for step in range(total):
        if should_stop is not None and should_stop():
            raise FitCancelled("fit cancelled")
        if step in (0, settings.pose_steps):
            params = [pose.shift, pose.log_scale, pose.rot6d] + ([pose.loadings] if step else [])
            optimiser = torch.optim.Adam(params, lr=settings.lr)
        stage = "pose" if step < settings.pose_steps else "pose + shape"
        points = sample_points(settings.points)
        target, valid = sampler(points)
        state = pose.state()
        unit = state.to_unit(points[None])[0]
        predicted = decoder(unit, space.latent(pose.loadings)) * state.mm_per_unit()[0]
        residual = (predicted.clamp(-delta, delta) - target.clamp(-delta, delta))[valid]
        data = cauchy(residual, annealed_scale(c, step, settings.pose_steps))
        loss = data + settings.lambda_shape * (pose.loadings**2).sum() \
            + settings.lambda_scale * (pose.log_scale - pose.log_scale.mean()).pow(2).sum()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        history.append({"stage": stage, "data": data.item(), "loss": loss.item()})
        if progress is not None:
            progress((step + 1) / total, stage)
    with torch.no_grad():
        latent = space.latent(pose.loadings)
    return pose.state().detach(), latent, history


def implicit_mesh(decoder: SDFDecoder, latent: torch.Tensor, state: PoseState, resolution: int = 64) -> trimesh.Trimesh:
    """The surface of ``latent`` (C,) under the pose ``state``, LPS mm."""
    unit = extract_mesh(decoder, latent, resolution=resolution)
    verts = state.from_unit(torch.tensor(unit.vertices, dtype=torch.float32)[None])[0].double().numpy()
    return trimesh.Trimesh(verts, unit.faces, process=False)
