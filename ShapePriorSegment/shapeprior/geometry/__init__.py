"""Differentiable mesh geometry in torch: templates, regularisers, distances, sampling, slicing."""

from .chamfer import chamfer_distance, nearest_distances
from .icosphere import icosphere
from .laplacian import laplacian_energy, uniform_laplacian
from .quality import face_pairs, normal_consistency_loss, quality_loss, triangle_quality
from .rotation import matrix_to_rotation_6d, rotation_6d_to_matrix
from .sampling import face_areas, sample_surface
from .slicing import plane_intersection_segments, sample_plane_intersection

__all__ = [
    "chamfer_distance",
    "face_areas",
    "face_pairs",
    "icosphere",
    "laplacian_energy",
    "matrix_to_rotation_6d",
    "nearest_distances",
    "normal_consistency_loss",
    "plane_intersection_segments",
    "quality_loss",
    "rotation_6d_to_matrix",
    "sample_plane_intersection",
    "sample_surface",
    "triangle_quality",
    "uniform_laplacian",
]
