"""An annotation's size against the sizes a model was trained on: its extent before a fit, its fitted
scale after it. Only the bundle's metadata is read (no torch), so the command line checks before it
loads the model."""

from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from ..models.bundle import ModelBundle

# Fitted sizes beyond these factors of the training range are refused: the curves
# are not of this organ, or not in millimetres.
SIZE_TOLERANCE = 2.0


def check_size(bundle: ModelBundle, scale: float, source: str | os.PathLike) -> None:
    """Refuse a fitted scale (mm per unit) beyond the model's training range, widened by
    :data:`SIZE_TOLERANCE`."""
    lo, hi = bundle.metadata["normalisation"]["mm_per_unit_range"]
    if not lo / SIZE_TOLERANCE <= scale <= hi * SIZE_TOLERANCE:
        raise InputError(
            source,
            f"annotation is {scale / np.median([lo, hi]):.2f}x the typical {bundle.organ} size "
            f"(model range {lo:.0f}-{hi:.0f} mm per unit, got {scale:.0f}): not this organ, or not in mm?",
        )


def check_extent(bundle: ModelBundle, points_lps: np.ndarray, source: str | os.PathLike) -> None:
    """Refuse, before any fitting, an annotation far larger than the organ (micrometres, another
    organ) or a speck: its radius about its centre against the model's training sizes (mm per unit
    is the organ's bounding-sphere radius). Generous: a partial annotation may span less."""
    lo, hi = bundle.metadata["normalisation"]["mm_per_unit_range"]
    radius = float(np.linalg.norm(points_lps - points_lps.mean(0), axis=1).max())
    if not lo / (10 * SIZE_TOLERANCE) <= radius <= 2 * hi * SIZE_TOLERANCE:
        raise InputError(source, f"annotation is {radius / np.median([lo, hi]):.2f}x the typical {bundle.organ} size "
                         f"({2 * radius:.3g} mm across; the model's are {2 * lo:.0f}-{2 * hi:.0f} mm): not this "
                         "organ, or not in mm?")
