"""Fixed-size image grids for the pose agent and the U-Net baseline.

Every image is resampled onto a grid of fixed size, spacing and orientation, centred
on the image's physical centre, so a network sees the same geometry whatever the crop
size and however the scan's voxels are stored. ``prep.surface.index_to_physical`` (4x4) maps the grid's
continuous (i, j, k) indices to LPS millimetres; arrays are stored (k, j, i).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..io.frames import index_to_physical


@dataclass(frozen=True)
class GridSpec:
    size: tuple[int, int, int] = (32, 44, 32)  # (i, j, k) voxels
    spacing_mm: float = 1.5

    def to_dict(self) -> dict:
        return {"size": list(self.size), "spacing_mm": self.spacing_mm}

    @classmethod
    def from_dict(cls, d: dict) -> "GridSpec":
        return cls(tuple(int(v) for v in d["size"]), float(d["spacing_mm"]))


# 1 mm grid that holds every hippocampus crop (31-43 x 40-59 x 24-46 voxels): the U-Net's and the
# refinement's input.
FINE_GRID = GridSpec((48, 64, 48), 1.0)
# The grids' axes in LPS: those of every training crop (i -> right, j -> anterior, k -> superior). A scan
# stored in another orientation (a DICOM series: i -> left, j -> posterior) is resampled into it; with
# its own axes the networks saw a mirrored head and DISSM found no hippocampus.
GRID_DIRECTION = np.diag([-1.0, -1.0, 1.0])


def centred_grid(image: sitk.Image, spec: GridSpec) -> sitk.Image:
    """An empty reference image of ``spec``, axes :data:`GRID_DIRECTION`, centred on ``image``'s
    physical centre.

    For an image in the grid's orientation, along axes where it has the grid's spacing, the grid
    is shifted by up to half a voxel so its voxels coincide with the image's: resampling there
    copies voxels instead of interpolating between them (a half-voxel shift costs a small organ
    several Dice points).
    """
    image_size, image_spacing = np.array(image.GetSize()), np.array(image.GetSpacing())
    size = np.array(spec.size)
    # Continuous image index of the grid's first voxel when centred exactly.
    first = (image_size - 1) / 2 - (size - 1) / 2 * spec.spacing_mm / image_spacing
    if np.allclose(np.array(image.GetDirection()).reshape(3, 3), GRID_DIRECTION, atol=1e-6):
        same_spacing = np.isclose(image_spacing, spec.spacing_mm)
        first[same_spacing] = np.floor(first[same_spacing])
        origin = np.array(image.TransformContinuousIndexToPhysicalPoint(first.tolist()))
    else:
        centre = np.array(image.TransformContinuousIndexToPhysicalPoint(((image_size - 1) / 2).tolist()))
        origin = centre - GRID_DIRECTION @ ((size - 1) / 2 * spec.spacing_mm)
    reference = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    reference.SetSpacing([spec.spacing_mm] * 3)
    reference.SetDirection(GRID_DIRECTION.ravel().tolist())
    reference.SetOrigin(origin.tolist())
    return reference


def grid_points(reference: sitk.Image) -> np.ndarray:
    """(K, J, I, 3) LPS mm of every voxel centre of ``reference``, in array order."""
    size = reference.GetSize()
    k, j, i = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in size[::-1]], indexing="ij")
    ijk1 = np.stack([i, j, k, np.ones_like(i)], -1)
    return (ijk1 @ index_to_physical(reference).T)[..., :3]


def intensity_stats(image: sitk.Image) -> tuple[float, float]:
    """(median, 1-99 percentile spread) of the intensities: the normalisation of :func:`normalised`."""
    values = sitk.GetArrayViewFromImage(image).astype(np.float64)
    p1, p50, p99 = np.percentile(values, [1, 50, 99])
    return float(p50), float(max(p99 - p1, 1e-6))


def normalised(image: sitk.Image) -> sitk.Image:
    """Float image shifted by its median and divided by its 1-99 percentile spread (MR has no fixed unit)."""
    median, spread = intensity_stats(image)
    return sitk.ShiftScale(sitk.Cast(image, sitk.sitkFloat32), -median, 1.0 / spread)


def resample_to(image: sitk.Image, reference: sitk.Image, nearest: bool = False) -> np.ndarray:
    """``image`` sampled on ``reference``'s voxels, (K, J, I) float32; zero outside."""
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def agent_input(image: sitk.Image, spec: GridSpec) -> tuple[np.ndarray, np.ndarray, sitk.Image]:
    """(normalised image on the grid (K, J, I), LPS mm of its voxels (K, J, I, 3), the grid reference)."""
    reference = centred_grid(image, spec)
    return resample_to(normalised(image), reference), grid_points(reference).astype(np.float32), reference


def intensity_warning(spread_range: list[float], image: sitk.Image, source: str) -> str | None:
    """A message when the image's intensities lie far outside those of the training images
    (``spread_range``: the lowest and highest 1-99 percentile spread among them)."""
    median, spread = intensity_stats(image)
    lo, hi = spread_range
    if not lo / 3 <= spread <= hi * 3:
        return (f"{source}: intensity spread {spread:.3g} is far from the training images' {lo:.3g}-{hi:.3g} "
                "(another modality?); fitting anyway")
    return None
