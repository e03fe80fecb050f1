"""Rigid + scale alignment of shapes to an anchor with coherent point drift (pycpd)."""

from __future__ import annotations

import numpy as np
import trimesh
from pycpd import RigidRegistration

from ..transform import Similarity


def surface_points(mesh: trimesh.Trimesh, count: int, seed: int) -> np.ndarray:
    """``count`` area-uniform points (count, 3) on ``mesh``, reproducible by ``seed``."""
    points, _ = trimesh.sample.sample_surface_even(mesh, count, seed=seed)
    if len(points) < count // 2:  # 'even' sampling can fall short on tiny meshes
        points, _ = trimesh.sample.sample_surface(mesh, count, seed=seed)
    return np.asarray(points, dtype=np.float64)


def align_to_anchor(
    moving: trimesh.Trimesh, anchor: trimesh.Trimesh, num_points: int = 300, seed: int = 0
) -> Similarity:
    """Similarity mapping ``moving`` (its frame, mm) onto ``anchor`` (its frame, mm).

    Coarse: CPD (rigid + scale) on ``num_points`` points of each shape, both centred
    and scaled to unit RMS radius so CPD starts from a sensible overlap; CPD is robust
    to the initial misfit but slow, hence the small copies. Fine: scaled ICP from the
    CPD result on denser samples.
    """
    x = surface_points(anchor, num_points, seed)
    y = surface_points(moving, num_points, seed + 1)
    cx, cy = x.mean(0), y.mean(0)
    rx = np.sqrt(((x - cx) ** 2).sum(1).mean())
    ry = np.sqrt(((y - cy) ** 2).sum(1).mean())
    to_x_unit = Similarity(1.0 / rx, np.eye(3), -cx / rx)
    to_y_unit = Similarity(1.0 / ry, np.eye(3), -cy / ry)
    reg = RigidRegistration(X=to_x_unit.apply(x), Y=to_y_unit.apply(y), scale=True, max_iterations=50, tolerance=1e-4)
    reg.register()
    # pycpd maps row vectors as s * y @ R + t, i.e. our rotation is R.T.
    cpd = Similarity(float(reg.s), np.asarray(reg.R).T, np.asarray(reg.t).reshape(3))
    coarse = to_x_unit.inverse().compose(cpd.compose(to_y_unit))
    fine, _, _ = trimesh.registration.icp(
        surface_points(moving, 2000, seed + 2), surface_points(anchor, 5000, seed + 3),
        initial=coarse.matrix(), threshold=1e-6, max_iterations=40, reflection=False, scale=True,
    )
    return Similarity.from_matrix(fine)
