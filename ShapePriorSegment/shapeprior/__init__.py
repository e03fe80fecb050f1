"""shapeprior: deep statistical shape priors for organ delineation.

The Qt-free core of the ShapePriorSegment 3D Slicer extension. Layers, each
depending only on those before it: ``io`` and ``prep`` (data preparation) ->
``geometry`` and ``metrics`` -> models -> fitting -> adapters (``cli``, MRML bridge).
"""

from pathlib import Path

__version__ = "0.1.0"


def resources_dir() -> Path:
    """The shipped models and sample data: ``shapeprior/resources`` in an installed wheel,
    ``Resources`` beside the package in an installed Slicer extension, the repository's
    ``Resources`` folder in a source checkout (editable install)."""
    here = Path(__file__).resolve().parent
    candidates = [here / "resources", here.parent / "Resources", here.parents[1] / "Resources"]
    return next((c for c in candidates if c.is_dir()), candidates[-1])
