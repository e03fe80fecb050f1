"""Fixtures for the MRML bridge tests: fast fit settings, scenes (the tiny DALS model is in Testing/conftest.py).

The tests need the ``slicer-core`` wheel (real MRML without Qt); each test module skips
itself when it is absent, so nothing here imports it at module level.
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def settings():
    from shapeprior.fit.dals_fit import FitSettings

    return FitSettings(level=2, global_steps=3, vertex_steps=3)


@pytest.fixture
def scene():
    from shapeprior.mrml.scene import new_scene

    return new_scene()


def ellipse(axis: int, radii=(100.0, 80.0, 70.0), offset: float = 0.0, count: int = 24) -> np.ndarray:
    """Closed curve (count, 3) LPS mm: the ellipsoid's outline on the plane ``x[axis] = offset``."""
    t = np.linspace(0.0, 2.0 * np.pi, count, endpoint=False)
    a, b = [i for i in range(3) if i != axis]
    scale = np.sqrt(max(0.0, 1.0 - (offset / radii[axis]) ** 2))
    points = np.zeros((count, 3))
    points[:, a] = scale * radii[a] * np.cos(t)
    points[:, b] = scale * radii[b] * np.sin(t)
    points[:, axis] = offset
    return points + np.array([20.0, -30.0, 40.0])


@pytest.fixture(scope="session")
def liver_curves() -> list[np.ndarray]:
    """Three liver-sized closed curves on an axial, a coronal and a sagittal plane (LPS mm)."""
    return [ellipse(2, offset=10.0), ellipse(1), ellipse(0, offset=-20.0)]


@pytest.fixture(scope="session")
def core_fit(tiny_model, settings, liver_curves):
    """The command line's computation: ``fit_curves`` on the same curves, model and settings."""
    from shapeprior.fit.run import fit_curves

    return fit_curves(liver_curves, tiny_model, settings, "contours")


def node_ids(scene) -> set[str]:
    """Ids of every node in the scene (to check that nothing was added or left behind)."""
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


@pytest.fixture(scope="session")
def mrml():
    """Helpers shared by the test modules (conftest modules are not imported directly)."""
    from types import SimpleNamespace

    return SimpleNamespace(ellipse=ellipse, node_ids=node_ids)
