"""Chamfer distance between point sets, in bounded memory."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor


def _kdtree_indices(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    xs = x.detach().reshape(-1, *x.shape[-2:]).cpu().numpy()
    ys = y.detach().reshape(-1, *y.shape[-2:]).cpu().numpy()
    xy = np.stack([cKDTree(yb).query(xb)[1] for xb, yb in zip(xs, ys)])
    yx = np.stack([cKDTree(xb).query(yb)[1] for xb, yb in zip(xs, ys)])
    as_tensor = lambda a, like: torch.from_numpy(a).to(x.device).reshape(like.shape[:-1])  # noqa: E731
    return as_tensor(xy, x), as_tensor(yx, y)


def nearest_indices(x: Tensor, y: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Indices of nearest neighbours both ways.

    On the CPU a k-d tree (scipy) is far faster than a dense search. On other devices
    one pass over the squared-distance matrix serves both directions, ``chunk`` points
    of x at a time (at most B x chunk x M distances in memory).

    Args:
        x: (N, 3) or (B, N, 3) points.
        y: (M, 3) or (B, M, 3) points.
    Returns:
        ((N,) or (B, N) index into y of each x's nearest point, (M,) or (B, M) index into x).
    """
    if x.device.type == "cpu":
        return _kdtree_indices(x, y)
    with torch.no_grad():
        # The |x|^2 + |y|^2 - 2 x.y form loses precision far from the origin: centre first.
        centre = y.mean(-2, keepdim=True)
        xc, yc = x - centre, y - centre
        y2 = (yc**2).sum(-1)[..., None, :]
        best_y = torch.full(y.shape[:-1], float("inf"), dtype=x.dtype, device=x.device)
        index_yx = torch.zeros(y.shape[:-1], dtype=torch.long, device=x.device)
        index_xy = []
        for start in range(0, x.shape[-2], chunk):
            block = xc[..., start : start + chunk, :]
            d2 = (block**2).sum(-1)[..., None] + y2 - 2 * block @ yc.transpose(-1, -2)
            index_xy.append(d2.argmin(-1))
            block_min, block_arg = d2.min(-2)
            better = block_min < best_y
            best_y = torch.where(better, block_min, best_y)
            index_yx = torch.where(better, block_arg + start, index_yx)
    return torch.cat(index_xy, dim=-1), index_yx


def _distances_to(x: Tensor, y: Tensor, index: Tensor, squared: bool) -> Tensor:
    diff = x - torch.take_along_dim(y, index[..., None], dim=-2)
    # vector_norm has a zero subgradient at coincident points, where sqrt(sum) would give NaN.
    return (diff**2).sum(-1) if squared else torch.linalg.vector_norm(diff, dim=-1)


def nearest_distances(x: Tensor, y: Tensor, chunk: int = 4096, squared: bool = False) -> Tensor:
    """Distance from each point of x to its nearest point of y.

    The nearest neighbour is searched without gradient (see :func:`nearest_indices`);
    the distance to it is then recomputed differentiably, so gradients reach x and y.

    Args:
        x: (N, 3) or (B, N, 3) points.
        y: (M, 3) or (B, M, 3) points, M >= 1.
        chunk: points of x per search block.
        squared: return squared distances (smooth even where points coincide).

    Returns:
        (N,) or (B, N) distances, in the units of the points (squared if asked).
    """
    return _distances_to(x, y, nearest_indices(x, y, chunk)[0], squared)


def chamfer_distance(x: Tensor, y: Tensor, squared: bool = True, chunk: int = 4096) -> Tensor:
    """Symmetric chamfer distance ``mean_x min_y d(x, y) + mean_y min_x d(y, x)``.

    Args:
        x: (N, 3) or (B, N, 3) points.
        y: (M, 3) or (B, M, 3) points.
        squared: use squared Euclidean distances (the usual training loss) rather than distances.
        chunk: points per nearest-neighbour search block (see :func:`nearest_indices`).

    Returns:
        () or (B,) distance, in the units of the points (squared if ``squared``).
    """
    index_xy, index_yx = nearest_indices(x, y, chunk)
    return _distances_to(x, y, index_xy, squared).mean(-1) + _distances_to(y, x, index_yx, squared).mean(-1)
