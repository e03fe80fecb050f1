"""PNG pictures of masks over image slices (no plotting library: SimpleITK writes the PNG)."""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..io.atomic import atomic_output

# RGB outline colours, in the order of the masks given.
COLOURS = ((230, 60, 50), (60, 200, 80), (80, 150, 255))


def _window(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (np.clip((image - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _panel(background: np.ndarray, masks: list[np.ndarray], zoom: tuple[int, int]) -> np.ndarray:
    """(H, W) slice and masks -> (H*zy, W*zx, 3) uint8 with one-pixel outlines of each mask."""
    grey = np.kron(background, np.ones(zoom, dtype=np.uint8))
    rgb = np.repeat(grey[..., None], 3, -1)
    for mask, colour in zip(masks, COLOURS):
        big = np.kron(mask.astype(np.uint8), np.ones(zoom, dtype=np.uint8)).astype(bool)
        rgb[big & ~ndimage.binary_erosion(big)] = colour
    return rgb


def _oriented(array: np.ndarray, image: sitk.Image) -> np.ndarray:
    """(k, j, i) array of an axial image -> radiological display order: k inferior -> superior,
    j anterior -> posterior (top to bottom), i patient right -> left (left to right)."""
    signs = np.sign(np.diag(np.array(image.GetDirection()).reshape(3, 3)))  # LPS sign of i, j, k
    flips = tuple(axis for axis, sign in zip((2, 1, 0), signs) if sign < 0)
    return np.flip(array, flips) if flips else array


def overlay_png(image: sitk.Image, masks: list[sitk.Image], path: str | os.PathLike, window: tuple[float, float],
                axial: list[int], coronal: int, pixel_mm: float = 1.0) -> None:
    """Axial slices ``axial`` and one coronal slice ``coronal`` (indices along the image's own k and j
    axes) side by side, masks outlined, in radiological orientation.

    Every mask must share ``image``'s grid; pixels are resampled to about ``pixel_mm`` mm.
    """
    array = _oriented(_window(sitk.GetArrayFromImage(image).astype(np.float32), *window), image)
    binary = [_oriented(sitk.GetArrayFromImage(m) > 0, image) for m in masks]
    sx, sy, sz = image.GetSpacing()
    zoom_axial = (max(1, round(sy / pixel_mm)), max(1, round(sx / pixel_mm)))
    zoom_coronal = (max(1, round(sz / pixel_mm)), max(1, round(sx / pixel_mm)))
    # The slice indices follow the image's axes; _oriented may have flipped them.
    signs = np.sign(np.diag(np.array(image.GetDirection()).reshape(3, 3)))
    depth, rows = array.shape[:2]
    axial = [k if signs[2] > 0 else depth - 1 - k for k in axial]
    coronal = coronal if signs[1] > 0 else rows - 1 - coronal
    panels = [_panel(array[k], [b[k] for b in binary], zoom_axial) for k in axial]
    panels.append(_panel(array[::-1, coronal], [b[::-1, coronal] for b in binary], zoom_coronal))
    height = max(p.shape[0] for p in panels)
    row = np.concatenate([np.pad(p, ((0, height - p.shape[0]), (0, 4), (0, 0))) for p in panels], 1)
    with atomic_output(path) as tmp:
        sitk.WriteImage(sitk.GetImageFromArray(row, isVector=True), str(tmp))
