"""A point distribution model: corresponding surface points, their mean and principal modes.

Points live in one frame, the model's ``frame`` (for DeepSSM: the reference crop's LPS mm, after
each image was registered rigidly onto it). A shape is ``mean + sum_k z_k sqrt(var_k) mode_k``:
loadings ``z`` are whitened, so the Mahalanobis distance to the training population is ``|z|``.
The points share the template's triangles, so any set of them is a closed surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import trimesh

from ..io.labelmaps import mesh_to_labelmap
from .bundle import ModelBundle


@dataclass
class PointDistributionModel:
    """mean (P, 3) mm; modes (K, P, 3), orthonormal as (K, 3P) rows; variances (K,) mm^2; faces (F, 3);
    template (P, 3): the mean in the unit sphere, where new surfaces are put in correspondence;
    loadings (N, K): the training shapes' whitened loadings, in ``names`` order."""

    mean: np.ndarray
    modes: np.ndarray
    variances: np.ndarray
    faces: np.ndarray
    template: np.ndarray
    loadings: np.ndarray
    names: list[str]
    metadata: dict

    @classmethod
    def fit(cls, points: np.ndarray, faces: np.ndarray, template: np.ndarray, names: list[str],
            variance: float, metadata: dict) -> "PointDistributionModel":
        """PCA of (N, P, 3) corresponding points keeping the fewest modes that explain ``variance`` (0-1)."""
        flat = points.reshape(len(points), -1)
        mean = flat.mean(0)
        _, singular, rows = np.linalg.svd(flat - mean, full_matrices=False)
        variances = singular**2 / max(len(points) - 1, 1)
        share = np.cumsum(variances) / variances.sum()
        k = int(np.searchsorted(share, variance) + 1)
        model = cls(mean.reshape(-1, 3), rows[:k].reshape(k, -1, 3), variances[:k], faces, template,
                    np.zeros((len(points), k)), names, {**metadata, "explained": share[:k].tolist()})
        model.loadings = model.project(points)
        return model

    @property
    def size(self) -> int:
        return len(self.variances)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Whitened loadings (..., K) of corresponding points (..., P, 3) in the model's frame."""
        centred = (points - self.mean).reshape(*points.shape[:-2], -1)
        return centred @ self.modes.reshape(self.size, -1).T / np.sqrt(self.variances)

    def points(self, loadings: np.ndarray) -> np.ndarray:
        """Points (..., P, 3) of whitened loadings (..., K)."""
        flat = (loadings * np.sqrt(self.variances)) @ self.modes.reshape(self.size, -1)
        return self.mean + flat.reshape(*flat.shape[:-1], -1, 3)

    def mesh(self, points: np.ndarray, offset_mm: float | None = None) -> trimesh.Trimesh:
        """The closed surface of ``points`` (P, 3) mm, moved outward along its vertex normals by ``offset_mm``
        (default the calibrated ``mask_offset_mm``, else 0): the shape model's surfaces lie inside the boundary
        of the masks they came from (the prepared surfaces were smoothed, and P points cut chords)."""
        offset = self.metadata.get("mask_offset_mm", 0.0) if offset_mm is None else offset_mm
        mesh = trimesh.Trimesh(np.asarray(points, dtype=np.float64), self.faces, process=False)
        return trimesh.Trimesh(mesh.vertices + offset * mesh.vertex_normals, self.faces, process=False) if offset \
            else mesh

    def segmentation(self, points: np.ndarray, image: sitk.Image, offset_mm: float | None = None) -> sitk.Image:
        """The mask (uint8 on ``image``'s grid) inside :meth:`mesh` of ``points`` (LPS mm)."""
        return mesh_to_labelmap(self.mesh(points, offset_mm), image)

    @staticmethod
    def mahalanobis(loadings: np.ndarray) -> np.ndarray:
        """Distance (...) of whitened loadings (..., K) from the training mean, in standard deviations."""
        return np.sqrt((np.asarray(loadings) ** 2).sum(-1))

    def tensors(self, prefix: str = "pdm.") -> dict:
        import torch

        arrays = {"mean": self.mean, "modes": self.modes, "variances": self.variances, "template": self.template,
                  "loadings": self.loadings}
        return {**{prefix + k: torch.tensor(v, dtype=torch.float32) for k, v in arrays.items()},
                prefix + "faces": torch.tensor(self.faces, dtype=torch.int64)}

    @classmethod
    def from_bundle(cls, bundle: ModelBundle, prefix: str = "pdm.") -> "PointDistributionModel":
        t = {k[len(prefix):]: v.double().numpy() if v.is_floating_point() else v.numpy()
             for k, v in bundle.tensors.items() if k.startswith(prefix)}
        info = bundle.metadata["pdm"]
        return cls(t["mean"], t["modes"], t["variances"], t["faces"], t["template"], t["loadings"],
                   list(info["names"]), info)
