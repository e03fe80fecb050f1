"""Training of DISSM's narrow-band refinement on the agent's own fits of the training images.

Each training image is fitted by the trained agent (all stages); the fitted SDF, and
``copies`` more from slightly perturbed final states, are paired with the true SDF
on the 1 mm fine grid. The refiner learns the correction in the band around the fit
(``models.refiner``); it is added to a copy of the model bundle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..fit.image_fit import run_agent, shape_sdf, state_from_record
from ..io import read_image, read_mesh
from ..models.bundle import load_bundle, save_bundle
from ..models.dissm import DISSMModel
from ..models.pose_agent import PoseState
from ..models.refiner import (
    BAND_MM,
    HEAVISIDE_MM,
    build_refiner,
    refine_sdf,
    refinement_loss,
)
from ..models.registry import build_model
from ..prep.crops import FINE_GRID, agent_input
from ..prep.sdf import signed_distance
from .common import Run, read_manifest
from .settings import RefineTrainSettings


def perturbed(state: PoseState, g: torch.Generator) -> PoseState:
    """A nearby fit: translation +-1.5 mm, scale +-6 %, loadings +-0.6 (standard deviations).

    The agent fits its own training images better than new ones; these perturbations
    show the refiner errors of the size it meets on held-out images.
    """
    return PoseState(state.translation + 1.5 * torch.randn(1, 3, generator=g),
                     state.scale * torch.exp(0.06 * torch.randn(1, 3, generator=g)), state.rotation,
                     state.loadings + 0.6 * torch.randn(state.loadings.shape, generator=g))


def fitted_examples(model: DISSMModel, dataset: Path, manifest: dict, names: list[str], copies: int, seed: int,
                    progress: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images (N, K, J, I), fitted SDFs (M, K, J, I), true SDFs (N, K, J, I), image index of each fit (M,))."""
    g = torch.Generator().manual_seed(seed)
    images, fits, truths, owner = [], [], [], []
    for index, name in enumerate(tqdm(names, desc="fit training images", disable=not progress, dynamic_ncols=True)):
        entry = manifest["shapes"][name]
        image = read_image(entry["image"])
        volume, grid_mm, _ = agent_input(image, FINE_GRID)
        surface = read_mesh(dataset / entry["surface"])
        truths.append(signed_distance(surface, grid_mm.reshape(-1, 3).astype(np.float64)).reshape(volume.shape))
        images.append(volume)
        state = state_from_record(run_agent(model, image)[-1])
        grid = torch.tensor(grid_mm)
        for s in [state] + [perturbed(state, g) for _ in range(copies)]:
            fits.append(shape_sdf(model, s, grid).numpy())
            owner.append(index)
    as_tensor = lambda arrays: torch.tensor(np.stack(arrays), dtype=torch.float32)  # noqa: E731
    return as_tensor(images), as_tensor(fits), as_tensor(truths), torch.tensor(owner)


def train_refiner(model_path: str | Path, dataset: str | Path, out: str | Path, settings: RefineTrainSettings,
                  command: str = "", progress: bool = True, device: str | None = None) -> Path:
    """Add a trained narrow-band refiner to the ``dissm`` model at ``model_path``; write it to ``out``.

    The agent's fits of the training images run on the CPU; the refiner trains on ``device``
    (default: CUDA when available).
    """
    dataset, out = Path(dataset), Path(out)
    bundle = load_bundle(model_path, kind="dissm")  # not load_model's shared copy: training changes it
    model = build_model(bundle)
    manifest = read_manifest(dataset)
    names = bundle.metadata["sdf_training"]["shapes"]
    run = Run(out, settings, device)
    net = build_refiner().to(run.device)
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, settings.steps)
    if run.start() < settings.steps:  # fitting the training images is the slow part: only when steps are left
        examples = fitted_examples(model, dataset, manifest, names, settings.copies, settings.seed, progress)
        images, fits, truths, owner = (t.to(run.device) for t in examples)

    def step(g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        rows = torch.randperm(len(fits), generator=g)[: settings.batch].to(run.device)
        refined = refine_sdf(net, images[owner[rows]], fits[rows])
        loss = refinement_loss(refined, fits[rows], truths[owner[rows]])
        return loss, {"loss": loss.item()}

    net.train()
    parts = {"net": net, "optimiser": optimiser, "scheduler": scheduler}
    run.train(step, parts, settings.steps, desc="train-refine", progress=progress, log_every=50)
    metadata = {**bundle.metadata, "refine": {
        **run.record(command), "band_mm": BAND_MM, "heaviside_mm": HEAVISIDE_MM, "grid": FINE_GRID.to_dict()}}
    tensors = {k: v for k, v in bundle.tensors.items() if not k.startswith("refiner.")}
    tensors.update({f"refiner.{k}": v for k, v in net.state_dict().items()})
    # The agents and the tabulated shape are stored in float16: the file halves (about 14 MB);
    # the benchmark is measured on the file as written.
    save_bundle(out, "dissm", metadata, tensors, half_precision=("agent.", "canonical_sdf"))
    return out
