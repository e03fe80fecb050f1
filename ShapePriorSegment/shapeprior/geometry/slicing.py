"""Differentiable intersection of a triangle mesh with a plane (e.g. an image slice)."""

from __future__ import annotations

import torch
from torch import Tensor


def plane_intersection_segments(verts: Tensor, faces: Tensor, origin: Tensor, normal: Tensor) -> Tensor:
    """Segments where the faces cross the plane ``(p - origin) . normal = 0``.

    A vertex exactly on the plane counts as on the positive side, so every crossing
    edge joins strictly opposite signed distances and the interpolation never divides by 0.
    For a closed mesh with outward (counter-clockwise) faces, segment ends meet segment
    starts: the segments form closed loops running counter-clockwise about the normal
    (right-hand rule) around the mesh's cross-section.

    Args:
        verts: (V, 3) vertex positions.
        faces: (F, 3) int64 vertex indices.
        origin: (3,) a point of the plane, in the units of verts.
        normal: (3,) plane normal, any non-zero length.

    Returns:
        (S, 2, 3) segment end points in the units of verts, differentiable w.r.t. verts;
        S = 0 when the plane misses the mesh.
    """
    normal = torch.nn.functional.normalize(normal.to(verts), dim=0)
    dist = ((verts - origin.to(verts)) @ normal)[faces]  # (F, 3) signed distances of the corners
    positive = dist >= 0
    count = positive.sum(1)
    crossing = (count == 1) | (count == 2)
    faces, dist, positive, count = faces[crossing], dist[crossing], positive[crossing], count[crossing]
    # The corner alone on its side: the positive one when count == 1, else the negative one.
    alone = (positive == (count == 1)[:, None]).int().argmax(1)
    order = (alone[:, None] + torch.arange(3, device=faces.device)) % 3  # (S, 3) cyclic, alone first
    corners = verts[torch.take_along_dim(faces, order, dim=1)]  # (S, 3, 3)
    d = torch.take_along_dim(dist, order, dim=1)
    t = d[:, :1] / (d[:, :1] - d[:, 1:])  # (S, 2): along edges alone->next and alone->previous
    points = corners[:, :1] + t[..., None] * (corners[:, 1:] - corners[:, :1])
    # Swapping when the lone corner is negative makes all segments run the same way round.
    return torch.where((count == 1)[:, None, None], points, points.flip(1))


def sample_plane_intersection(
    verts: Tensor,
    faces: Tensor,
    origin: Tensor,
    normal: Tensor,
    num_samples: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Points uniformly distributed along the mesh/plane intersection polyline.

    Segments are drawn with probability proportional to their length (without gradient
    through the choice), the position along a segment is uniform.

    Args:
        verts: (V, 3) vertex positions.
        faces: (F, 3) int64 vertex indices.
        origin: (3,) a point of the plane.
        normal: (3,) plane normal, any non-zero length.
        num_samples: N.
        generator: for reproducible draws; must live on verts' device.

    Returns:
        (N, 3) points in the units of verts, differentiable w.r.t. verts;
        (0, 3) when the plane misses the mesh (or touches it only at points).
    """
    segments = plane_intersection_segments(verts, faces, origin, normal)
    with torch.no_grad():
        lengths = torch.linalg.vector_norm(segments[:, 1] - segments[:, 0], dim=-1)
    if lengths.sum() == 0:  # also when S = 0
        return verts.new_zeros((0, 3))
    chosen = segments[torch.multinomial(lengths, num_samples, replacement=True, generator=generator)]
    t = torch.rand((num_samples, 1), generator=generator, dtype=verts.dtype, device=verts.device)
    return chosen[:, 0] + t * (chosen[:, 1] - chosen[:, 0])
