"""CSV tables of shape descriptors: one row per image (a shape study's input) or per corresponding point."""

from __future__ import annotations

import csv
import os

import numpy as np

from .atomic import atomic_output


def write_shape_table(path: str | os.PathLike, images: list[str], loadings: np.ndarray, mahalanobis: np.ndarray,
                      volume_ml: np.ndarray) -> None:
    """One row per image: ``image, mahalanobis, volume_ml, z1..zK`` (whitened loadings (N, K), so a value
    is in training standard deviations and ``mahalanobis`` is their norm), atomically."""
    loadings = np.atleast_2d(loadings)
    with atomic_output(path) as temporary, open(temporary, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["image", "mahalanobis", "volume_ml"] + [f"z{k + 1}" for k in range(loadings.shape[1])])
        for image, distance, volume, row in zip(images, mahalanobis, volume_ml, loadings):
            writer.writerow([image, f"{distance:.4f}", f"{volume:.4f}"] + [f"{v:.5f}" for v in row])


def write_point_table(path: str | os.PathLike, points: np.ndarray) -> None:
    """Corresponding points (P, 3) LPS mm as rows ``index, L, P, S``, atomically."""
    rows = np.column_stack([np.arange(len(points)), points])
    with atomic_output(path) as temporary:
        np.savetxt(temporary, rows, delimiter=",", fmt=["%d"] + ["%.3f"] * 3, comments="", header="index,L,P,S")
