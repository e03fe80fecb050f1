"""Continuous 6D rotation representation (Zhou et al., CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor


def rotation_6d_to_matrix(d6: Tensor) -> Tensor:
    """Rotation matrices from 6D vectors by Gram-Schmidt.

    ``d6 = (a1, a2)``: row 1 is a1 normalised, row 2 is a2 with its a1 component removed,
    normalised, row 3 their cross product (ROWS convention, as in PyTorch3D).

    Args:
        d6: (..., 6); a1 and a2 must not be parallel.

    Returns:
        (..., 3, 3) proper rotation matrices.
    """
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    return torch.stack([b1, b2, torch.linalg.cross(b1, b2)], dim=-2)


def matrix_to_rotation_6d(matrix: Tensor) -> Tensor:
    """Inverse of :func:`rotation_6d_to_matrix` on rotations: the first two rows.

    Args:
        matrix: (..., 3, 3) rotation matrices.

    Returns:
        (..., 6); the identity gives [1, 0, 0, 0, 1, 0].
    """
    return matrix[..., :2, :].reshape(*matrix.shape[:-2], 6)
