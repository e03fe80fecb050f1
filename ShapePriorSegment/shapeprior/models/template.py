"""Implicit template with a deformation field (DIF-Net; ISMM and ReShapeIT for medical shapes):

    SDF(p; alpha, beta) = T(p + dv) + dd,    (dv, dd) = D([p, alpha]; weights = H(beta))

``T`` is one signed-distance field shared by every shape (the template), ``D`` a field that moves
each point of a shape onto the template (dv) and corrects what moving cannot (dd), and ``H`` a
hypernetwork that makes ``D``'s weights from the shape's code ``beta``; ``alpha`` is a second code
fed to ``D`` with the point. ``T`` and ``D`` are SIRENs (sine activations, Sitzmann et al. 2020).
Points are in the model's unit sphere (the anchor-aligned training frame), distances in its
units, negative inside; ``p + dv`` are the point's template coordinates: dense correspondences.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from torch import nn

from ..geometry.level_set import field_mesh
from .bundle import ModelBundle

# Relative loss weights of ISMM / ReShapeIT (after DIF-Net).
WEIGHTS = {"sdf": 3e3, "normal": 1e2, "eikonal": 5e1, "off_surface": 5e2, "template_normal": 1e2, "smooth": 5.0,
           "correction": 1e2, "alpha": 1e5, "beta": 1e6, "valid_template": 1e2}
SMOOTH_STEP = 0.01  # finite-difference step (unit sphere) of the deformation's smoothness term


@dataclass
class TemplateConfig:
    alpha_dim: int = 32
    beta_dim: int = 32
    template_width: int = 128
    template_layers: int = 3  # hidden layers
    deform_width: int = 64
    deform_layers: int = 3
    hyper_width: int = 64
    omega: float = 30.0  # SIREN's frequency factor
    codes: str = "both"  # the codes a shape has: both, alpha, beta or none (ablations); the others stay zero

    def to_dict(self) -> dict:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, d: dict) -> TemplateConfig:
        defaults = cls()
        return cls(**{k: type(getattr(defaults, k))(v) for k, v in d.items() if hasattr(defaults, k)})


def siren_shapes(inputs: int, width: int, layers: int, outputs: int) -> list[tuple[int, int]]:
    """(fan_out, fan_in) of each linear layer of a SIREN with ``layers`` hidden layers."""
    return [(width, inputs)] + [(width, width)] * (layers - 1) + [(outputs, width)]


def siren_bound(index: int, fan_in: int, omega: float) -> float:
    """SIREN's initial weights are uniform in +-this: 1/fan_in for the first layer, sqrt(6/fan_in)/omega after."""
    return 1.0 / fan_in if index == 0 else math.sqrt(6.0 / fan_in) / omega


class Siren(nn.Module):
    """MLP ``inputs -> width (x layers, sin(omega .)) -> outputs`` whose last layer starts at zero."""

    def __init__(self, inputs: int, width: int, layers: int, outputs: int, omega: float):
        super().__init__()
        self.omega = omega
        shapes = siren_shapes(inputs, width, layers, outputs)
        self.hidden = nn.ModuleList(nn.Linear(fan_in, fan_out) for fan_out, fan_in in shapes[:-1])
        for index, layer in enumerate(self.hidden):
            nn.init.uniform_(layer.weight, -siren_bound(index, layer.in_features, omega),
                             siren_bound(index, layer.in_features, omega))
        self.out = nn.Linear(width, outputs)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., inputs) -> (..., outputs)."""
        for layer in self.hidden:
            x = torch.sin(self.omega * layer(x))
        return self.out(x)


class HyperSiren(nn.Module):
    """A SIREN ``inputs -> outputs`` whose weights a hypernetwork makes from a code.

    The hypernetwork is a ReLU trunk (code -> hyper_width -> hyper_width) and one linear head
    to all of the SIREN's weights and biases. The head's weights start near zero and its bias
    at a SIREN initialisation (the last layer's at zero), so every code starts with the same
    SIREN, whose output is zero: the identity deformation.
    """

    def __init__(self, inputs: int, width: int, layers: int, outputs: int, code_dim: int, hyper_width: int,
                 omega: float):
        super().__init__()
        self.omega = omega
        self.shapes = siren_shapes(inputs, width, layers, outputs)
        self.trunk = nn.Sequential(nn.Linear(code_dim, hyper_width), nn.ReLU(), nn.Linear(hyper_width, hyper_width),
                                   nn.ReLU())
        sizes = [n for fan_out, fan_in in self.shapes for n in (fan_out * fan_in, fan_out)]
        self.head = nn.Linear(hyper_width, sum(sizes))
        with torch.no_grad():
            self.head.weight.normal_(0.0, math.sqrt(2.0 / hyper_width) / 100)  # Kaiming, scaled down
            starts = []
            for index, (fan_out, fan_in) in enumerate(self.shapes):
                last = index == len(self.shapes) - 1
                bound = 0.0 if last else siren_bound(index, fan_in, omega)
                starts += [torch.empty(fan_out * fan_in).uniform_(-bound, bound),
                           torch.empty(fan_out).uniform_(-1.0 / fan_in, 1.0 / fan_in) * (not last)]
            self.head.bias.copy_(torch.cat(starts))
        self.sizes = sizes

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """(B, N, inputs) points of B shapes with their (B, code_dim) codes -> (B, N, outputs)."""
        params = self.head(self.trunk(code)).split(self.sizes, dim=-1)
        for index, (fan_out, fan_in) in enumerate(self.shapes):
            weight = params[2 * index].view(-1, fan_out, fan_in)
            x = torch.baddbmm(params[2 * index + 1][:, None], x, weight.transpose(1, 2))
            if index < len(self.shapes) - 1:
                x = torch.sin(self.omega * x)
        return x


class TemplateModel(nn.Module):
    """The template field, the code-driven deformation, and the codes that come with a model.

    Buffers from a trained bundle: ``alphas`` (S, A) and ``betas`` (S, B) of the training shapes;
    ``template_alpha`` (A,), ``template_beta`` (B,) the template's own codes (ReShapeIT), whose
    deformation is trained to be the identity on the template surface.
    """

    def __init__(self, config: TemplateConfig | None = None):
        super().__init__()
        self.config = config = config or TemplateConfig()
        self.template = Siren(3, config.template_width, config.template_layers, 1, config.omega)
        self.deform = HyperSiren(3 + config.alpha_dim, config.deform_width, config.deform_layers, 4,
                                 config.beta_dim, config.hyper_width, config.omega)
        self.register_buffer("alphas", torch.zeros(0, config.alpha_dim))
        self.register_buffer("betas", torch.zeros(0, config.beta_dim))
        self.register_buffer("template_alpha", torch.zeros(config.alpha_dim))
        self.register_buffer("template_beta", torch.zeros(config.beta_dim))

    def deformation(self, points: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, 3) points and (B, A), (B, B') codes -> ((B, N, 3) displacement onto the template,
        (B, N) signed-distance correction)."""
        inputs = torch.cat([points, alpha[:, None].expand(-1, points.shape[1], -1)], dim=-1)
        out = self.deform(inputs, beta)
        return out[..., :3], out[..., 3]

    def template_sdf(self, points: torch.Tensor) -> torch.Tensor:
        """(..., 3) template coordinates -> (...) the template's signed distance."""
        return self.template(points)[..., 0]

    def forward(self, points: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) points, codes (B, A) and (B, B') -> (B, N) signed distances."""
        moved, correction = self.deformation(points, alpha, beta)
        return self.template_sdf(points + moved) + correction

    @torch.no_grad()
    def template_points(self, count: int, seed: int, resolution: int, radius: float) -> np.ndarray | None:
        """(count, 3) points on the template's zero level (unit sphere), meshed at ``resolution`` over
        [-radius, radius]^3; None while it has none (an untrained template)."""
        device = next(self.parameters()).device
        mesh = field_mesh(lambda points: self.template_sdf(points.to(device)).cpu(), resolution, radius)
        if len(mesh.faces) == 0:
            return None
        return np.asarray(trimesh.sample.sample_surface(mesh, count, seed=seed)[0])

    @torch.no_grad()
    def to_template(self, points: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor,
                    chunk: int = 65536) -> torch.Tensor:
        """(N, 3) points of one shape with codes (A,), (B',) -> (N, 3) their template coordinates ``p + dv``."""
        moved = [self.deformation(part[None], alpha[None], beta[None])[0][0] for part in points.split(chunk)]
        return points + torch.cat(moved) if moved else points

    def bundle_tensors(self) -> dict[str, torch.Tensor]:
        """The bundle's ``model.*`` tensors: weights, training and template codes."""
        return {f"model.{k}": v.detach().cpu() for k, v in self.state_dict().items()}

    @classmethod
    def from_bundle(cls, bundle: ModelBundle) -> TemplateModel:
        model = cls(TemplateConfig.from_dict(bundle.metadata["config"]))
        state = {k.removeprefix("model."): v.float() for k, v in bundle.tensors.items() if k.startswith("model.")}
        model.alphas, model.betas = state["alphas"], state["betas"]  # their count is the training set's
        model.load_state_dict(state, strict=True)
        for p in model.parameters():
            p.requires_grad_(False)
        return model.eval()


def gradient(output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """d(output)/d(inputs), differentiable again (for losses on normals and the eikonal term)."""
    return torch.autograd.grad(output.sum(), inputs, create_graph=True)[0]


def template_losses(model: TemplateModel, alpha: torch.Tensor, beta: torch.Tensor, surface: torch.Tensor,
                    known: torch.Tensor, free: torch.Tensor, g: torch.Generator,
                    trust: torch.Tensor | None = None, terms: Collection[str] | None = None) -> dict[str, torch.Tensor]:
    """Each loss term (before :data:`WEIGHTS`) for a batch of B shapes.

    Args:
        alpha, beta: (B, A), (B, B') the shapes' codes.
        surface: (B, Ns, 6) surface points and unit normals; known: (B, Nk, 4) points and signed
            distances (Nk may be 0); free: (B, Nf, 3) uniform points (signed distance unknown).
        trust: (B, Ns) weights of the surface points in their terms (default all 1).
        terms: the terms wanted (default all); a fit to a new case skips the training-only ones.
    """
    ns, nk = surface.shape[1], known.shape[1]
    points = torch.cat([surface[..., :3], known[..., :3], free], dim=1).requires_grad_(True)
    moved, correction = model.deformation(points, alpha, beta)
    warped = points + moved
    template = model.template_sdf(warped)
    sdf = template + correction
    grad = gradient(sdf, points)
    normals = surface[..., 3:]
    trust = torch.ones_like(sdf[:, :ns]) if trust is None else trust

    def on_surface(values: torch.Tensor) -> torch.Tensor:
        return (values * trust).sum() / trust.sum()

    def template_normal() -> torch.Tensor:
        template_grad = gradient(template[:, :ns], warped)[:, :ns]
        return (1 - torch.nn.functional.cosine_similarity(template_grad, normals, dim=-1)).mean()

    def smooth() -> torch.Tensor:
        # |J u|^2 for a random unit direction u, by finite differences (E_u = |J|_F^2 / 3).
        direction = torch.randn(surface[..., :3].shape, generator=g).to(points.device)
        direction = direction / direction.norm(dim=-1, keepdim=True)
        shifted, _ = model.deformation(surface[..., :3] + SMOOTH_STEP * direction, alpha, beta)
        return ((shifted - moved[:, :ns]) / SMOOTH_STEP).pow(2).sum(-1).mean()

    known_term = (sdf[:, ns:ns + nk] - known[..., 3]).abs().mean() if nk else sdf.new_zeros(())
    wanted = {
        "sdf": lambda: on_surface(sdf[:, :ns].abs()) + known_term,
        "normal": lambda: on_surface(1 - torch.nn.functional.cosine_similarity(grad[:, :ns], normals, dim=-1)),
        "eikonal": lambda: (grad.norm(dim=-1) - 1).abs().mean(),
        "off_surface": lambda: torch.exp(-100 * sdf[:, ns + nk:].abs()).mean(),
        "template_normal": template_normal,
        "smooth": smooth,
        "correction": lambda: correction.abs().mean(),
    }
    return {name: term() for name, term in wanted.items() if terms is None or name in terms}
