"""Qt-free bridge between the core and a Slicer MRML scene.

Works inside 3D Slicer and with the ``slicer-core`` wheel (real MRML without an
application). The core never imports this package; the Slicer module and the
command line's ``--out-scene`` do.

- :mod:`.bridge`: read annotations (closed curves, painted segments, masks) from a
  scene, run the fit (optionally in a worker thread), write the model and segment back.
- :mod:`.scene`: application-like scenes and ``.mrb`` scene bundles.
"""
