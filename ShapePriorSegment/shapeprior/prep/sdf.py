"""Signed-distance samples for implicit (DeepSDF-style) shape models."""

from __future__ import annotations

import igl
import numpy as np
import trimesh


def signed_distance(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Signed distance (N,) from ``points`` (N,3) to ``mesh``; negative inside.

    The sign comes from the fast generalised winding number, so it stays correct
    near small holes or non-manifold spots that a ray-parity test would get wrong.
    """
    dist, _, _, _ = igl.signed_distance(
        np.ascontiguousarray(points, dtype=np.float64),
        np.asarray(mesh.vertices, dtype=np.float64),
        np.asarray(mesh.faces, dtype=np.int64),
        sign_type=igl.SIGNED_DISTANCE_TYPE_FAST_WINDING_NUMBER,
    )
    return dist


def sample_sdf(
    mesh: trimesh.Trimesh,
    num_samples: int,
    seed: int = 0,
    uniform_fraction: float = 0.2,
    sigmas: tuple[float, float] = (0.1, 0.01),
) -> tuple[np.ndarray, np.ndarray]:
    """SDF samples around a mesh in the unit sphere, half outside and half inside.

    ``uniform_fraction`` of the candidates are uniform in the unit ball, the rest are
    surface points jittered by N(0, sigma^2) with sigma drawn from ``sigmas`` with
    equal probability. Candidates are over-drawn and then balanced.

    Returns ``(pos, neg)``, each (num_samples // 2, 4) rows of x, y, z, sdf.
    """
    rng = np.random.default_rng(seed)
    half = num_samples // 2
    pos, neg = [], []
    have_pos = have_neg = 0
    for _ in range(8):  # rarely needs more than one round
        count = 2 * num_samples
        n_uniform = int(round(uniform_fraction * count))
        direction = rng.normal(size=(n_uniform, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        uniform = direction * rng.random((n_uniform, 1)) ** (1 / 3)
        surface, _ = trimesh.sample.sample_surface(mesh, count - n_uniform, seed=int(rng.integers(2**31)))
        sigma = rng.choice(np.asarray(sigmas), size=(len(surface), 1))
        near = surface + rng.normal(size=surface.shape) * sigma
        points = np.concatenate([uniform, near])
        sdf = signed_distance(mesh, points)
        rows = np.concatenate([points, sdf[:, None]], axis=1).astype(np.float32)
        pos.append(rows[sdf > 0])
        neg.append(rows[sdf <= 0])
        have_pos += len(pos[-1])
        have_neg += len(neg[-1])
        if have_pos >= half and have_neg >= half:
            break
    pos_all, neg_all = np.concatenate(pos), np.concatenate(neg)
    if len(pos_all) < half or len(neg_all) < half:
        raise ValueError(f"could not draw {half} samples on each side of the surface")
    return pos_all[rng.permutation(len(pos_all))[:half]], neg_all[rng.permutation(len(neg_all))[:half]]
