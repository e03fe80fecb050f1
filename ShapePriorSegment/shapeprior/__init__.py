"""shapeprior: deep statistical shape priors for organ delineation.

The Qt-free core of the ShapePriorSegment 3D Slicer extension. Layers, each
depending only on those before it: ``io`` and ``prep`` (data preparation) ->
``geometry`` and ``metrics`` -> models -> fitting -> adapters (``cli``, MRML bridge).
"""

__version__ = "0.1.0"
