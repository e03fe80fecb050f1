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
import sys
import time
from dataclasses import asdict, dataclass, field
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
from ..models.sdf import ShapeSpace, decoder_from_bundle
from ..prep.crops import GridSpec, agent_input, intensity_stats
from ..prep.sdf import signed_distance
from ..transform import Similarity
from .common import load_checkpoint, read_manifest, save_checkpoint

# Episode starts: uniform translation offsets (mm) for the translation stage and normal
# ones later, uniform log-scale offsets, rotation angles up to the given degrees.
PERTURB = {"translation_mm": 10.0, "translation_later_mm": 1.5, "log_scale": 0.2, "rotation_deg": 20.0,
           "loadings_std": 0.5, "step_translation_mm": 1.0, "step_log_scale": 0.03, "step_rotation_deg": 3.0,
           "reset_probability": 0.25}


@dataclass
class PoseTrainSettings:
    steps: list[int] = field(default_factory=lambda: [600, 400, 400, 600])  # per stage
    batch: int = 8
    points: int = 2048
    lr: float = 1e-3
    lambda_prior: float = 0.01
    lambda_scale: float = 10.0
    grid: GridSpec = field(default_factory=GridSpec)
    fit_steps: int = 6  # agent steps per stage when fitting
    seed: int = 0


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


def train_pose(
    sdf_model: str | Path, dataset: str | Path, out: str | Path, settings: PoseTrainSettings, command: str = "",
    progress: bool = True, device: str | None = None,
) -> Path:
    """Train the agent's stages on the SDF model's training images; write a ``dissm`` bundle.

    Episode states and random draws stay on the CPU (reproducible on any device); the
    networks, images and the loss run on ``device`` (default: CUDA when available).
    """
    dataset, out = Path(dataset), Path(out)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    sdf_bundle = load_bundle(sdf_model, kind="sdf")
    decoder, space = decoder_from_bundle(sdf_bundle)
    for p in decoder.parameters():
        p.requires_grad_(False)
    manifest = read_manifest(dataset)
    names = sdf_bundle.metadata["training"]["shapes"]
    latents = sdf_bundle.tensors["latents"].float()
    true_loadings = torch.linalg.lstsq(space.basis.T, (latents - space.mean).T).solution.T  # (S, K)
    torch.manual_seed(settings.seed)
    cases, stats = load_cases(dataset, manifest, names, true_loadings, settings.grid, progress)
    median_scale = float(np.median([c.pose.scale for c in cases]))
    rotation = mean_rotation(np.stack([c.pose.rotation for c in cases]))
    centre_offset = np.median([c.pose.translation - c.grid_mm.reshape(-1, 3).mean(0).numpy() for c in cases], axis=0)
    canonical = build_canonical_sdf(decoder, space.mean, space.basis)
    starts = EpisodeStarts(cases, median_scale, rotation)
    images = torch.stack([c.image for c in cases]).to(device)
    grids = torch.stack([c.grid_mm for c in cases]).to(device)
    decoder.to(device)
    space = ShapeSpace(space.mean.to(device), space.basis.to(device), space.explained)
    canonical_dev = CanonicalSDF(canonical.grids.to(device), canonical.radius)
    num_loadings = space.basis.shape[0]

    agents: dict[str, dict] = {}
    history: list[dict] = []
    resume = load_checkpoint(out, _settings_dict(settings), device)
    if resume is not None:
        agents, history = resume["agents"], list(resume["history"])

    began = time.perf_counter()
    agent = PoseAgent(num_loadings).to(device)
    for stage, steps in zip(STAGES, settings.steps):
        if stage in agents:
            agent.load_state_dict(agents[stage])
            continue
        optimiser = torch.optim.Adam(agent.parameters(), lr=settings.lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, max(1, steps))
        start = 0
        g = torch.Generator().manual_seed(settings.seed * 7919 + STAGES.index(stage))
        states = starts(torch.arange(len(cases)), stage, g)
        if resume is not None and resume.get("stage") == stage:
            agent.load_state_dict(resume["agent"])
            optimiser.load_state_dict(resume["optimiser"])
            scheduler.load_state_dict(resume["scheduler"])
            states = PoseState(*(t.cpu() for t in resume["states"]))
            start = int(resume["step"])
            g.set_state(resume["generator"])
        bar = tqdm(total=steps, initial=start, desc=f"train-pose {stage}", disable=not progress, dynamic_ncols=True)
        window = []
        for step in range(start, steps):
            rows = torch.randperm(len(cases), generator=g)[: settings.batch]
            state = states.index(rows).to(device)
            use_loadings = stage == "shape"
            state_img = render_state(canonical_dev, state, grids[rows], use_loadings) / 10.0
            output = agent(images[rows], state_img)
            new, penalty = apply_correction(state, output, stage, median_scale)
            l1 = _sdf_l1(new, rows, cases, grids, decoder, space, canonical_dev, use_loadings, settings.points, g)
            loss = l1 + settings.lambda_scale * penalty.mean()
            if use_loadings:
                loss = loss + settings.lambda_prior * (new.loadings**2).sum(-1).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            # Inverted episodic training: keep the corrected state, perturbed, or restart the episode.
            moved = jitter(new.detach().to("cpu"), stage, g)
            restart = torch.rand(len(rows), generator=g) < PERTURB["reset_probability"]
            fresh = starts(rows, stage, g)
            for name in ("translation", "scale", "rotation", "loadings"):
                merged = torch.where(_expand(restart, getattr(moved, name)), getattr(fresh, name), getattr(moved, name))
                getattr(states, name)[rows] = merged
            window.append(l1.item())
            if (step + 1) % 50 == 0:
                history.append({"stage": stage, "step": step + 1, "l1_mm": float(np.mean(window))})
                window = []
                _save(out, settings, agents, history, stage, step + 1, agent, optimiser, scheduler, states, g)
            bar.set_postfix(l1_mm=f"{l1.item():.2f}", refresh=False)
            bar.update(1)
        bar.close()
        agents[stage] = copy.deepcopy(agent.state_dict())
        _save(out, settings, agents, history, None, 0, agent, optimiser, scheduler, states, g)

    medians = np.array(stats)
    metadata = {
        **{k: sdf_bundle.metadata[k] for k in ("organ", "units", "normalisation", "config", "pca")},
        "frame": "pose maps the model unit sphere to LPS mm: x = t + R (s * u), anisotropic s",
        "sdf_training": sdf_bundle.metadata["training"],
        "agent": {
            "stages": list(STAGES), "grid": settings.grid.to_dict(), "median_scale_mm": median_scale,
            "mean_rotation": rotation.tolist(), "centre_offset_mm": centre_offset.tolist(),
            "canonical_radius": canonical.radius, "fit_steps": settings.fit_steps, "perturbation": PERTURB,
            "intensity_median_range": [float(medians[:, 0].min()), float(medians[:, 0].max())],
            "intensity_spread_range": [float(medians[:, 1].min()), float(medians[:, 1].max())],
        },
        "training": {**_settings_dict(settings), "history": history, "seconds_this_run": time.perf_counter() - began,
                     "command": command or " ".join(sys.argv)},
    }
    tensors = {k: v for k, v in sdf_bundle.tensors.items()}
    tensors["canonical_sdf"] = canonical.grids
    for stage, state in agents.items():
        tensors.update({f"agent.{stage}.{k}": v for k, v in state.items()})
    save_bundle(out, "dissm", metadata, tensors)
    return out


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1, *([1] * (like.dim() - 1)))


def _sdf_l1(state, rows, cases, grids, decoder, space, canonical, use_decoder, points, g) -> torch.Tensor:
    """Mean |predicted - true| SDF (mm) at image points.

    Pose stages: half the points near the true surface, half anywhere in the grid (the
    tabulated mean shape is linear outside its cube, so far points still pull the right
    way). Shape stage: points near the surface only, where the decoder was trained.
    """
    num_voxels = grids[0, ..., 0].numel()
    far = 0 if use_decoder else points - points // 2
    picks, truths = [], []
    for row in rows.tolist():
        case = cases[row]
        near = case.near[torch.randint(0, len(case.near), (points - far,), generator=g)]
        anywhere = torch.randint(0, num_voxels, (far,), generator=g)
        index = torch.cat([near, anywhere])
        picks.append(index)
        truths.append(case.sdf_mm[index])
    pick = torch.stack(picks).to(grids.device)
    points_mm = torch.gather(grids[rows].reshape(len(rows), -1, 3), 1, pick[..., None].expand(-1, -1, 3))
    unit = state.to_unit(points_mm)
    if use_decoder:
        pred = decoder(unit, space.latent(state.loadings))
    else:
        pred = canonical(unit)
    return (pred * state.mm_per_unit()[:, None] - torch.stack(truths).to(grids.device)).abs().mean()


def _settings_dict(settings: PoseTrainSettings) -> dict:
    d = asdict(settings)
    d["grid"] = settings.grid.to_dict()
    return d


def _save(out, settings, agents, history, stage, step, agent, optimiser, scheduler, states, g) -> None:
    state = {"settings": _settings_dict(settings), "agents": agents, "history": history, "stage": stage,
             "step": step, "agent": agent.state_dict(), "optimiser": optimiser.state_dict(),
             "scheduler": scheduler.state_dict(),
             "states": [states.translation, states.scale, states.rotation, states.loadings],
             "generator": g.get_state()}
    save_checkpoint(out, state)
