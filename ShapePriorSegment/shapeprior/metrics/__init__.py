"""Evaluation metrics: surface distances and mesh quality (trimesh), voxel overlap and distances."""

from .surface import mesh_quality, self_intersection_fraction, surface_metrics
from .volume import assd_voxel, dice, hd95_voxel, mask_surface, surface_distances_of_masks

__all__ = [
    "assd_voxel", "dice", "hd95_voxel", "mask_surface", "mesh_quality", "self_intersection_fraction",
    "surface_distances_of_masks", "surface_metrics",
]
