"""The one transform type: a similarity ``x -> scale * R @ x + t``.

Works on numpy arrays and torch tensors of points ``(..., 3)``; the frame the
points live in is the caller's to state (e.g. "LPS millimetres -> model unit sphere").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Similarity:
    """``y = scale * x @ rotation.T + translation`` for row-vector points.

    Attributes:
        scale: positive scalar.
        rotation: (3, 3) proper rotation matrix.
        translation: (3,) offset, in the units of the output frame.
    """

    scale: float = 1.0
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "rotation", np.asarray(self.rotation, dtype=np.float64).reshape(3, 3))
        object.__setattr__(self, "translation", np.asarray(self.translation, dtype=np.float64).reshape(3))
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"similarity scale must be positive and finite, got {self.scale}")

    @classmethod
    def identity(cls) -> "Similarity":
        return cls()

    @classmethod
    def from_matrix(cls, matrix: np.ndarray) -> "Similarity":
        """From a 4x4 homogeneous matrix whose 3x3 block is ``scale * R``."""
        m = np.asarray(matrix, dtype=np.float64)
        block = m[:3, :3]
        scale = float(np.cbrt(np.linalg.det(block)))
        return cls(scale, block / scale, m[:3, 3])

    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix acting on column vectors."""
        m = np.eye(4)
        m[:3, :3] = self.scale * self.rotation
        m[:3, 3] = self.translation
        return m

    def apply(self, points: Any) -> Any:
        """Map points ``(..., 3)`` (numpy or torch; result has the input's type)."""
        if isinstance(points, np.ndarray):
            return self.scale * points @ self.rotation.T + self.translation
        import torch

        rot = torch.as_tensor(self.rotation, dtype=points.dtype, device=points.device)
        trans = torch.as_tensor(self.translation, dtype=points.dtype, device=points.device)
        return self.scale * points @ rot.T + trans

    def inverse(self) -> "Similarity":
        rot_inv = self.rotation.T
        return Similarity(1.0 / self.scale, rot_inv, -(rot_inv @ self.translation) / self.scale)

    def compose(self, first: "Similarity") -> "Similarity":
        """``self ∘ first``: apply ``first``, then ``self``."""
        return Similarity(
            self.scale * first.scale,
            self.rotation @ first.rotation,
            self.scale * self.rotation @ first.translation + self.translation,
        )

    def to_dict(self) -> dict:
        return {
            "scale": self.scale,
            "rotation": self.rotation.tolist(),
            "translation": self.translation.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Similarity":
        return cls(d["scale"], np.array(d["rotation"]), np.array(d["translation"]))
