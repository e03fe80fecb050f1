"""Auto-decoder training of a DeepSDF-style decoder, then PCA of its latents (DISSM shape space).

Each step takes a batch of shapes, draws SDF samples of each (half inside, half
outside), and minimises

    |f(x, z_i) - sdf|  (L1, no clamping)  +  lambda_z * ||z_i||^2  (zero-mean Gaussian prior)

jointly over the decoder weights and the per-shape latents. Checkpoints beside the
output every few hundred steps are picked up by a re-run with the same settings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..models.bundle import save_bundle
from ..models.sdf import SDFConfig, SDFDecoder, ShapeSpace
from ..prep.dataset import select_shapes, split_names
from .common import Run, implicit_metadata, read_manifest
from .settings import SDFTrainSettings


def load_samples(dataset: Path, manifest: dict, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(pos, neg): (S, N, 4) rows x, y, z, sdf per shape (unit sphere), truncated to the smallest N."""
    pos, neg = [], []
    for name in names:
        entry = manifest["shapes"][name]
        if "sdf" not in entry:
            raise InputError(dataset, f"shape {name} has no SDF samples; prepare with --sdf-samples > 0")
        with np.load(dataset / entry["sdf"]) as data:
            pos.append(data["pos"])
            neg.append(data["neg"])
    n = min(min(len(p) for p in pos), min(len(q) for q in neg))
    return torch.tensor(np.stack([p[:n] for p in pos])), torch.tensor(np.stack([q[:n] for q in neg]))


def train_sdf(
    dataset: str | Path, out: str | Path, settings: SDFTrainSettings, command: str = "", progress: bool = True,
    device: str | None = None,
) -> Path:
    """Train and write an ``sdf`` bundle (decoder, training latents, PCA) to ``out``."""
    dataset, out = Path(dataset), Path(out)
    manifest = read_manifest(dataset)
    names, held_out = split_names(select_shapes(manifest, settings.include), settings.holdout_every)
    run = Run(out, settings, device)
    device = run.device
    pos, neg = (t.to(device) for t in load_samples(dataset, manifest, names))

    config = SDFConfig(settings.latent_dim, settings.width, settings.layers, skip_layer=settings.layers // 2,
                       dropout=settings.dropout)
    decoder = SDFDecoder(config).to(device)
    latents = torch.nn.Parameter(0.01 * torch.randn(len(names), settings.latent_dim, device=device))
    optimiser = torch.optim.Adam([{"params": decoder.parameters(), "lr": settings.lr},
                                  {"params": [latents], "lr": settings.latent_lr}])
    # DeepSDF's schedule: halve both rates at fixed fractions of the run.
    scheduler = torch.optim.lr_scheduler.StepLR(optimiser, step_size=max(1, settings.steps // 4), gamma=0.5)
    half = settings.samples // 2

    def step(g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        batch = torch.randperm(len(names), generator=g)[: settings.batch].to(device)
        picks = torch.randint(0, pos.shape[1], (2, half), generator=g).to(device)
        rows = torch.cat([pos[batch][:, picks[0]], neg[batch][:, picks[1]]], dim=1)  # (B, samples, 4)
        pred = decoder(rows[..., :3], latents[batch])
        l1 = (pred - rows[..., 3]).abs().mean()
        return l1 + settings.lambda_z * (latents[batch] ** 2).sum(-1).mean(), {"l1": l1.item()}

    decoder.train()
    parts = {"decoder": decoder, "latents": latents, "optimiser": optimiser, "scheduler": scheduler}
    run.train(step, parts, settings.steps, desc="train-sdf", progress=progress, log_every=100, save_every=500)

    space = ShapeSpace.fit(latents.detach().cpu(), settings.pca_variance)
    metadata = {
        **implicit_metadata(settings.organ, manifest, names, config.to_dict()),
        "pca": {"components": int(space.basis.shape[0]), "explained_variance": space.explained,
                "requested_variance": settings.pca_variance},
        "training": {
            **run.record(command),
            "shapes": names,
            "held_out": held_out,
            "final_l1": run.history[-1]["l1"] if run.history else None,
        },
    }
    tensors = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    tensors.update(latents=latents.detach(), pca_mean=space.mean, pca_basis=space.basis)
    save_bundle(out, "sdf", metadata, tensors)
    return out
