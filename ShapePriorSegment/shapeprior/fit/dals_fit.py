"""Fitting a DALS decoder to planar contours or point clouds in patient space (LPS mm).

Two stages, each optimising the similarity pose (model unit sphere -> LPS mm) too:
1. one global latent (stays in the learned shape space: robust far from the data);
2. per-vertex latents Z, started from the global one, with the Dirichlet-type prior
   lambda_dir * Tr(Z^T L^p Z) keeping neighbouring latents alike, so the surface can
   follow the drawn curves locally while staying smooth.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

import numpy as np
import torch
import trimesh
from scipy import sparse
from scipy.sparse.linalg import eigsh

from ..geometry import (
    chamfer_distance,
    face_pairs,
    icosphere,
    laplacian_energy,
    matrix_to_rotation_6d,
    nearest_distances,
    normal_consistency_loss,
    quality_loss,
    rotation_6d_to_matrix,
    sample_plane_intersection,
    sample_surface,
    uniform_laplacian,
)
from ..models.dals import DALSDecoder
from ..settings import FitSettings
from ..transform import Similarity
from .contours import Plane
from .warm_start import FitState


class FitCancelled(RuntimeError):
    """Raised inside a fit when its ``should_stop`` callback returns True."""


@dataclass
class FitResult:
    mesh: trimesh.Trimesh  # LPS mm
    pose: Similarity  # model unit sphere -> LPS mm
    seconds: float
    iterations: int
    history: list[dict] = field(default_factory=list)
    state: FitState | None = None


class Task(Protocol):
    points: np.ndarray  # (N, 3) LPS mm: all target points, for the pose start

    def loss(self, verts: torch.Tensor, faces: torch.Tensor, g: torch.Generator) -> torch.Tensor: ...


class ContourTask:
    """Chamfer between the surface's cut with each plane and the curves drawn on it.

    Distances are measured in ``unit_mm`` units so loss weights do not depend on organ size.
    """

    def __init__(self, planes: list[Plane], samples: int, unit_mm: float):
        self.planes = planes
        self.samples = samples
        self.unit_mm = unit_mm
        self.points = np.concatenate([p.points for p in planes])
        self._targets = [torch.tensor(p.points, dtype=torch.float32) for p in planes]
        self._origins = [torch.tensor(p.origin, dtype=torch.float32) for p in planes]
        self._normals = [torch.tensor(p.normal, dtype=torch.float32) for p in planes]

    def loss(self, verts: torch.Tensor, faces: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        losses = []
        for target, origin, normal in zip(self._targets, self._origins, self._normals):
            cut = sample_plane_intersection(verts, faces, origin, normal, self.samples, generator=g)
            if len(cut) == 0:  # the surface misses this plane: pull its vertices towards the curve
                losses.append(nearest_distances(target, verts, squared=True).mean() / self.unit_mm**2)
            else:
                losses.append(chamfer_distance(cut / self.unit_mm, target / self.unit_mm))
        return torch.stack(losses).mean()


class PointTask:
    """Chamfer between surface samples and a point cloud (LPS mm)."""

    def __init__(self, points: np.ndarray, samples: int, unit_mm: float):
        self.points = np.asarray(points, dtype=np.float64)
        self.samples = samples
        self.unit_mm = unit_mm
        self._target = torch.tensor(self.points, dtype=torch.float32)

    def loss(self, verts: torch.Tensor, faces: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        samples = sample_surface(verts, faces, max(self.samples, len(self.points)), generator=g)
        return chamfer_distance(samples / self.unit_mm, self._target / self.unit_mm)


class Pose(torch.nn.Module):
    """Similarity pose ``mm = s * R v + t`` with log-scale and 6D rotation parameters.

    Translation is optimised in units of the initial scale so all parameters move alike.
    """

    def __init__(self, start: Similarity):
        super().__init__()
        self.t0 = torch.tensor(start.translation, dtype=torch.float32)
        self.s0 = float(start.scale)
        self.shift = torch.nn.Parameter(torch.zeros(3))
        self.log_scale = torch.nn.Parameter(torch.zeros(()))
        self.rot6d = torch.nn.Parameter(matrix_to_rotation_6d(torch.tensor(start.rotation, dtype=torch.float32)))

    def forward(self, verts: torch.Tensor) -> torch.Tensor:
        """(V, 3) unit-sphere vertices -> (V, 3) LPS mm."""
        rotation = rotation_6d_to_matrix(self.rot6d)
        return self.s0 * torch.exp(self.log_scale) * verts @ rotation.T + self.t0 + self.s0 * self.shift

    def similarity(self) -> Similarity:
        with torch.no_grad():
            return Similarity(
                self.s0 * float(torch.exp(self.log_scale)),
                rotation_6d_to_matrix(self.rot6d).double().numpy(),
                (self.t0 + self.s0 * self.shift).double().numpy(),
            )


@lru_cache(maxsize=4)
def laplacian_modes(level: int, count: int) -> torch.Tensor:
    """(V, count) smoothest eigenvectors of the icosphere's uniform Laplacian, constant one excluded.

    Per-vertex latents are fitted as ``Z = z + modes @ C``: the prior Tr(Z^T L^p Z) is
    diagonal in this basis, so the optimiser moves smooth latent fields directly
    instead of diffusing them vertex by vertex; ``count`` truncates the finest modes.
    """
    verts, faces = icosphere(level)
    num_verts = len(verts)
    lap = uniform_laplacian(faces, num_verts).coalesce()
    laplacian = sparse.coo_matrix((lap.values().double().numpy(), tuple(lap.indices().numpy())), shape=(num_verts,) * 2)
    count = min(count, num_verts - 2)
    # A fixed start vector: ARPACK's default is random, and the modes (a basis of degenerate
    # eigenspaces, and their signs) must be the same in every process for --warm-start's coefficients.
    start = np.random.default_rng(0).standard_normal(num_verts)
    _, vectors = eigsh(laplacian.tocsc(), k=count + 1, sigma=-1e-3, which="LM", v0=start)
    return torch.tensor(vectors[:, 1:], dtype=torch.float32)


def initial_pose(mean_verts: np.ndarray, target_points: np.ndarray) -> Similarity:
    """Identity rotation; scale and translation matching the bounding boxes.

    The model frame keeps the training scans' patient axes, so the identity is a
    good rotation start; the box of the drawn curves spans the organ's extent.
    """
    lo, hi = target_points.min(0), target_points.max(0)
    mlo, mhi = mean_verts.min(0), mean_verts.max(0)
    spans = (hi - lo) / np.maximum(mhi - mlo, 1e-6)
    observed = (hi - lo) > 1e-3 * (hi - lo).max()  # axes the curves really span
    scale = float(np.median(spans[observed]))
    return Similarity(scale, np.eye(3), (lo + hi) / 2 - scale * (mlo + mhi) / 2)


class Adam:
    """Adam (Kingma and Ba 2015) over parameter groups ``[{"params": [...], "lr": ...}]``.

    Same update as ``torch.optim.Adam``; written out because the first use of any
    ``torch.optim`` optimiser imports TorchDynamo, 1.6 s of a 5 s command-line fit.
    """

    def __init__(self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.groups = [(g["params"], g["lr"]) for g in groups]
        self.betas, self.eps, self.steps = betas, eps, 0
        self.moments = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for ps, _ in self.groups for p in ps}

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        b1, b2 = self.betas
        for params, lr in self.groups:
            for p in params:
                if p.grad is None:
                    continue
                m, v = self.moments[id(p)]
                m.lerp_(p.grad, 1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (v / (1 - b2**self.steps)).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-lr / (1 - b1**self.steps))
                p.grad = None


def fit_dals(
    decoder: DALSDecoder,
    latent_mean: torch.Tensor,
    make_task: Callable[[float], Task],
    settings: FitSettings = FitSettings(),
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    start: FitState | None = None,
) -> FitResult:
    """Fit pose and latents to the task; return the surface in LPS mm.

    ``make_task(unit_mm)`` builds the task once the initial scale (mm per model unit)
    is known. ``start``: an earlier fit's state to refit from (one short stage instead
    of two). ``progress(fraction, stage)`` is called every step; ``should_stop()``
    returning True raises :class:`FitCancelled`.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        return _fit_dals(decoder, latent_mean, make_task, settings, progress, should_stop, start)
    finally:
        torch.set_num_threads(threads)


def _fit_dals(decoder, latent_mean, make_task, settings, progress, should_stop, start) -> FitResult:
    began = time.perf_counter()
    torch.manual_seed(settings.seed)
    g = torch.Generator().manual_seed(settings.seed)
    for p in decoder.parameters():
        p.requires_grad_(False)
    template, faces = icosphere(settings.level)
    global_level = min(settings.global_level, settings.level)
    if start is None:
        with torch.no_grad():
            mean_verts = decoder(icosphere(global_level)[0], latent_mean[None])[0]
        start_pose = initial_pose(mean_verts.numpy(), make_task(1.0).points)
    else:
        start_pose = start.pose
    task = make_task(start_pose.scale)
    pose = Pose(start_pose)
    # A refit starts both stages where the earlier fit ended, and runs them shorter.
    stages = (settings.global_steps, settings.vertex_steps) if start is None else settings.refit_steps
    total = sum(stages)
    history: list[dict] = []

    def run(stage: str, params: list, steps: int, extra: Callable[[], torch.Tensor], latent_lr: float,
            latents: Callable[[int], torch.Tensor], train_pose: bool, level: int) -> None:
        """``steps`` of Adam, the loss measured on the level-``level`` icosphere; ``latents(V)``: (C,) one
        latent or (V, C) those of its V vertices (the first V of any finer icosphere's)."""
        template, faces = icosphere(level)
        pairs = face_pairs(faces)
        groups = [{"params": params, "lr": latent_lr}]
        if train_pose:
            groups.append({"params": list(pose.parameters()), "lr": settings.lr})
        optimiser = Adam(groups)
        for step in range(steps):
            if should_stop is not None and should_stop():
                raise FitCancelled("fit cancelled")
            verts_unit = decoder(template, latents(len(template))[None])[0]
            verts = pose(verts_unit)
            task_loss = task.loss(verts, faces, g)
            shape_terms = settings.lambda_reg * quality_loss(verts_unit, faces)
            if settings.lambda_normal:
                shape_terms = shape_terms + settings.lambda_normal * normal_consistency_loss(
                    verts_unit, faces, pairs)
            loss = task_loss + shape_terms + extra()
            loss.backward()
            optimiser.step()
            history.append({"stage": stage, "task": task_loss.item(), "loss": loss.item()})
            if progress is not None:
                progress((len(history)) / total, stage)

    z = torch.nn.Parameter(latent_mean.clone() if start is None else torch.tensor(start.latent, dtype=torch.float32))
    run("global latent", [z], stages[0], lambda: settings.lambda_latent * (z - latent_mean).pow(2).sum(), settings.lr,
        lambda _: z, True, global_level)
    laplacian = uniform_laplacian(faces, len(template))
    modes = laplacian_modes(settings.level, settings.vertex_modes)
    coefficients = torch.nn.Parameter(torch.zeros(modes.shape[1], z.shape[0]) if start is None else
                                      torch.tensor(start.coefficients, dtype=torch.float32))
    z.requires_grad_(False)

    def vertex_latents() -> torch.Tensor:
        return z + modes @ coefficients

    run("per-vertex latents", [coefficients], stages[1],
        lambda: settings.lambda_dir * laplacian_energy(vertex_latents(), laplacian, settings.laplacian_power),
        settings.vertex_lr, lambda n: vertex_latents()[:n], settings.vertex_pose, min(settings.vertex_level, settings.level))
    with torch.no_grad():
        verts_mm = pose(decoder(template, vertex_latents()[None])[0]).double().numpy()
    mesh = trimesh.Trimesh(verts_mm, faces.numpy(), process=False)
    state = FitState(pose.similarity(), z.detach().double().numpy(), coefficients.detach().double().numpy())
    return FitResult(mesh, state.pose, time.perf_counter() - began, total, history, state)


def contour_residuals(mesh: trimesh.Trimesh, planes: list[Plane]) -> list[dict]:
    """Per drawn curve: mean and max distance (mm) from its points to the surface's cut."""
    verts = torch.tensor(mesh.vertices, dtype=torch.float64)
    faces = torch.tensor(mesh.faces, dtype=torch.long)
    rows = []
    for index, plane in enumerate(planes):
        segments = sample_plane_intersection(
            verts, faces, torch.tensor(plane.origin), torch.tensor(plane.normal), 20000,
            generator=torch.Generator().manual_seed(0),
        )
        for curve_id, curve in zip(plane.curve_ids, plane.curves):
            if len(segments) == 0:
                mean = worst = float("inf")
            else:
                d = nearest_distances(torch.tensor(curve), segments).numpy()
                mean, worst = float(d.mean()), float(d.max())
            rows.append({"curve": curve_id + 1, "plane": index + 1, "mean_mm": mean, "max_mm": worst})
    return sorted(rows, key=lambda r: r["curve"])
