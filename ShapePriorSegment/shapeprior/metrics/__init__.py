"""Evaluation metrics: surface distances and mesh quality (trimesh), voxel overlap and distances."""

from .surface import mesh_quality, self_intersection_fraction, surface_metrics
from .volume import assd_voxel, dice, hd95_voxel

__all__ = ["assd_voxel", "dice", "hd95_voxel", "mesh_quality", "self_intersection_fraction", "surface_metrics"]
