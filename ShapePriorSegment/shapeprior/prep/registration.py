"""Rigid registration of an image crop to a reference crop (translation, then rotation), as DeepSSM does
before its network sees an image: the network then only has to explain shape and small pose residues."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..transform import Similarity
from .crops import GridSpec, centred_grid, normalised

# The DeepSSM network's input: 64 voxels per axis at 1 mm (it needs at least 60), centred on the reference.
NETWORK_GRID = GridSpec((64, 64, 64), 1.0)


def _register(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform, seed: int) -> sitk.Transform:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsCorrelation()
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.3, seed + 1)  # SimpleITK reads seed 0 as "seed from the clock"
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-3, 100, relaxationFactor=0.6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.0, 0.0])
    method.SetInitialTransform(initial, inPlace=False)
    result = sitk.CompositeTransform(method.Execute(fixed, moving))  # holds the one optimised transform
    return result.GetNthTransform(0)


def register_rigid(image: sitk.Image, reference: sitk.Image, seed: int = 0) -> Similarity:
    """The rigid map reference LPS mm -> ``image`` LPS mm that best overlays ``image`` on ``reference``.

    Both are normalised (median / percentile spread) first; the crops' centres start aligned, a
    translation is found first and a rotation about the reference's centre after it (correlation
    metric, two resolutions, seeded sampling: the same inputs give the same map).
    """
    fixed, moving = normalised(reference), normalised(image)
    start = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                              sitk.CenteredTransformInitializerFilter.GEOMETRY)
    shift = _register(fixed, moving, sitk.TranslationTransform(3, start.GetTranslation()), seed)
    rigid = sitk.Euler3DTransform(start.GetCenter(), 0.0, 0.0, 0.0, shift.GetOffset())
    rigid = sitk.Euler3DTransform(_register(fixed, moving, rigid, seed))
    matrix = np.array(rigid.GetMatrix()).reshape(3, 3)
    centre, offset = np.array(rigid.GetCenter()), np.array(rigid.GetTranslation())
    return Similarity(1.0, matrix, centre + offset - matrix @ centre)


def network_input(image: sitk.Image, reference: sitk.Image, to_image: Similarity) -> np.ndarray:
    """``image`` normalised and resampled on the network grid around ``reference`` through ``to_image``
    (reference mm -> image mm): (64, 64, 64) float32 in (k, j, i) order, zero outside the crop."""
    grid = centred_grid(reference, NETWORK_GRID)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(to_image.rotation.ravel().tolist())
    transform.SetTranslation(to_image.translation.tolist())
    out = sitk.Resample(normalised(image), grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def image_geometry(image: sitk.Image) -> dict:
    """Plain-data record of an image's grid (with its voxels, this rebuilds it: :func:`image_from_array`)."""
    return {"origin": list(image.GetOrigin()), "spacing": list(image.GetSpacing()),
            "direction": list(image.GetDirection())}


def image_from_array(array: np.ndarray, geometry: dict) -> sitk.Image:
    """An image of (K, J, I) voxels on the grid recorded by :func:`image_geometry`."""
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetOrigin(geometry["origin"])
    image.SetSpacing(geometry["spacing"])
    image.SetDirection(geometry["direction"])
    return image
