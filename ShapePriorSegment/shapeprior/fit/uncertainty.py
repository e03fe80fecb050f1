"""Where a fitted surface is unsure, and which plane's contour would settle it most.

A linear Gaussian model of how far each vertex of the fitted surface could move along its
normal (mm), conditioned on the drawn curves:

    delta = B a + Phi b,   a ~ N(0, I),   b ~ N(0, rho^2 s^2 / M I)

- ``B`` (V, S): the model's training shapes, decoded on the fitted mesh's icosphere (so in
  vertex correspondence), as deviations from their mean along the fitted normals: the
  shape variation the prior knows (a PCA model with all its modes).
- ``Phi`` (V, M): the icosphere's M smoothest Laplacian modes: smooth variation the
  training shapes do not span (a band-limited Gaussian process on the surface), with a
  per-vertex standard deviation ``rho`` times the organ's size ``s`` (mm per model unit).

A curve drawn on a plane observes, with noise ``noise_mm``, the in-plane component of the
normal displacement of the vertices near it (weight ``exp(-(d/h)^2) (1 - (n.p)^2)``, d the
distance to the curve, h the mesh's edge length). The posterior covariance of (a, b) is
closed-form and small (K = S + M), so scoring a candidate plane is one K x K solve: its
gain is the drop of the surface's (area-weighted) RMS uncertainty once its contour is drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from scipy.spatial import cKDTree

from ..geometry import icosphere
from ..settings import UncertaintySettings
from ..transform import Similarity
from .contours import PARALLEL_COS

# A drawn plane: (origin (3,), unit normal (3,), its curves' points (N, 3)), LPS mm.
DrawnPlane = tuple[np.ndarray, np.ndarray, np.ndarray]

AXES = ("sagittal", "coronal", "axial")  # LPS axis 0, 1, 2: the planes a clinician scrolls through
# Slicer shows slice offsets in RAS: the name and sign of each LPS axis there.
RAS_OFFSET = (("R", -1.0), ("A", -1.0), ("S", 1.0))
# The per-vertex array of a fit's outcome: the half-width (mm) of the band that holds the true
# surface with 90% probability.
UNCERTAINTY_ARRAY = "Uncertainty_mm"
Z_90 = 1.6449  # a normal error is within 1.645 sigma 90% of the time
# A new contour closer than this to a parallel drawn one adds little, and would be grouped with it.
MIN_GAP_MM = 10.0


@dataclass
class ShapePosterior:
    """The fitted surface's normal-displacement model, conditioned on the drawn curves.

    ``basis`` (V, K) mm per unit coefficient; ``precision`` (K, K) of the coefficients'
    posterior; ``mesh`` the fitted surface (LPS mm); ``edge_mm`` its mean edge length.
    """

    mesh: trimesh.Trimesh
    basis: np.ndarray
    precision: np.ndarray
    edge_mm: float
    settings: UncertaintySettings
    drawn: list[tuple[np.ndarray, np.ndarray]]  # (origin, normal) of each drawn plane, LPS mm
    _gram: np.ndarray | None = None

    def vertex_std(self) -> np.ndarray:
        """(V,) posterior standard deviation of each vertex along its normal, mm."""
        cho = np.linalg.cholesky(self.precision)
        half = np.linalg.solve(cho, self.basis.T)  # (K, V): basis @ P^-1 @ basis.T = half.T @ half
        return np.sqrt((half**2).sum(0))

    def uncertainty_mm(self) -> np.ndarray:
        """(V,) the half-width (mm) of the band the true surface is within 90% of the time."""
        return self.settings.calibration * Z_90 * self.vertex_std()

    def observe(self, weights: np.ndarray) -> np.ndarray:
        """The precision once vertices are observed with these (V,) weights."""
        seen = weights > 1e-6  # a contour sees a band of the surface: skip the rest
        weighted = self.basis[seen] * (weights[seen] / self.settings.noise_mm**2)[:, None]
        return self.precision + self.basis[seen].T @ weighted

    def rms_mm(self, precision: np.ndarray | None = None) -> float:
        """RMS over the surface (area-weighted: vertices crowd where the icosphere is squeezed) of
        the 90% half-width, for this (K, K) precision."""
        precision = self.precision if precision is None else precision
        if self._gram is None:
            area = np.zeros(len(self.basis))
            np.add.at(area, np.asarray(self.mesh.faces).ravel(), np.repeat(self.mesh.area_faces / 3, 3))
            self._gram = self.basis.T @ (self.basis * (area / area.sum())[:, None])
        mean_var = float(np.trace(np.linalg.solve(precision, self._gram)))
        return self.settings.calibration * Z_90 * np.sqrt(max(mean_var, 0.0))


_TRAINING_MODELS: dict = {}


def training_model(bundle, decoder: torch.nn.Module, level: int) -> tuple[np.ndarray, np.ndarray]:
    """((S, V, 3) the bundle's training shapes on the level-``level`` icosphere, model unit frame;
    (V, M) its smoothest Laplacian modes), computed once per model and level.

    The shapes are decoded one level coarser and their edge midpoints interpolated (the finer
    icosphere's new vertices are those midpoints): 0.14 s instead of 0.76 s measured, for a basis
    of smooth shape variation 5% RMS from the directly decoded one.
    """
    from .dals_fit import laplacian_modes

    stat = bundle.path.stat()  # a model retrained at the same path is another model
    key = (str(bundle.path), stat.st_size, stat.st_mtime_ns, level)
    if key not in _TRAINING_MODELS:
        coarse, faces = icosphere(max(level - 1, 0))
        with torch.no_grad():
            shapes = torch.cat([decoder(coarse, chunk) for chunk in bundle.tensors["latents"].split(16)])
        shapes = shapes.double().numpy()
        if level > 0:
            edges = trimesh.Trimesh(coarse.numpy(), faces.numpy(), process=False).edges_unique
            midpoints = coarse.numpy()[edges].sum(1)
            midpoints /= np.linalg.norm(midpoints, axis=1, keepdims=True)
            fine = cKDTree(icosphere(level)[0].numpy())
            upsampled = np.empty((len(shapes), len(fine.data), 3))
            upsampled[:, fine.query(coarse.numpy())[1]] = shapes
            upsampled[:, fine.query(midpoints)[1]] = shapes[:, edges].mean(2)
            shapes = upsampled
        modes = laplacian_modes(level, UncertaintySettings.smooth_modes)
        _TRAINING_MODELS[key] = (shapes, modes.double().numpy())
    return _TRAINING_MODELS[key]


def point_weights(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """(V,) how much a point cloud (N, 3) LPS mm observes each vertex: points see every direction."""
    edge_mm = float(np.asarray(mesh.edges_unique_length).mean())
    return np.exp(-((cKDTree(points).query(np.asarray(mesh.vertices))[0] / edge_mm) ** 2))


def plane_weights(mesh: trimesh.Trimesh, origin: np.ndarray, normal: np.ndarray, edge_mm: float,
                  curve_points: np.ndarray | None = None) -> np.ndarray:
    """(V,) how much a contour on the plane (LPS mm) observes each vertex: close to the curve
    (or, for a plane not drawn yet, to the plane) and with a normal the plane can see."""
    verts = np.asarray(mesh.vertices)
    if curve_points is None:
        distance = np.abs((verts - origin) @ normal)
    else:
        distance = cKDTree(curve_points).query(verts)[0]
    visible = 1.0 - (np.asarray(mesh.vertex_normals) @ normal) ** 2
    return np.exp(-((distance / edge_mm) ** 2)) * visible


def shape_posterior(mesh: trimesh.Trimesh, pose: Similarity, training_shapes: np.ndarray, modes: np.ndarray,
                    planes: list[DrawnPlane], seen: np.ndarray | None = None,
                    settings: UncertaintySettings = UncertaintySettings()) -> ShapePosterior:
    """The posterior of the fitted ``mesh`` (LPS mm, vertices in the icosphere's order of
    ``training_shapes`` (S, V, 3) and ``modes`` (V, M)), ``pose`` model unit sphere -> LPS mm,
    given the curves of ``planes`` and vertices ``seen`` (V,) otherwise (e.g. :func:`point_weights`)."""
    normals = np.asarray(mesh.vertex_normals)
    deviations = (training_shapes - training_shapes.mean(0)) @ pose.rotation.T * pose.scale  # (S, V, 3) mm
    shape_part = np.einsum("svc,vc->vs", deviations, normals) / np.sqrt(max(len(training_shapes) - 1, 1))
    smooth = modes[:, : settings.smooth_modes] * np.sqrt(len(modes))  # per-vertex values of order 1
    smooth_part = smooth * settings.smooth_fraction * pose.scale / np.sqrt(smooth.shape[1])
    basis = np.concatenate([shape_part, smooth_part], axis=1)
    edges = np.asarray(mesh.edges_unique_length)
    edge_mm = float(edges.mean())
    posterior = ShapePosterior(mesh, basis, np.eye(basis.shape[1]), edge_mm, settings,
                               [(origin, normal) for origin, normal, _ in planes])
    seen = np.zeros(len(normals)) if seen is None else seen
    seen = seen + sum((plane_weights(mesh, origin, normal, edge_mm, points) for origin, normal, points in planes), 0.0)
    posterior.precision = posterior.observe(seen)
    return posterior


def candidate_planes(mesh: trimesh.Trimesh, oblique: bool, step_mm: float, bounds: np.ndarray | None = None,
                     drawn: list[tuple[np.ndarray, np.ndarray]] = ()) -> list[tuple[np.ndarray, np.ndarray]]:
    """(origin, normal) pairs, LPS mm: planes through the surface every ``step_mm`` along each
    patient axis (``oblique``: also along 40 more directions), inside ``bounds`` (2, 3) if given,
    and at least :data:`MIN_GAP_MM` from each ``drawn`` plane parallel to them."""
    normals = list(np.eye(3))
    if oblique:  # a Fibonacci half-sphere of directions
        k = np.arange(40) + 0.5
        polar, azimuth = np.arccos(1 - k / 40), np.pi * (1 + 5**0.5) * k
        normals += list(np.stack([np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)], 1))
    verts = np.asarray(mesh.vertices)
    centre = verts.mean(0)
    planes = []
    for normal in normals:
        heights = (verts - centre) @ normal
        lo, hi = np.percentile(heights, [3, 97])  # a plane grazing the tip sees almost nothing
        for height in np.arange(lo, hi + 1e-9, step_mm):
            origin = centre + height * normal
            inside = bounds is None or np.all((origin >= bounds[0]) & (origin <= bounds[1]))
            apart = all(abs(normal @ n) < PARALLEL_COS or abs((origin - o) @ n) >= MIN_GAP_MM for o, n in drawn)
            if inside and apart:
                planes.append((origin, normal))
    return planes


def suggest_plane(posterior: ShapePosterior, oblique: bool = False, bounds: np.ndarray | None = None,
                  step_mm: float = 2.5) -> dict | None:
    """The plane (LPS mm) whose contour lowers the surface's RMS uncertainty most, as the
    report's ``suggested_plane``; None when no plane inside ``bounds`` cuts the surface."""
    before = posterior.rms_mm()
    best, best_after = None, before
    for origin, normal in candidate_planes(posterior.mesh, oblique, step_mm, bounds, posterior.drawn):
        weights = plane_weights(posterior.mesh, origin, normal, posterior.edge_mm)
        after = posterior.rms_mm(posterior.observe(weights))
        if after < best_after:
            best, best_after = (origin, normal), after
    if best is None:
        return None
    origin, normal = best
    axis = next((AXES[a] for a in range(3) if abs(normal[a]) > 1 - 1e-9), "oblique")
    return {"origin": origin.round(2).tolist(), "normal": normal.round(6).tolist(), "frame": "LPS mm",
            "axis": axis, "expected_gain": {"rms_uncertainty_mm": round(before - best_after, 3),
                                            "rms_uncertainty_before_mm": round(before, 3)}}


def describe_plane(plane: dict) -> str:
    """One line a person can act on: 'axial slice at S = 112.5 mm' (the offset Slicer shows, RAS)."""
    if plane["axis"] == "oblique":
        origin = ", ".join(f"{v:.1f}" for v in plane["origin"])
        normal = ", ".join(f"{v:.2f}" for v in plane["normal"])
        return f"oblique plane through ({origin}) LPS mm, normal ({normal})"
    axis = AXES.index(plane["axis"])
    name, sign = RAS_OFFSET[axis]
    return f"{plane['axis']} slice at {name} = {sign * plane['origin'][axis]:.1f} mm"
