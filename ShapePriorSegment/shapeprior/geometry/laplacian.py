"""Uniform (graph) Laplacian of a triangle mesh and its smoothness energy."""

from __future__ import annotations

import torch
from torch import Tensor


def uniform_laplacian(faces: Tensor, num_verts: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Graph Laplacian ``L = D - A`` of the mesh's edge graph.

    Args:
        faces: (F, 3) int64 vertex indices.
        num_verts: V; vertices in no face get a zero row.
        dtype: of the values.

    Returns:
        (V, V) coalesced sparse COO tensor on ``faces.device``: A is the binary,
        symmetric vertex adjacency and D its degree diagonal, so L is symmetric,
        positive semi-definite and its rows sum to 0.
    """
    ring = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    # Both directions, then unique: an interior edge is shared by two faces but A stays binary.
    pairs = torch.unique(torch.cat([ring, ring.flip(1)]), dim=0)
    degree = torch.bincount(pairs[:, 0], minlength=num_verts).to(dtype)
    diag = torch.arange(num_verts, device=faces.device)
    indices = torch.cat([pairs.T, torch.stack([diag, diag])], dim=1)
    values = torch.cat([-torch.ones(len(pairs), dtype=dtype, device=faces.device), degree])
    # Checked: an index >= num_verts would otherwise corrupt memory rather than raise.
    return torch.sparse_coo_tensor(indices, values, (num_verts, num_verts), check_invariants=True).coalesce()


def laplacian_energy(z: Tensor, laplacian: Tensor, power: int = 2) -> Tensor:
    """Smoothness energy ``Tr(Z^T L^p Z)`` of per-vertex signals.

    For p = 2 this is ``||L Z||_F^2``; for p = 1 the sum over edges of squared differences.

    Args:
        z: (V, C) or (B, V, C) per-vertex values (e.g. displacements, in the caller's units).
        laplacian: (V, V) sparse symmetric Laplacian, e.g. from :func:`uniform_laplacian`.
        power: p >= 1.

    Returns:
        () or (B,) energy, in the units of z squared.
    """
    if power < 1:
        raise ValueError(f"Laplacian power must be >= 1, got {power}")
    laplacian = laplacian.to(dtype=z.dtype, device=z.device)
    # Sparse mm is 2D only: fold the batch into the channels, (B, V, C) -> (V, B*C).
    flat = z.movedim(-2, 0).reshape(z.shape[-2], -1)
    smoothed = flat
    for _ in range(power):
        smoothed = torch.sparse.mm(laplacian, smoothed)
    per_channel = (flat * smoothed).sum(0).reshape(z.shape[:-2] + z.shape[-1:])
    return per_channel.sum(-1)
