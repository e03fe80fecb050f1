"""The template interaction module (ISMM, ReShapeIT): a mask fitted by an implicit template model.

1. The mask's surface (LPS mm) is aligned to the template's surface by rigid CPD with scale
   (pycpd): a similarity LPS mm -> the model's unit sphere.
2. The points that match the template best (the top ``keep_share`` by CPD match probability)
   keep their full weight, the rest ``outlier_weight``: a leak or a cut-off part hardly pulls.
3. The template field stays frozen; the case's codes (and, optionally, the hypernetwork) are
   fitted to the weighted points with the training losses.
4. The fitted field's zero level, mapped back to LPS mm, is the prior surface the fusion uses;
   each of its points maps to the template (``p + dv``): dense correspondences.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from pycpd import RigidRegistration

from ..errors import InputError
from ..geometry.level_set import field_mesh, level_set_mesh
from ..io.frames import index_to_physical
from ..models.template import WEIGHTS, TemplateModel, template_losses
from ..prep.mask_distance import PreparedMask
from ..settings import TemplateMaskSettings
from ..transform import Similarity
from .dals_fit import Adam, FitCancelled

# CPD's uniform outlier component: the expected share of mask surface that matches no template part.
OUTLIER_SHARE = 0.1
CPD_POINTS = 300  # points of each side CPD iterates on (all 800: 1.6x the refinement time, the same fit)


@dataclass
class TemplateFit:
    """A case fitted by a template model: its codes (and deformation network), and its frame."""

    model: TemplateModel  # the shared model, or a copy whose hypernetwork was tuned to the case
    alpha: torch.Tensor  # (A,)
    beta: torch.Tensor  # (B,)
    to_unit: Similarity  # LPS mm -> model unit sphere
    kept: np.ndarray  # (N,) bool: the mask's surface points that matched the template best
    history: list[dict]

    def mesh_lps(self, resolution: int = 64) -> trimesh.Trimesh:
        """The fitted zero level, LPS mm."""
        with torch.no_grad():
            unit = field_mesh(lambda p: self.model(p[None], self.alpha[None], self.beta[None])[0], resolution)
        if len(unit.faces) == 0:
            return unit
        return trimesh.Trimesh(self.to_unit.inverse().apply(np.asarray(unit.vertices)), unit.faces, process=False)

    def template_coordinates(self, points_lps: np.ndarray) -> np.ndarray:
        """(N, 3) LPS mm points -> (N, 3) their template coordinates ``p + dv`` (model unit sphere)."""
        unit = torch.tensor(self.to_unit.apply(np.asarray(points_lps, dtype=np.float64)), dtype=torch.float32)
        return self.model.to_template(unit, self.alpha, self.beta).double().numpy()


def mask_surface(prepared: PreparedMask) -> trimesh.Trimesh:
    """The mask's boundary as a surface (LPS mm): the zero level of its signed distance map."""
    return level_set_mesh(prepared.sdf_mm, 0.0, index_to_physical(prepared.mask))


def align_to_template(points_lps: np.ndarray, template: np.ndarray, source: str) -> tuple[Similarity, np.ndarray]:
    """Rigid CPD with scale of (N, 3) LPS mm points onto (M, 3) template points (unit sphere).

    Returns (the similarity LPS mm -> unit sphere, (N,) each point's CPD match probability mass).
    The points are first centred and scaled to the template's RMS radius, so CPD starts near.
    """
    points_lps, template = np.array(points_lps, dtype=np.float64), np.array(template, dtype=np.float64)  # for pycpd
    centre = points_lps.mean(0)
    spread = ((points_lps - centre) ** 2).sum(1).mean()
    failed = InputError(source, "the mask's surface could not be aligned to the template (CPD failed)")
    if not np.isfinite(spread) or spread <= 1e-12:
        raise failed
    start = np.sqrt((template**2).sum(1).mean() / spread)
    moving = (points_lps - centre) * start
    # CPD's iterations cost N x M: they run on every k-th point of each; every point's match mass
    # comes from one last E-step at the found pose.
    every = max(1, len(moving) // CPD_POINTS), max(1, len(template) // CPD_POINTS)
    registration = RigidRegistration(X=template[::every[1]], Y=moving[::every[0]], w=OUTLIER_SHARE,
                                     max_iterations=150)
    try:
        registration.register()
        registration.X, registration.Y, (registration.N, _), (registration.M, _) = (template, moving, template.shape,
                                                                                    moving.shape)
        registration.TY = registration.transform_point_cloud(moving)
        registration.expectation()
    except (np.linalg.LinAlgError, ValueError, FloatingPointError):
        raise failed from None
    scale, rotation, shift = float(registration.s), np.asarray(registration.R), np.asarray(registration.t)
    if not (np.isfinite(scale) and scale > 0 and np.all(np.isfinite(rotation)) and np.all(np.isfinite(shift))):
        raise failed
    # pycpd: TY = s Y R + t (row vectors); Similarity: y = s x R^T + t.
    total = scale * start
    to_unit = Similarity(total, rotation.T, shift - total * centre @ rotation)
    return to_unit, np.asarray(registration.P1)


def fit_template_to_mask(model: TemplateModel, prepared: PreparedMask, settings: TemplateMaskSettings, source: str,
                         progress: Callable[[float, str], None] | None = None,
                         should_stop: Callable[[], bool] | None = None) -> TemplateFit:
    """Steps 1-3 of the module doc: align, keep the best-matching points, fit the codes."""
    rng = np.random.default_rng(settings.seed)
    surface = mask_surface(prepared)
    if len(surface.faces) == 0:
        raise InputError(source, "the mask has no surface to fit")
    points, faces = trimesh.sample.sample_surface(surface, settings.points, seed=settings.seed)
    normals = surface.face_normals[faces]
    template = model.template_points(settings.points, settings.seed, resolution=64, radius=1.05)
    if template is None:
        raise InputError(source, "the template model has no template surface (untrained model?)")
    to_unit, match = align_to_template(points, template, source)
    kept = match >= np.quantile(match, 1.0 - settings.keep_share)
    trust = torch.tensor(np.where(kept, 1.0, settings.outlier_weight), dtype=torch.float32)[None]
    unit = to_unit.apply(points)
    unit_normals = normals @ to_unit.rotation.T
    surface_t = torch.tensor(np.hstack([unit, unit_normals]), dtype=torch.float32)[None]

    fitted = copy.deepcopy(model) if settings.tune_hypernetwork else model
    # A model trained without a code (an ablation) only knows it at zero: it stays there.
    codes = model.config.codes
    alpha = torch.nn.Parameter(model.alphas.mean(0).clone(), requires_grad=codes in ("both", "alpha"))
    beta = torch.nn.Parameter(model.betas.mean(0).clone(), requires_grad=codes in ("both", "beta"))
    groups = [{"params": [c for c in (alpha, beta) if c.requires_grad], "lr": settings.lr}]
    if settings.tune_hypernetwork:
        hyper = list(fitted.deform.parameters())
        for p in hyper:
            p.requires_grad_(True)
        groups.append({"params": hyper, "lr": settings.hyper_lr})
    optimiser = Adam(groups)
    g = torch.Generator().manual_seed(settings.seed)
    no_known = torch.zeros(1, 0, 4)
    history = []
    for step in range(settings.steps):
        if should_stop is not None and should_stop():
            raise FitCancelled("fit cancelled")
        free = torch.tensor(rng.uniform(-1, 1, (1, settings.free_points, 3)), dtype=torch.float32)
        terms = template_losses(fitted, alpha[None], beta[None], surface_t, no_known, free, g, trust, FIT_TERMS)
        terms["alpha"], terms["beta"] = alpha.pow(2).mean(), beta.pow(2).mean()
        loss = sum(WEIGHTS[k] * terms[k] for k in FIT_TERMS)
        loss.backward()
        optimiser.step()
        history.append({"loss": loss.item(), "sdf": terms["sdf"].item()})
        if progress is not None:
            progress((step + 1) / settings.steps, "template codes")
    for p in fitted.parameters():
        p.requires_grad_(False)
    return TemplateFit(fitted, alpha.detach(), beta.detach(), to_unit, kept, history)


# The terms a new case's codes are fitted with (DIF-Net's embedding loss): the data and the
# field's regularity, without the training-time priors on the deformation.
FIT_TERMS = ("sdf", "normal", "eikonal", "off_surface", "alpha", "beta")
