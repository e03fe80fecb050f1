"""shapeprior: deep statistical shape priors for organ delineation.

The Qt-free core of the ShapePriorSegment 3D Slicer extension. Layers, each
depending only on those before it: ``io`` and ``prep`` (data preparation) ->
``geometry`` and ``metrics`` -> models -> fitting -> adapters (``cli``, MRML bridge).
"""

from pathlib import Path

__version__ = "0.1.0"


def resources_dir() -> Path:
    """The shipped models and sample data: ``shapeprior/resources`` in an installed wheel, the
    repository's ``Resources`` folder in a source checkout (editable install)."""
    packaged = Path(__file__).resolve().parent / "resources"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "Resources"
