"""Qt-free bridge between the core and a Slicer MRML scene.

Works inside 3D Slicer and with the ``slicer-core`` wheel (real MRML without an application);
the core never imports it. MRML is touched on the main thread only.

- :mod:`.nodes`: read curves, volumes, labelmaps and segments from a scene (LPS arrays), add inputs.
- :mod:`.writer`: the one writer of a fit's :class:`~shapeprior.fit.outcome.Outcome` (model node, segment).
- :mod:`.workflows`: fits of scene content, synchronous or as background jobs.
- :mod:`.scene`: application-like scenes and ``.mrb`` scene bundles.
"""

from .nodes import (
    Annotation,
    add_closed_curves,
    add_labelmap_node,
    add_volume_node,
    read_closed_curves,
    read_curve_annotation,
    read_mask_node,
    read_painted_segment_annotation,
    read_segment_mask,
    read_volume_image,
    read_volume_mask,
)
from .workflows import (
    fit_annotation,
    fit_contours_in_scene,
    fit_image_in_scene,
    fit_job,
    fit_painted_segment_in_scene,
    image_fit_job,
    mask_refine_job,
    refine_mask_in_scene,
)
from .writer import (
    CLOSED_SURFACE,
    DISTANCE_ARRAY,
    add_outcome_to_scene,
    add_surface_to_scene,
    polydata_to_mesh,
    surface_polydata,
    unique_segment_name,
)

__all__ = [
    "Annotation", "add_closed_curves", "add_labelmap_node", "add_volume_node", "read_closed_curves",
    "read_curve_annotation", "read_mask_node", "read_painted_segment_annotation", "read_segment_mask",
    "read_volume_image", "read_volume_mask", "fit_annotation", "fit_contours_in_scene", "fit_image_in_scene",
    "fit_job", "fit_painted_segment_in_scene", "image_fit_job", "mask_refine_job", "refine_mask_in_scene",
    "CLOSED_SURFACE", "DISTANCE_ARRAY", "add_outcome_to_scene", "add_surface_to_scene", "polydata_to_mesh", "surface_polydata", "unique_segment_name",
]
