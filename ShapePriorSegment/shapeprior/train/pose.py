"""Training of the DISSM pose agent by inverted episodic training and marginal space learning.

Stages run in order (translation -> scale -> rotation -> shape), each starting
from the weights of the one before. Within a stage the episode step is the outer
loop: every training image keeps its current state (pose, loadings) between visits;
a visit lets the agent correct it, scores the corrected shape by the L1 distance
between its SDF and the true SDF at image points (mm), stores the corrected state
with a small random perturbation, and now and then restarts the episode from a
fresh perturbation of the true pose. Perturbation ranges (hippocampus scale) are in
``PERTURB`` and recorded in the bundle.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import InputError
from ..io import read_image, read_mesh
from ..models.bundle import load_bundle, save_bundle
from ..models.pose_agent import (
    STAGES,
    CanonicalSDF,
    PoseAgent,
    PoseState,
    apply_correction,
    build_canonical_sdf,
    render_state,
)
from ..models.registry import build_model
from ..models.sdf import ShapeSpace
from ..prep.crops import GridSpec, agent_input, intensity_stats
from ..prep.sdf import signed_distance
from ..transform import Similarity
from .common import Run, read_manifest
from .settings import PoseTrainSettings

# Episode starts: uniform translation offsets (mm) for the translation stage and normal
# ones later, uniform log-scale offsets, rotation angles up to the given degrees.
PERTURB = {"translation_mm": 10.0, "translation_later_mm": 1.5, "log_scale": 0.2, "rotation_deg": 20.0,
           "loadings_std": 0.5, "step_translation_mm": 1.0, "step_log_scale": 0.03, "step_rotation_deg": 3.0,
           "reset_probability": 0.25}


@dataclass
class Case:
    image: torch.Tensor  # (K, J, I) normalised
    grid_mm: torch.Tensor  # (K, J, I, 3)
    sdf_mm: torch.Tensor  # (K*J*I,) true signed distance
    near: torch.Tensor  # indices of voxels within 3 mm of the surface
    pose: Similarity  # true unit -> LPS mm (from the dataset's alignment)
    loadings: torch.Tensor  # (K,) true PCA loadings


def load_cases(dataset: Path, manifest: dict, names: list[str], loadings: torch.Tensor, spec: GridSpec,
               progress: bool) -> tuple[list[Case], list[tuple[float, float]]]:
    cases, stats = [], []
    for name, load in tqdm(list(zip(names, loadings)), desc="load images", disable=not progress, dynamic_ncols=True):
        entry = manifest["shapes"][name]
        if "image" not in entry:
            raise InputError(dataset, f"shape {name} has no image; prepare with --images")
        image = read_image(entry["image"])
        stats.append(intensity_stats(image))
        array, grid_mm, _ = agent_input(image, spec)
        surface = read_mesh(dataset / entry["surface"])
        sdf = signed_distance(surface, grid_mm.reshape(-1, 3).astype(np.float64)).astype(np.float32)
        cases.append(Case(torch.tensor(array), torch.tensor(grid_mm), torch.tensor(sdf),
                          torch.tensor(np.flatnonzero(np.abs(sdf) < 3.0)), Similarity.from_dict(entry["from_unit"]),
                          load))
    return cases, stats


def mean_rotation(rotations: np.ndarray) -> np.ndarray:
    """Chordal L2 mean of (N, 3, 3) rotations: the projection of their average onto SO(3)."""
    u, _, vt = np.linalg.svd(rotations.mean(0))
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1, 1, d]) @ vt


def random_rotations(count: int, max_deg: float, g: torch.Generator) -> torch.Tensor:
    """(count, 3, 3) rotations about random axes by angles uniform in [0, max_deg]."""
    axis = torch.nn.functional.normalize(torch.randn(count, 3, generator=g), dim=-1)
    angle = torch.rand(count, 1, generator=g) * np.deg2rad(max_deg)
    k = torch.zeros(count, 3, 3)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(1, 2)
    s, c = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    return torch.eye(3) + s * k + (1 - c) * k @ k


class EpisodeStarts:
    """Fresh episode states: the true pose perturbed as far as the stage must correct."""

    def __init__(self, cases: list[Case], median_scale: float, rotation: np.ndarray):
        self.t = torch.tensor(np.stack([c.pose.translation for c in cases]), dtype=torch.float32)
        self.s = torch.tensor([c.pose.scale for c in cases], dtype=torch.float32)[:, None].repeat(1, 3)
        self.r = torch.tensor(np.stack([c.pose.rotation for c in cases]), dtype=torch.float32)
        self.loadings = torch.stack([c.loadings for c in cases])
        self.median_scale = median_scale
        self.mean_rotation = torch.tensor(rotation, dtype=torch.float32)

    def __call__(self, rows: torch.Tensor, stage: str, g: torch.Generator) -> PoseState:
        level, n = STAGES.index(stage), len(rows)
        if level == 0:
            t = self.t[rows] + (2 * torch.rand(n, 3, generator=g) - 1) * PERTURB["translation_mm"]
        else:
            t = self.t[rows] + torch.randn(n, 3, generator=g) * PERTURB["translation_later_mm"]
        if level >= 1:
            s = self.s[rows] * torch.exp((2 * torch.rand(n, 3, generator=g) - 1) * PERTURB["log_scale"])
        else:
            s = torch.full((n, 3), self.median_scale)
        if level >= 2:
            r = random_rotations(n, PERTURB["rotation_deg"], g) @ self.r[rows]
        else:
            r = self.mean_rotation.expand(n, 3, 3).clone()
        loadings = torch.zeros(n, self.loadings.shape[1])
        if level >= 3:
            loadings = torch.randn(n, self.loadings.shape[1], generator=g) * PERTURB["loadings_std"]
        return PoseState(t, s, r, loadings)


def jitter(state: PoseState, stage: str, g: torch.Generator) -> PoseState:
    """Small random move of a corrected state, so later steps see and undo errors too."""
    level, n = STAGES.index(stage), len(state.translation)
    t = state.translation + torch.randn(n, 3, generator=g) * PERTURB["step_translation_mm"]
    s, r = state.scale, state.rotation
    if level >= 1:
        s = s * torch.exp(torch.randn(n, 3, generator=g) * PERTURB["step_log_scale"])
    if level >= 2:
        r = random_rotations(n, PERTURB["step_rotation_deg"], g) @ r
    return PoseState(t, s, r, state.loadings)


@dataclass
class PoseTask:
    """What every stage trains on: the cases, their episode starts and the shape model (on the run's device)."""

    cases: list[Case]
    starts: EpisodeStarts
    median_scale: float
    decoder: torch.nn.Module
    space: ShapeSpace
    canonical: CanonicalSDF
    settings: PoseTrainSettings

    def __post_init__(self):
        self.images = torch.stack([c.image for c in self.cases]).to(self.space.mean.device)  # (N, K, J, I)
        self.grids = torch.stack([c.grid_mm for c in self.cases]).to(self.space.mean.device)  # (N, K, J, I, 3) mm

    def sdf_l1(self, state: PoseState, rows: torch.Tensor, use_decoder: bool, g: torch.Generator) -> torch.Tensor:
        """Mean |predicted - true| SDF (mm) of the cases ``rows`` in ``state`` at ``settings.points`` image points.

        Pose stages: half the points near the true surface, half anywhere in the grid (the
        tabulated mean shape is linear outside its cube, so far points still pull the right
        way). Shape stage: points near the surface only, where the decoder was trained.
        """
        points, num_voxels = self.settings.points, self.grids[0, ..., 0].numel()
        far = 0 if use_decoder else points - points // 2
        picks, truths = [], []
        for row in rows.tolist():
            case = self.cases[row]
            near = case.near[torch.randint(0, len(case.near), (points - far,), generator=g)]
            anywhere = torch.randint(0, num_voxels, (far,), generator=g)
            index = torch.cat([near, anywhere])
            picks.append(index)
            truths.append(case.sdf_mm[index])
        pick = torch.stack(picks).to(self.grids.device)
        points_mm = torch.gather(self.grids[rows].reshape(len(rows), -1, 3), 1, pick[..., None].expand(-1, -1, 3))
        unit = state.to_unit(points_mm)
        pred = self.decoder(unit, self.space.latent(state.loadings)) if use_decoder else self.canonical(unit)
        return (pred * state.mm_per_unit()[:, None] - torch.stack(truths).to(self.grids.device)).abs().mean()


def train_pose(
    sdf_model: str | Path, dataset: str | Path, out: str | Path, settings: PoseTrainSettings, command: str = "",
    progress: bool = True, device: str | None = None,
) -> Path:
    """Train the agent's stages on the SDF model's training images; write a ``dissm`` bundle.

    Episode states and random draws stay on the CPU (reproducible on any device); the
    networks, images and the loss run on ``device`` (default: CUDA when available).
    """
    dataset, out = Path(dataset), Path(out)
    sdf_bundle = load_bundle(sdf_model, kind="sdf")  # not load_model's shared copy: moved to the device
    decoder, space = build_model(sdf_bundle)
    for p in decoder.parameters():
        p.requires_grad_(False)
    manifest = read_manifest(dataset)
    names = sdf_bundle.metadata["training"]["shapes"]
    latents = sdf_bundle.tensors["latents"].float()
    true_loadings = torch.linalg.lstsq(space.basis.T, (latents - space.mean).T).solution.T  # (S, K)
    run = Run(out, settings, device)
    grid = GridSpec.from_dict(settings.grid)
    cases, stats = load_cases(dataset, manifest, names, true_loadings, grid, progress)
    median_scale = float(np.median([c.pose.scale for c in cases]))
    rotation = mean_rotation(np.stack([c.pose.rotation for c in cases]))
    centre_offset = np.median([c.pose.translation - c.grid_mm.reshape(-1, 3).mean(0).numpy() for c in cases], axis=0)
    canonical = build_canonical_sdf(decoder, space.mean, space.basis)
    tensors = {**sdf_bundle.tensors, "canonical_sdf": canonical.grids}
    task = PoseTask(cases, EpisodeStarts(cases, median_scale, rotation), median_scale, decoder.to(run.device),
                    ShapeSpace(space.mean.to(run.device), space.basis.to(run.device), space.explained),
                    CanonicalSDF(canonical.grids.to(run.device), canonical.radius), settings)

    agents: dict[str, dict] = run.resumed["agents"] if run.resumed else {}  # the finished stages
    agent = PoseAgent(space.basis.shape[0]).to(run.device)
    for stage, steps in zip(STAGES, settings.steps):
        if stage not in agents:
            _train_stage(run, task, agent, agents, stage, steps, progress)
        agent.load_state_dict(agents[stage])
        tensors.update({f"agent.{stage}.{k}": v for k, v in agents[stage].items()})

    medians = np.array(stats)
    metadata = {
        **{k: sdf_bundle.metadata[k] for k in ("organ", "units", "normalisation", "config", "pca")},
        "frame": "pose maps the model unit sphere to LPS mm: x = t + R (s * u), anisotropic s",
        "sdf_training": sdf_bundle.metadata["training"],
        "agent": {
            "stages": list(STAGES), "grid": settings.grid, "median_scale_mm": median_scale,
            "mean_rotation": rotation.tolist(), "centre_offset_mm": centre_offset.tolist(),
            "canonical_radius": canonical.radius, "fit_steps": settings.fit_steps, "perturbation": PERTURB,
            "intensity_median_range": [float(medians[:, 0].min()), float(medians[:, 0].max())],
            "intensity_spread_range": [float(medians[:, 1].min()), float(medians[:, 1].max())],
        },
        "training": run.record(command),
    }
    save_bundle(out, "dissm", metadata, tensors)
    return out


def _train_stage(run: Run, task: PoseTask, agent: PoseAgent, agents: dict[str, dict], stage: str, steps: int,
                 progress: bool) -> None:
    """Train ``agent`` through ``stage`` (from the previous stage's weights); add its weights to ``agents``."""
    settings, use_loadings = task.settings, stage == "shape"
    optimiser = torch.optim.Adam(agent.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, steps))
    # Every image keeps its episode state between visits, so the stage's draws come from one
    # generator, checkpointed with the states.
    generator = torch.Generator().manual_seed(settings.seed * 7919 + STAGES.index(stage))
    states = task.starts(torch.arange(len(task.cases)), stage, generator)

    def step(g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        rows = torch.randperm(len(task.cases), generator=g)[: settings.batch]
        state = states.index(rows).to(run.device)
        state_img = render_state(task.canonical, state, task.grids[rows], use_loadings) / 10.0
        new, penalty = apply_correction(state, agent(task.images[rows], state_img), stage, task.median_scale)
        l1 = task.sdf_l1(new, rows, use_loadings, g)
        loss = l1 + settings.lambda_scale * penalty.mean()
        if use_loadings:
            loss = loss + settings.lambda_prior * (new.loadings**2).sum(-1).mean()
        # Inverted episodic training: keep the corrected state, perturbed, or restart the episode.
        moved = jitter(new.detach().to("cpu"), stage, g)
        restart = torch.rand(len(rows), generator=g) < PERTURB["reset_probability"]
        fresh = task.starts(rows, stage, g)
        for name in ("translation", "scale", "rotation", "loadings"):
            merged = torch.where(_expand(restart, getattr(moved, name)), getattr(fresh, name), getattr(moved, name))
            getattr(states, name)[rows] = merged
        return loss, {"l1_mm": l1.item()}

    parts = {"agents": agents, "agent": agent, "optimiser": optimiser, "scheduler": scheduler,
             "states": [states.translation, states.scale, states.rotation, states.loadings], "generator": generator}
    run.train(step, parts, steps, desc=f"train-pose {stage}", progress=progress, log_every=50, generator=generator,
              tag={"stage": stage})
    agents[stage] = copy.deepcopy(agent.state_dict())


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1, *([1] * (like.dim() - 1)))
