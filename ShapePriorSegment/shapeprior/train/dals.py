"""Auto-decoder training of a DALS decoder on a prepared dataset.

One latent per training shape is learned jointly with the decoder weights. Each
step decodes a randomly rotated icosphere for a batch of shapes and minimises

    Chamfer(points sampled on the decoded surface, points on the true surface)
    + lambda_reg * triangle-quality loss + lambda_normal * normal-consistency loss
    + lambda_n * ||z||^2

Training shapes can be augmented with smooth random deformations (each copy gets
its own latent). A checkpoint beside the output is written every few hundred steps
and picked up again by a re-run with the same settings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import trimesh

from ..geometry import (
    chamfer_distance,
    face_pairs,
    icosphere,
    normal_consistency_loss,
    quality_loss,
    sample_surface,
)
from ..io import read_mesh
from ..models.bundle import save_bundle
from ..models.dals import DALSConfig, DALSDecoder, bundle_tensors
from ..prep.dataset import select_shapes
from .common import Run, read_manifest, size_metadata
from .settings import DALSTrainSettings


def smooth_deformation(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random smooth deformation of (N, 3) unit-sphere points: anisotropic scaling
    (+-5%) plus four Gaussian bumps (width 0.5, amplitude ~0.04)."""
    scale = 1 + rng.normal(0, 0.05, size=3)
    centres = rng.uniform(-0.7, 0.7, size=(4, 3))
    amplitudes = rng.normal(0, 0.04, size=(4, 3))
    weights = np.exp(-((points[:, None, :] - centres[None]) ** 2).sum(-1) / (2 * 0.5**2))
    return points * scale + weights @ amplitudes


def point_pools(dataset: Path, manifest: dict, names: list[str], settings: DALSTrainSettings) -> torch.Tensor:
    """(N_instances, 8192, 3) surface points: the shapes, then their deformed copies."""
    rng = np.random.default_rng(settings.seed)
    pools = []
    for name in names:
        mesh = read_mesh(dataset / manifest["shapes"][name]["unit"])
        pools.append(np.asarray(trimesh.sample.sample_surface(mesh, 8192, seed=int(rng.integers(2**31)))[0]))
    copies = [smooth_deformation(p, rng) for _ in range(settings.augment) for p in pools]
    return torch.tensor(np.stack(pools + copies), dtype=torch.float32)


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    """A uniformly random proper rotation (3, 3) from the QR of a Gaussian matrix."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def train_dals(dataset: str | Path, out: str | Path, settings: DALSTrainSettings, command: str = "",
               progress: bool = True, device: str | None = None) -> Path:
    """Train and write a ``dals`` bundle to ``out`` (checkpoint: ``out`` + ``.ckpt``)."""
    dataset, out = Path(dataset), Path(out)
    manifest = read_manifest(dataset)
    names = select_shapes(manifest, settings.include)
    run = Run(out, settings, device)
    device = run.device

    pools = point_pools(dataset, manifest, names, settings).to(device)
    config = DALSConfig(settings.latent_dim, tuple(settings.hidden))
    decoder = DALSDecoder(config).to(device)
    latents = torch.nn.Parameter(0.01 * torch.randn(len(pools), settings.latent_dim, device=device))
    optimiser = torch.optim.Adam([{"params": decoder.parameters()}, {"params": [latents]}], lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, factor=0.5, patience=4, min_lr=1e-5)
    template, faces = icosphere(settings.level, device=device)
    pairs = face_pairs(faces)

    def step(g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        batch = torch.randperm(len(pools), generator=g)[: settings.batch].to(device)
        rotation = random_rotation(g).to(device)
        picks = torch.randint(0, pools.shape[1], (settings.points,), generator=g).to(device)
        target = pools[batch][:, picks]
        verts = decoder(template @ rotation.T, latents[batch])
        samples = sample_surface(verts, faces, settings.points, generator=g if device.type == "cpu" else None)
        chamfer = chamfer_distance(samples, target).mean()
        quality = quality_loss(verts, faces).mean()
        loss = chamfer + settings.lambda_reg * quality + settings.lambda_n * (latents[batch] ** 2).sum(-1).mean()
        if settings.lambda_normal:
            loss = loss + settings.lambda_normal * normal_consistency_loss(verts, faces, pairs).mean()
        return loss, {"chamfer": chamfer.item(), "quality_loss": quality.item()}

    parts = {"decoder": decoder, "latents": latents, "optimiser": optimiser, "scheduler": scheduler}
    run.train(step, parts, settings.steps, desc="train-dals", progress=progress, log_every=250)

    metadata = {
        "organ": settings.organ,
        "units": "mm",
        "frame": "unit sphere of the anchor-aligned training shapes; files and fitting inputs are LPS mm",
        "normalisation": size_metadata(manifest, names),
        "config": config.to_dict(),
        "training": {
            **run.record(command),
            "shapes": names,
            "instances": len(pools),
            "final_chamfer": run.history[-1]["chamfer"] if run.history else None,
        },
    }
    save_bundle(out, "dals", metadata, bundle_tensors(decoder, latents[: len(names)]))
    return out
