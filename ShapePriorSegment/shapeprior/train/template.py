"""Auto-decoder training of an implicit template with a deformation field (ISMM, ReShapeIT).

Each step takes a batch of shapes, each with points on its surface (and their normals),
points with a known signed distance, and uniform points of the unit cube, and minimises
the papers' losses at their relative weights (:data:`WEIGHTS`) jointly over the template
field, the hypernetwork and every shape's codes (alpha, beta). ReShapeIT's valid-template
term gives the template codes of its own that must leave the template's surface in place,
so the template stays a shape of the family (no spurious parts).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import trimesh

from ..errors import InputError
from ..fit.correspondence import vote_label_grid
from ..io import read_mesh
from ..models.bundle import save_bundle
from ..models.template import WEIGHTS, TemplateConfig, TemplateModel, template_losses
from ..prep.dataset import select_shapes, split_names
from ..transform import Similarity
from .common import Run, implicit_metadata, read_manifest
from .sdf import load_samples
from .settings import TemplateTrainSettings

SURFACE_POOL = 8192  # surface points with normals kept per training shape
TEMPLATE_GRID = 48  # the template surface for the valid-template term: marching cubes at this resolution
TEMPLATE_POINTS = 4096  # points kept on it


def surface_pool(mesh: trimesh.Trimesh, count: int, seed: int) -> torch.Tensor:
    """(count, 6) points on ``mesh`` (area-uniform) and their unit outward normals."""
    points, faces = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return torch.tensor(np.hstack([points, mesh.face_normals[faces]]), dtype=torch.float32)


def _codes(count: int, dim: int, used: bool, device: torch.device) -> torch.Tensor:
    """Codes N(0, 0.01^2), or zeros held fixed for an ablation without them."""
    if not used:
        return torch.zeros(count, dim, device=device)
    return torch.nn.Parameter((0.01 * torch.randn(count, dim)).to(device))  # drawn on the CPU: the same on any device


def train_template(dataset: str | Path, out: str | Path, settings: TemplateTrainSettings, command: str = "",
                   progress: bool = True, device: str | None = None) -> Path:
    """Train and write a ``template`` bundle to ``out``."""
    dataset, out = Path(dataset), Path(out)
    manifest = read_manifest(dataset)
    names, held_out = split_names(select_shapes(manifest, settings.include), settings.holdout_every)
    regions = parse_subregions(settings.subregions, dataset) if settings.subregions else {}  # bad input fails first
    if regions:
        check_label_sources(manifest, names, dataset)
    if len(names) < 2:
        raise InputError(dataset, f"{len(names)} training shapes; a template needs at least 2")
    run = Run(out, settings, device)
    device = run.device
    pos, neg = (t.to(device) for t in load_samples(dataset, manifest, names))
    surfaces = torch.stack([surface_pool(read_mesh(dataset / manifest["shapes"][n]["unit"]), SURFACE_POOL,
                                         settings.seed + i) for i, n in enumerate(names)]).to(device)
    config = TemplateConfig(settings.alpha_dim, settings.beta_dim, settings.template_width, settings.template_layers,
                            settings.deform_width, settings.deform_layers, settings.hyper_width, codes=settings.codes)
    model = TemplateModel(config).to(device)
    alphas = _codes(len(names), settings.alpha_dim, settings.codes in ("both", "alpha"), device)
    betas = _codes(len(names), settings.beta_dim, settings.codes in ("both", "beta"), device)
    own = [torch.nn.Parameter(_codes(1, dim, settings.valid_template, device)[0]) for dim in (settings.alpha_dim,
                                                                                             settings.beta_dim)]
    codes = [c for c in (alphas, betas) if c.requires_grad] + (own if settings.valid_template else [])
    groups = [{"params": model.parameters(), "lr": settings.lr}] + ([{"params": codes, "lr": settings.code_lr}]
                                                                     if codes else [])
    optimiser = torch.optim.Adam(groups)
    scheduler = torch.optim.lr_scheduler.StepLR(optimiser, step_size=max(1, settings.steps // 4), gamma=0.5)
    # The template surface's points for the valid-template term, re-extracted every few steps; in
    # the checkpoint with the step count, so a resumed run repeats an uninterrupted one.
    on_template = torch.zeros(TEMPLATE_POINTS, 3, device=device)
    found, count = torch.zeros((), dtype=torch.bool), torch.zeros((), dtype=torch.long)
    half = settings.sdf_points // 2

    def step(g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        batch = torch.randperm(len(names), generator=g)[: settings.batch].to(device)
        b = len(batch)
        surface = surfaces[batch[:, None], torch.randint(0, SURFACE_POOL, (b, settings.surface_points), generator=g).to(device)]
        picks = torch.randint(0, pos.shape[1], (2, half), generator=g).to(device)
        known = torch.cat([pos[batch][:, picks[0]], neg[batch][:, picks[1]]], dim=1)
        free = (torch.rand(b, settings.free_points, 3, generator=g) * 2 - 1).to(device)
        terms = template_losses(model, alphas[batch], betas[batch], surface, known, free, g)
        terms["alpha"] = alphas[batch].pow(2).mean()
        terms["beta"] = betas[batch].pow(2).mean()
        if settings.valid_template:
            if count % settings.template_every == 0:
                seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
                points = model.template_points(TEMPLATE_POINTS, seed, TEMPLATE_GRID, radius=1.0)
                found.fill_(points is not None)
                if points is not None:
                    on_template.copy_(torch.from_numpy(points))
            terms["valid_template"] = torch.zeros((), device=device)  # logged as 0 until the template has a surface
            if found:
                points = on_template[torch.randint(0, TEMPLATE_POINTS, (settings.surface_points,), generator=g).to(device)]
                moved, correction = model.deformation(points[None], own[0][None], own[1][None])
                terms["valid_template"] = moved.pow(2).sum(-1).mean() + correction.pow(2).mean()
            terms["alpha"] = terms["alpha"] + own[0].pow(2).mean()
            terms["beta"] = terms["beta"] + own[1].pow(2).mean()
        count.add_(1)
        loss = sum(WEIGHTS[k] * v for k, v in terms.items())
        return loss, {"sdf": terms["sdf"].item(), **{k: v.item() for k, v in terms.items() if k != "sdf"}}

    model.train()
    parts = {"model": model, "alphas": alphas, "betas": betas, "template_codes": own, "optimiser": optimiser,
             "scheduler": scheduler, "template_points": [on_template, found, count]}
    run.train(step, parts, settings.steps, desc="train-template", progress=progress, log_every=50, save_every=250)

    model.alphas, model.betas = alphas.detach().clone(), betas.detach().clone()
    model.template_alpha, model.template_beta = own[0].detach().clone(), own[1].detach().clone()
    metadata = {
        **implicit_metadata(settings.organ, manifest, names, config.to_dict()),
        "loss_weights": WEIGHTS,
        "training": {**run.record(command), "shapes": names, "held_out": held_out,
                     "final": run.history[-1] if run.history else None},
    }
    tensors = model.bundle_tensors()
    if regions:
        tensors["labels.grid"] = torch.tensor(subregion_grid(model.cpu(), manifest, names, regions, settings.seed))
        metadata["subregions"] = {str(k): v for k, v in regions.items()}
    save_bundle(out, "template", metadata, tensors)
    return out


def parse_subregions(text: str, source: Path) -> dict[int, str]:
    """"1:anterior,2:posterior" -> {1: "anterior", 2: "posterior"}."""
    regions = {}
    for item in text.split(","):
        value, _, name = item.partition(":")
        if not value.strip().isdigit() or not name.strip() or not 1 <= int(value) <= 255:
            raise InputError(source, f"--subregions: expected LABEL:NAME pairs such as 1:anterior,2:posterior, "
                                     f"got {item!r}")
        regions[int(value)] = name.strip()
    return regions


def check_label_sources(manifest: dict, names: list[str], dataset: Path) -> None:
    """Sub-regions are voted from the source masks' labels: each training shape needs one, readable."""
    for name in names:
        entry = manifest["shapes"][name]
        if entry.get("kind") != "mask" or not Path(entry["source"]).is_file():
            raise InputError(dataset, f"--subregions needs the labelled source masks; shape {name} comes from "
                                      f"{entry['source']} ({entry.get('kind', 'unknown kind')}, "
                                      f"{'found' if Path(entry['source']).is_file() else 'missing'})")


def subregion_grid(model: TemplateModel, manifest: dict, names: list[str], regions: dict[int, str],
                   seed: int) -> np.ndarray:
    """The template's label grid, voted by the training shapes' source masks (labels not in
    ``regions`` count as background)."""
    cases = []
    for i, name in enumerate(names):
        entry = manifest["shapes"][name]
        labels = sitk.ReadImage(entry["source"])
        array = sitk.GetArrayFromImage(labels)
        kept = sitk.GetImageFromArray(np.where(np.isin(array, list(regions)), array, 0).astype(np.uint8))
        kept.CopyInformation(labels)
        to_unit = Similarity.from_dict(entry["to_unit"])

        def to_template(points: np.ndarray, i=i, to_unit=to_unit) -> np.ndarray:
            unit = torch.tensor(to_unit.apply(points), dtype=torch.float32)
            return model.to_template(unit, model.alphas[i], model.betas[i]).double().numpy()

        cases.append((to_template, kept))
    return vote_label_grid(cases, max(regions), seed=seed)
