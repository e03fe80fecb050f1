"""A CNN mask made ready for shape fitting: one part, border check, distance maps, sampling.

Arrays are (k, j, i) like SimpleITK's; points are LPS mm. The signed distance map is
negative inside, in mm, with its zero level half-way between inside and outside voxel
centres. Where the mask touches the image border the organ may go on outside the image:
the border is not treated as organ boundary, and points outside the image carry no data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..errors import InputError
from ..io.frames import index_to_lps, index_to_physical

# Nearest-neighbour upsampling from thick slices shows as runs of identical slices; it is taken for
# that when at least this many runs inside the mask share one length of 2 or more.
MIN_REPEATED_RUNS = 3


@dataclass
class PreparedMask:
    mask: sitk.Image  # uint8, the part that is fitted, on the input grid
    sdf_mm: np.ndarray  # (K, J, I) float32 signed distance to the mask boundary, negative inside
    parts: int  # connected parts in the input
    border_faces: list[str]  # image faces the mask touches, e.g. ["k-", "i+"]
    warnings: list[str] = field(default_factory=list)
    repeated_slices: tuple[str, int] | None = None  # ("k", 4): upsampled from every 4th slice along k

    @property
    def volume_ml(self) -> float:
        return float(sitk.GetArrayViewFromImage(self.mask).sum() * np.prod(self.mask.GetSpacing())) / 1000.0


def signed_distance_map(
    binary: np.ndarray, spacing_kji: tuple[float, float, float], pad_edges: bool = True
) -> np.ndarray:
    """(K, J, I) bool -> signed distance (mm, float32), negative inside.

    With ``pad_edges`` the array is extended by edge replication first, so a mask that
    touches the image border gets no boundary there.
    """
    pad = 1 if pad_edges else 0
    extended = np.pad(binary, pad, mode="edge") if pad else binary
    outside = ndimage.distance_transform_edt(~extended, sampling=spacing_kji)
    inside = ndimage.distance_transform_edt(extended, sampling=spacing_kji)
    half = 0.5 * min(spacing_kji)  # voxel centres next to the boundary are half a voxel from it
    sdf = np.where(extended, half - inside, outside - half).astype(np.float32)
    return sdf[pad:-pad, pad:-pad, pad:-pad] if pad else sdf


def _runs(binary: np.ndarray, axis: int) -> list[tuple[int, int]]:
    """(start, stop) of each run of identical consecutive slices along ``axis``."""
    slices = np.moveaxis(binary, axis, 0).reshape(binary.shape[axis], -1)
    change = np.flatnonzero(np.any(slices[1:] != slices[:-1], axis=1)) + 1
    bounds = np.concatenate([[0], change, [len(slices)]])
    return list(zip(bounds[:-1], bounds[1:]))


def repeated_slices(binary: np.ndarray) -> tuple[int, int] | None:
    """(array axis, period) when the (K, J, I) mask looks upsampled by nearest neighbour from thick slices."""
    for axis in range(3):
        occupied = np.moveaxis(binary, axis, 0).reshape(binary.shape[axis], -1).any(1)
        runs = _runs(binary, axis)
        # Runs inside the mask's extent and not cut by the array ends (those may be truncated).
        inner = [b - a for a, b in runs[1:-1] if occupied[a]]
        if len(inner) >= MIN_REPEATED_RUNS:
            lengths, counts = np.unique(inner, return_counts=True)
            period = int(lengths[np.argmax(counts)])
            if period >= 2 and counts.max() >= 0.8 * len(inner):
                return axis, period
    return None


def interpolated_distance_map(binary: np.ndarray, spacing_kji: tuple[float, float, float], axis: int,
                              period: int) -> np.ndarray:
    """Signed distance of a nearest-upsampled thick-slice mask, from one slice per run, linear in between
    (shape-based interpolation): the zero level is smooth between the original slices, not a staircase."""
    runs = _runs(binary, axis)
    centres = np.array([(a + b - 1) / 2 for a, b in runs])
    stack = np.stack([np.take(binary, a, axis=axis) for a, _ in runs], axis=axis)
    thick = list(spacing_kji)
    thick[axis] = spacing_kji[axis] * period
    coarse = signed_distance_map(stack, tuple(thick))
    position = np.interp(np.arange(binary.shape[axis]), centres, np.arange(len(runs)))
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(runs) - 1)
    weight = (position - low).reshape([-1 if a == axis else 1 for a in range(3)])
    return ((1 - weight) * np.take(coarse, low, axis=axis) + weight * np.take(coarse, high, axis=axis)).astype(
        np.float32)


def border_faces(binary: np.ndarray) -> list[str]:
    """Names of the image faces ("i-", "i+", ...) the (K, J, I) mask touches."""
    faces = []
    for axis, name in zip((2, 1, 0), "ijk"):
        if np.take(binary, 0, axis=axis).any():
            faces.append(f"{name}-")
        if np.take(binary, -1, axis=axis).any():
            faces.append(f"{name}+")
    return faces


def prepare_mask(mask: sitk.Image, source: str | os.PathLike = "mask", all_parts: bool = False) -> PreparedMask:
    """Keep the largest connected part (or all with ``all_parts``), check it, compute its SDF."""
    binary = sitk.GetArrayFromImage(mask) > 0
    if not binary.any():
        raise InputError(source, "empty mask (no voxels of the chosen label)")
    labels, parts = ndimage.label(binary, structure=np.ones((3, 3, 3)))
    warnings = []
    if parts > 1 and not all_parts:
        sizes = np.bincount(labels.ravel())[1:]
        keep = int(np.argmax(sizes)) + 1
        binary = labels == keep
        warnings.append(f"{source}: {parts} disconnected parts; fitting the largest ({sizes.max()} of "
                        f"{sizes.sum()} voxels; pass --all-parts to fit them together)")
    if binary.sum() < 8:
        raise InputError(source, f"mask too small to fit ({int(binary.sum())} voxels)")
    touched = border_faces(binary)
    if touched:
        warnings.append(f"{source}: the mask touches the image border ({', '.join(touched)}): a partial organ; "
                        "the part outside the image is the shape model's guess")
    kept = sitk.GetImageFromArray(binary.astype(np.uint8))
    kept.CopyInformation(mask)
    spacing = tuple(mask.GetSpacing()[::-1])
    repeated = repeated_slices(binary)
    if repeated is None:
        return PreparedMask(kept, signed_distance_map(binary, spacing), parts, touched, warnings)
    axis, period = repeated
    name = "kji"[axis]
    warnings.append(f"{source}: every {period} slices along {name} are identical (upsampled from thick slices?): "
                    "interpolating between them")
    sdf = interpolated_distance_map(binary, spacing, axis, period)
    return PreparedMask(kept, sdf, parts, touched, warnings, (name, period))


def boundary_points(prepared: PreparedMask) -> np.ndarray:
    """(N, 3) LPS mm: centres of the voxel faces between inside and outside, image border excluded."""
    binary = sitk.GetArrayViewFromImage(prepared.mask) > 0
    points = []
    for axis in range(3):
        a = np.take(binary, np.arange(binary.shape[axis] - 1), axis=axis)
        b = np.take(binary, np.arange(1, binary.shape[axis]), axis=axis)
        kji = np.argwhere(a != b).astype(np.float64)
        kji[:, axis] += 0.5
        points.append(kji)
    return index_to_lps(prepared.mask, np.concatenate(points)[:, ::-1])


class _SampleWithGradient(torch.autograd.Function):
    """Trilinear samples of a map whose backward uses a precomputed gradient map (DALS supp. B):
    smoother than differentiating the trilinear interpolant, which is piecewise constant."""

    @staticmethod
    def forward(ctx, coords, values, gradients):
        ctx.save_for_backward(coords, gradients)
        return _trilinear(values, coords)

    @staticmethod
    def backward(ctx, grad_out):
        coords, gradients = ctx.saved_tensors
        return grad_out[..., None] * _trilinear(gradients, coords), None, None


def _trilinear(volume: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """(C, K, J, I) or (K, J, I) volume at (N, 3) normalised (x=i, y=j, z=k) coords -> (N, C) or (N,)."""
    squeeze = volume.dim() == 3
    vol = volume[None, None] if squeeze else volume[None]
    out = torch.nn.functional.grid_sample(vol, coords.reshape(1, -1, 1, 1, 3), mode="bilinear",
                                          padding_mode="border", align_corners=True)[0, :, :, 0, 0]
    return out[0] if squeeze else out.T


class DistanceSampler:
    """Samples a (K, J, I) distance map (mm) at LPS points, with a validity mask; differentiable with
    respect to the points through the map's precomputed Sobel gradients (made on first need)."""

    def __init__(self, values_mm: np.ndarray, reference: sitk.Image):
        self._values_mm = values_mm
        self._reference = reference
        self.values = torch.tensor(values_mm, dtype=torch.float32)
        size = np.array(reference.GetSize(), dtype=np.float64)
        # Normalised coords c = ijk * 2 / (size - 1) - 1, so dD/dc = dD/dijk * (size - 1) / 2.
        to_index = np.linalg.inv(index_to_physical(reference))
        self._lps_to_coords = torch.tensor(np.diag(np.append(2 / (size - 1), 1)) @ to_index, dtype=torch.float32)
        self._lps_to_coords[:3, 3] -= 1

    @cached_property
    def gradients(self) -> torch.Tensor:
        """(3, K, J, I) derivatives of the map along the normalised (x=i, y=j, z=k) coordinates."""
        spacing_kji = np.array(self._reference.GetSpacing())[::-1]
        grads = np.stack([ndimage.sobel(self._values_mm, axis=a) / (32 * s) for a, s in enumerate(spacing_kji)])
        grad_ijk = grads[::-1] * np.array(self._reference.GetSpacing())[:, None, None, None]  # per index step
        size = np.array(self._reference.GetSize(), dtype=np.float64)
        return torch.tensor(grad_ijk * ((size - 1) / 2)[:, None, None, None], dtype=torch.float32)

    def coords(self, points_lps: torch.Tensor) -> torch.Tensor:
        m = self._lps_to_coords.to(points_lps)
        return points_lps @ m[:3, :3].T + m[:3, 3]

    def __call__(self, points_lps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3) LPS mm -> (values (N,) mm, inside_image (N,) bool)."""
        coords = self.coords(points_lps)
        valid = (coords.abs() <= 1).all(-1)
        if not (torch.is_grad_enabled() and points_lps.requires_grad):
            return _trilinear(self.values, coords), valid
        return _SampleWithGradient.apply(coords, self.values, self.gradients), valid
