"""Image and label-mask reading (SimpleITK) with checks that name the file."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha", ".mhd")


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a 3D image; reject missing, unreadable, non-3D, NaN-holding or skewed images."""
    if not os.path.isfile(path):
        raise InputError(path, "no such file")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise InputError(path, "not a readable image (expected NIfTI, NRRD or MHA)") from None
    if image.GetDimension() != 3:
        raise InputError(path, f"a {image.GetDimension()}D image; a 3D volume is required")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, "a multi-component image; a scalar volume is required")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction @ direction.T, np.eye(3), atol=1e-4):
        raise InputError(path, "direction matrix is not orthonormal")
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        if not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
            raise InputError(path, "image holds NaN or infinite values")
    return image


def parse_labels(text: str | None) -> list[int] | None:
    """``"1,2"`` -> ``[1, 2]``; ``None`` -> ``None``."""
    if text is None:
        return None
    try:
        labels = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise InputError(None, f"--label must be integers separated by commas, got {text!r}") from None
    if not labels or any(v <= 0 for v in labels):
        raise InputError(None, f"--label must list positive label values, got {text!r}")
    return labels


def read_mask(path: str | os.PathLike, labels: Sequence[int] | None = None) -> sitk.Image:
    """Read a label image and return the binary (uint8) mask of ``labels``.

    With ``labels=None`` the image must hold exactly one non-zero label.
    Several labels given are merged into one mask (e.g. ``[1, 2]``).
    """
    image = read_image(path)
    array = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(array, np.round(array)):
        raise InputError(path, "not a label image (non-integer values)")
    present = [int(v) for v in np.unique(array) if v != 0]
    if not present:
        raise InputError(path, "empty mask (no non-zero voxels)")
    if labels is None:
        if len(present) > 1:
            shown = ", ".join(map(str, present[:8])) + (", ..." if len(present) > 8 else "")
            raise InputError(path, f"mask holds several labels ({shown}); choose with --label")
        labels = present
    missing = [v for v in labels if v not in present]
    if len(missing) == len(labels):
        raise InputError(path, f"label {','.join(map(str, labels))} not present (labels: {present})")
    binary = np.isin(array, list(labels)).astype(np.uint8)
    mask = sitk.GetImageFromArray(binary)
    mask.CopyInformation(image)
    return mask


def check_same_grid(image: sitk.Image, mask: sitk.Image, image_path, mask_path) -> None:
    """Raise if ``mask`` is not on ``image``'s voxel grid (size, spacing, origin, direction)."""
    if image.GetSize() != mask.GetSize():
        raise InputError(mask_path, f"size {mask.GetSize()} differs from image {image_path} {image.GetSize()}")
    if not np.allclose(image.GetDirection(), mask.GetDirection(), atol=1e-4):
        raise InputError(mask_path, f"direction matrix differs from image {image_path}")
    if not np.allclose(image.GetSpacing(), mask.GetSpacing(), rtol=1e-4):
        raise InputError(mask_path, f"spacing differs from image {image_path}")
    if not np.allclose(image.GetOrigin(), mask.GetOrigin(), atol=1e-3 * max(image.GetSpacing())):
        raise InputError(mask_path, f"origin differs from image {image_path}")
