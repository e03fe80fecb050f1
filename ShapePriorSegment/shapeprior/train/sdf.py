"""Auto-decoder training of a DeepSDF-style decoder, then PCA of its latents (DISSM shape space).

Each step takes a batch of shapes, draws SDF samples of each (half inside, half
outside), and minimises

    |f(x, z_i) - sdf|  (L1, no clamping)  +  lambda_z * ||z_i||^2  (zero-mean Gaussian prior)

jointly over the decoder weights and the per-shape latents. Checkpoints beside the
output every few hundred steps are picked up by a re-run with the same settings.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..errors import InputError
from ..models.bundle import save_bundle
from ..models.sdf import SDFConfig, SDFDecoder, ShapeSpace
from ..prep.dataset import select_shapes, split_names
from .common import load_checkpoint, read_manifest, save_checkpoint, size_metadata


@dataclass
class SDFTrainSettings:
    include: list[str] = field(default_factory=lambda: ["*"])
    holdout_every: int = 5  # every n-th shape (sorted names) is held out for benchmarks
    organ: str = "organ"
    latent_dim: int = 64
    width: int = 256
    layers: int = 6
    dropout: float = 0.2
    steps: int = 4000
    batch: int = 16
    samples: int = 1024
    lr: float = 5e-4
    latent_lr: float = 1e-3
    lambda_z: float = 1e-4
    pca_variance: float = 0.9
    seed: int = 0


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
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(settings.seed)
    pos, neg = (t.to(device) for t in load_samples(dataset, manifest, names))

    config = SDFConfig(settings.latent_dim, settings.width, settings.layers, skip_layer=settings.layers // 2,
                       dropout=settings.dropout)
    decoder = SDFDecoder(config).to(device)
    latents = torch.nn.Parameter(0.01 * torch.randn(len(names), settings.latent_dim, device=device))
    optimiser = torch.optim.Adam([{"params": decoder.parameters(), "lr": settings.lr},
                                  {"params": [latents], "lr": settings.latent_lr}])
    # DeepSDF's schedule: halve both rates at fixed fractions of the run.
    scheduler = torch.optim.lr_scheduler.StepLR(optimiser, step_size=max(1, settings.steps // 4), gamma=0.5)

    start, history = 0, []
    state = load_checkpoint(out, asdict(settings), device)
    if state is not None:
        decoder.load_state_dict(state["decoder"])
        latents.data.copy_(state["latents"])
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        start, history = int(state["step"]), list(state["history"])

    def checkpoint(step: int) -> None:
        save_checkpoint(out, {"settings": asdict(settings), "step": step, "history": history,
                              "decoder": decoder.state_dict(), "latents": latents.detach(),
                              "optimiser": optimiser.state_dict(), "scheduler": scheduler.state_dict()})

    decoder.train()
    window, window_loss = 100, 0.0
    half = settings.samples // 2
    bar = tqdm(total=settings.steps, initial=start, desc="train-sdf", disable=not progress, dynamic_ncols=True)
    began = time.perf_counter()
    for step in range(start, settings.steps):
        g = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)  # resumes identically
        batch = torch.randperm(len(names), generator=g)[: settings.batch].to(device)
        picks = torch.randint(0, pos.shape[1], (2, half), generator=g).to(device)
        rows = torch.cat([pos[batch][:, picks[0]], neg[batch][:, picks[1]]], dim=1)  # (B, samples, 4)
        pred = decoder(rows[..., :3], latents[batch])
        l1 = (pred - rows[..., 3]).abs().mean()
        loss = l1 + settings.lambda_z * (latents[batch] ** 2).sum(-1).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        window_loss += l1.item()
        if (step + 1) % window == 0:
            history.append({"step": step + 1, "l1": window_loss / window})
            window_loss = 0.0
            if (step + 1) % (5 * window) == 0:
                checkpoint(step + 1)
        bar.set_postfix(l1=f"{l1.item():.2e}", refresh=False)
        bar.update(1)
    bar.close()
    checkpoint(settings.steps)

    space = ShapeSpace.fit(latents.detach().cpu(), settings.pca_variance)
    metadata = {
        "organ": settings.organ,
        "units": "mm",
        "frame": "unit sphere of the anchor-aligned training shapes; SDF in unit-sphere units, negative inside",
        "normalisation": size_metadata(manifest, names),
        "config": config.to_dict(),
        "pca": {"components": int(space.basis.shape[0]), "explained_variance": space.explained,
                "requested_variance": settings.pca_variance},
        "training": {
            **asdict(settings),
            "shapes": names,
            "held_out": held_out,
            "final_l1": history[-1]["l1"] if history else None,
            "history": history,
            "seconds_this_run": time.perf_counter() - began,
            "device": str(device),
            "command": command or " ".join(sys.argv),
        },
    }
    tensors = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    tensors.update(latents=latents.detach(), pca_mean=space.mean, pca_basis=space.basis)
    save_bundle(out, "sdf", metadata, tensors)
    return out
