"""shapeprior.geometry and shapeprior.transform, checked against independent computations
(trimesh, scipy, libigl, numpy) rather than against themselves."""

from __future__ import annotations

import math

import igl
import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from shapeprior.geometry import (
    chamfer_distance,
    face_areas,
    icosphere,
    laplacian_energy,
    matrix_to_rotation_6d,
    nearest_distances,
    plane_intersection_segments,
    quality_loss,
    rotation_6d_to_matrix,
    sample_plane_intersection,
    sample_surface,
    triangle_quality,
    uniform_laplacian,
)
from shapeprior.transform import Similarity


def _surface_distance(points: torch.Tensor, verts: torch.Tensor, faces: torch.Tensor) -> np.ndarray:
    """Exact point-to-mesh distances by libigl."""
    d2, _, _ = igl.point_mesh_squared_distance(
        points.detach().double().numpy(), verts.detach().double().numpy(), faces.numpy()
    )
    return np.sqrt(d2)


def _bumpy_sphere(level: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Icosphere with radially jittered vertices (float64): irregular but still embedded."""
    verts, faces = icosphere(level, dtype=torch.float64)
    radii = 1 + 0.1 * torch.rand(len(verts), 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return verts * radii, faces


# ---------------------------------------------------------------- icosphere


@pytest.mark.parametrize("level, num_verts, num_faces", [(3, 642, 1280), (4, 2562, 5120)])
def test_icosphere_counts_norm_orientation(level, num_verts, num_faces):
    verts, faces = icosphere(level)
    assert verts.shape == (num_verts, 3) and faces.shape == (num_faces, 3)
    assert verts.dtype == torch.float32 and faces.dtype == torch.int64
    np.testing.assert_allclose(torch.linalg.vector_norm(verts, dim=1).numpy(), 1.0, atol=1e-6)
    v, f = verts.double().numpy(), faces.numpy()
    normals = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    assert (np.einsum("ij,ij->i", normals, v[f].mean(1)) > 0).all()  # outward
    mesh = trimesh.Trimesh(v, f, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0


def test_icosphere_dtype():
    verts, _ = icosphere(1, dtype=torch.float64, device="cpu")
    assert verts.dtype == torch.float64


# ---------------------------------------------------------------- Laplacian


def test_uniform_laplacian_matches_dense_d_minus_a():
    verts, faces = icosphere(2, dtype=torch.float64)
    lap = uniform_laplacian(faces, len(verts), dtype=torch.float64).to_dense().numpy()
    edges = trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False).edges_unique
    adjacency = np.zeros((len(verts), len(verts)))
    adjacency[edges[:, 0], edges[:, 1]] = adjacency[edges[:, 1], edges[:, 0]] = 1
    np.testing.assert_array_equal(lap, np.diag(adjacency.sum(1)) - adjacency)
    np.testing.assert_array_equal(lap, lap.T)
    np.testing.assert_allclose(lap.sum(1), 0)
    assert np.linalg.eigvalsh(lap).min() >= -1e-6


def test_laplacian_energy_values_and_batch():
    verts, faces = icosphere(1, dtype=torch.float64)
    lap = uniform_laplacian(faces, len(verts), dtype=torch.float64)
    z = torch.randn(2, len(verts), 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    edges = torch.as_tensor(trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False).edges_unique.copy())
    edge_sum = ((z[0, edges[:, 0]] - z[0, edges[:, 1]]) ** 2).sum()
    torch.testing.assert_close(laplacian_energy(z[0], lap, power=1), edge_sum)
    torch.testing.assert_close(laplacian_energy(z[0], lap), ((lap.to_dense() @ z[0]) ** 2).sum())
    batched = laplacian_energy(z, lap)
    assert batched.shape == (2,)
    torch.testing.assert_close(batched[1], laplacian_energy(z[1], lap))
    # float32 laplacian, float64 signal: the signal's dtype wins.
    lap32 = uniform_laplacian(faces, len(verts))
    torch.testing.assert_close(laplacian_energy(z[0], lap32), laplacian_energy(z[0], lap))


def test_laplacian_energy_gradcheck():
    verts, faces = icosphere(0, dtype=torch.float64)
    lap = uniform_laplacian(faces, len(verts), dtype=torch.float64)
    z = torch.randn(2, len(verts), 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: laplacian_energy(x, lap, power=2), (z,))
    assert torch.autograd.gradcheck(lambda x: laplacian_energy(x, lap, power=1), (z,))


# ---------------------------------------------------------------- quality


def test_quality_equilateral_and_degenerate():
    tri = torch.tensor([[0.0, 0, 0], [2, 0, 0], [1, math.sqrt(3), 0], [3, 0, 0], [0, 0, 0]])
    q = triangle_quality(tri, torch.tensor([[0, 1, 2], [0, 1, 3], [4, 4, 4]]))
    torch.testing.assert_close(q, torch.tensor([1.0, 0.0, 0.0]))


def test_quality_matches_trimesh():
    verts, faces = _bumpy_sphere(2)
    mesh = trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False)
    tri = mesh.triangles
    sum_sq = sum(np.sum((tri[:, k] - tri[:, (k + 1) % 3]) ** 2, axis=1) for k in range(3))
    expected = 4 * np.sqrt(3) * mesh.area_faces / sum_sq
    np.testing.assert_allclose(triangle_quality(verts, faces).numpy(), expected, rtol=1e-10)
    batch = torch.stack([verts, 2 * verts])  # quality is scale invariant
    loss = quality_loss(batch, faces)
    assert loss.shape == (2,)
    np.testing.assert_allclose(loss.numpy(), 1 - expected.mean(), rtol=0, atol=1e-10)


def test_quality_loss_gradcheck():
    verts, faces = _bumpy_sphere(0)
    assert torch.autograd.gradcheck(lambda v: quality_loss(v, faces), (verts.requires_grad_(),))


# ---------------------------------------------------------------- chamfer


def test_chamfer_matches_kdtree():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 300, 3, generator=gen, dtype=torch.float64)
    y = torch.rand(2, 170, 3, generator=gen, dtype=torch.float64)
    expected_sq, expected = [], []
    for b in range(2):
        dx, _ = cKDTree(y[b].numpy()).query(x[b].numpy())
        dy, _ = cKDTree(x[b].numpy()).query(y[b].numpy())
        expected_sq.append((dx**2).mean() + (dy**2).mean())
        expected.append(dx.mean() + dy.mean())
        # chunk smaller than both sets, and not dividing them, exercises the blocking
        np.testing.assert_allclose(nearest_distances(x[b], y[b], chunk=7).numpy(), dx, rtol=1e-12)
    np.testing.assert_allclose(chamfer_distance(x, y, chunk=7).numpy(), expected_sq, rtol=1e-12)
    np.testing.assert_allclose(chamfer_distance(x, y, squared=False, chunk=64).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(chamfer_distance(x[0], y[0]).item(), expected_sq[0], rtol=1e-12)


def test_nearest_distances_far_from_origin_float32():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(2000, 3, generator=gen) + 1000
    y = torch.rand(2000, 3, generator=gen) + 1000
    expected, _ = cKDTree(y.double().numpy()).query(x.double().numpy())
    np.testing.assert_allclose(nearest_distances(x, y).numpy(), expected, atol=1e-3)


def test_chamfer_gradcheck():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(2, 9, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: chamfer_distance(a, b, chunk=4), (x, y))
    assert torch.autograd.gradcheck(lambda a, b: chamfer_distance(a, b, squared=False, chunk=4), (x, y))


def test_chamfer_coincident_points_have_finite_gradient():
    x = torch.rand(5, 3, dtype=torch.float64, requires_grad=True)
    chamfer_distance(x, x.detach().clone(), squared=False).backward()
    assert torch.isfinite(x.grad).all()


# ---------------------------------------------------------------- sampling


def test_face_areas_match_trimesh():
    verts, faces = _bumpy_sphere(2)
    expected = trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False).area_faces
    np.testing.assert_allclose(face_areas(verts, faces).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(face_areas(torch.stack([verts, 3 * verts]), faces)[1].numpy(), 9 * expected, rtol=1e-12)


def test_sampled_points_lie_on_surface():
    verts, faces = _bumpy_sphere(2)
    points = sample_surface(verts, faces, 2000, generator=torch.Generator().manual_seed(0))
    assert points.shape == (2000, 3) and points.dtype == torch.float64
    assert _surface_distance(points, verts, faces).max() < 1e-12


def test_sampling_is_area_weighted_and_uniform_per_face():
    # Triangle 0 (x < 1) has area 0.5, triangle 1 (x > 2) area 1.5.
    verts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0], [3, 0, 0], [2, 3, 0]])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    points = sample_surface(verts, faces, 20000, generator=torch.Generator().manual_seed(0))
    in_first = points[:, 0] < 1.5
    assert abs(in_first.float().mean().item() - 0.25) < 0.015
    # Uniform density within a face puts the mean of its points at its centroid.
    torch.testing.assert_close(points[in_first].mean(0), verts[:3].mean(0), atol=0.01, rtol=0)
    torch.testing.assert_close(points[~in_first].mean(0), verts[3:].mean(0), atol=0.02, rtol=0)


def test_sampling_weights_per_batch_element():
    verts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0], [3, 0, 0], [2, 1, 0]])
    second = verts.clone()
    second[5, 1] = 9  # the second element's triangle 1 is 9 times triangle 0
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    points = sample_surface(torch.stack([verts, second]), faces, 10000, generator=torch.Generator().manual_seed(0))
    assert points.shape == (2, 10000, 3)
    share = (points[..., 0] < 1.5).float().mean(1)
    assert abs(share[0].item() - 0.5) < 0.02 and abs(share[1].item() - 0.1) < 0.02


def test_sampling_reproducible_and_gradcheck():
    verts, faces = _bumpy_sphere(0)

    def draw(v):
        return sample_surface(v, faces, 12, generator=torch.Generator().manual_seed(3))

    torch.testing.assert_close(draw(verts), draw(verts))
    assert torch.autograd.gradcheck(draw, (verts.requires_grad_(),))
    batch = torch.stack([verts, verts + 1]).detach().requires_grad_()
    assert torch.autograd.gradcheck(draw, (batch,))


# ---------------------------------------------------------------- slicing


def test_plane_intersection_points_on_plane_and_mesh():
    verts, faces = _bumpy_sphere(2)
    origin = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    normal = torch.tensor([0.3, 1.0, -0.5], dtype=torch.float64)
    segments = plane_intersection_segments(verts, faces, origin, 7 * normal)  # any normal length
    assert segments.ndim == 3 and segments.shape[1:] == (2, 3) and len(segments) > 10
    points = segments.reshape(-1, 3)
    np.testing.assert_allclose(((points - origin) @ normal).numpy(), 0, atol=1e-12)
    assert _surface_distance(points, verts, faces).max() < 1e-12
    # Closed, consistently oriented loops: every segment end is some segment's start.
    starts = {tuple(p) for p in np.round(segments[:, 0].numpy(), 9)}
    ends = {tuple(p) for p in np.round(segments[:, 1].numpy(), 9)}
    assert starts == ends and len(starts) == len(segments)
    # ... running counter-clockwise about the normal: positive signed area of the cross-section.
    centred = segments - origin
    assert (torch.linalg.cross(centred[:, 0], centred[:, 1]) @ normal).sum() > 0


def test_plane_intersection_length_of_great_circle():
    verts, faces = icosphere(5, dtype=torch.float64)
    origin = torch.zeros(3, dtype=torch.float64)
    normal = torch.tensor([0.2, 0.1, 1.0], dtype=torch.float64)
    segments = plane_intersection_segments(verts, faces, origin, normal)
    length = torch.linalg.vector_norm(segments[:, 1] - segments[:, 0], dim=1).sum().item()
    assert abs(length - 2 * math.pi) < 2e-3
    lines = trimesh.intersections.mesh_plane(
        trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False), normal.numpy(), origin.numpy()
    )
    assert len(lines) == len(segments)
    assert length == pytest.approx(np.linalg.norm(lines[:, 1] - lines[:, 0], axis=1).sum(), rel=1e-10)


def test_plane_through_vertices_is_finite():
    verts, faces = icosphere(2, dtype=torch.float64)  # has vertices exactly on z = 0
    segments = plane_intersection_segments(verts, faces, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0]))
    assert len(segments) > 0 and torch.isfinite(segments).all()
    np.testing.assert_allclose(segments[..., 2].numpy(), 0, atol=1e-15)


def test_plane_missing_mesh_gives_empty():
    verts, faces = icosphere(1)
    origin, normal = torch.tensor([0.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 1.0])
    assert plane_intersection_segments(verts, faces, origin, normal).shape == (0, 2, 3)
    assert sample_plane_intersection(verts, faces, origin, normal, 10).shape == (0, 3)


def test_sample_plane_intersection_on_curve_and_length_weighted():
    verts, faces = _bumpy_sphere(2)
    origin = torch.tensor([0.0, 0.0, 0.05], dtype=torch.float64)
    normal = torch.tensor([0.1, 0.2, 1.0], dtype=torch.float64)
    points = sample_plane_intersection(verts, faces, origin, normal, 5000, torch.Generator().manual_seed(0))
    assert points.shape == (5000, 3)
    np.testing.assert_allclose(((points - origin) @ normal).numpy(), 0, atol=1e-12)
    assert _surface_distance(points, verts, faces).max() < 1e-12
    # Length weighting: the share of points per face follows the share of curve length per face.
    segments = plane_intersection_segments(verts, faces, origin, normal).numpy()
    lengths = np.linalg.norm(segments[:, 1] - segments[:, 0], axis=1)
    ab = segments[:, 1] - segments[:, 0]
    rel = points.numpy()[:, None] - segments[None, :, 0]
    t = np.clip(np.einsum("psk,sk->ps", rel, ab) / (lengths**2), 0, 1)
    owner = np.linalg.norm(rel - t[..., None] * ab, axis=2).argmin(1)
    counts = np.bincount(owner, minlength=len(segments))
    longest = np.argsort(lengths)[-5:]
    np.testing.assert_allclose(counts[longest] / 5000, lengths[longest] / lengths.sum(), atol=0.01)


def test_sample_plane_intersection_gradcheck():
    verts, faces = _bumpy_sphere(1)
    origin = torch.tensor([0.05, -0.03, 0.11], dtype=torch.float64)
    normal = torch.tensor([0.3, 0.2, 1.0], dtype=torch.float64)

    def draw(v):
        return sample_plane_intersection(v, faces, origin, normal, 8, torch.Generator().manual_seed(1))

    assert torch.autograd.gradcheck(draw, (verts.requires_grad_(),))


# ---------------------------------------------------------------- rotation


def test_rotation_6d_round_trip_and_identity():
    matrices = torch.as_tensor(Rotation.random(50, random_state=0).as_matrix())
    torch.testing.assert_close(rotation_6d_to_matrix(matrix_to_rotation_6d(matrices)), matrices)
    eye6 = matrix_to_rotation_6d(torch.eye(3))
    torch.testing.assert_close(eye6, torch.tensor([1.0, 0, 0, 0, 1, 0]))
    torch.testing.assert_close(rotation_6d_to_matrix(eye6), torch.eye(3))


def test_rotation_6d_gives_rotations_with_rows_convention():
    d6 = torch.randn(4, 7, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rot = rotation_6d_to_matrix(d6)
    assert rot.shape == (4, 7, 3, 3)
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(rot))
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(4, 7, dtype=torch.float64))
    torch.testing.assert_close(rot[..., 0, :], d6[..., :3] / d6[..., :3].norm(dim=-1, keepdim=True))
    # Row 2 lies in the plane of a1 and a2.
    torch.testing.assert_close((rot[..., 2, :] * d6[..., 3:]).sum(-1), torch.zeros(4, 7, dtype=torch.float64))


def test_rotation_6d_gradcheck():
    d6 = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rotation_6d_to_matrix, (d6,))


# ---------------------------------------------------------------- Similarity


def _random_similarity(seed: int) -> Similarity:
    rng = np.random.default_rng(seed)
    return Similarity(rng.uniform(0.5, 2), Rotation.random(random_state=seed).as_matrix(), rng.normal(size=3))


def test_similarity_inverse_and_compose_round_trips():
    a, b = _random_similarity(0), _random_similarity(1)
    points = np.random.default_rng(2).normal(size=(20, 3))
    np.testing.assert_allclose(a.inverse().apply(a.apply(points)), points, atol=1e-12)
    np.testing.assert_allclose(a.compose(b).apply(points), a.apply(b.apply(points)), atol=1e-12)
    np.testing.assert_allclose(a.compose(a.inverse()).matrix(), np.eye(4), atol=1e-12)
    torch_points = torch.as_tensor(points, dtype=torch.float32)
    out = a.inverse().apply(a.apply(torch_points))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch_points, atol=1e-5, rtol=0)
    composed = a.compose(b).apply(torch.as_tensor(points))
    np.testing.assert_allclose(composed.numpy(), a.apply(b.apply(points)), atol=1e-12)


def test_similarity_matrix_round_trip():
    a = _random_similarity(3)
    back = Similarity.from_matrix(a.matrix())
    assert back.scale == pytest.approx(a.scale)
    np.testing.assert_allclose(back.rotation, a.rotation, atol=1e-12)
    np.testing.assert_allclose(back.translation, a.translation, atol=1e-12)
    points = np.random.default_rng(4).normal(size=(5, 3))
    homogeneous = np.c_[points, np.ones(5)] @ a.matrix().T
    np.testing.assert_allclose(homogeneous[:, :3], a.apply(points), atol=1e-12)
    np.testing.assert_allclose(Similarity.from_dict(a.to_dict()).matrix(), a.matrix(), atol=0)


def test_normal_consistency_matches_trimesh_dihedral_angles():
    from shapeprior.geometry import normal_consistency_loss

    verts, faces = icosphere(2)
    verts = verts * torch.tensor([1.0, 0.7, 0.4])  # an ellipsoid: angles differ across the mesh
    mesh = trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False)
    expected = (1 - np.cos(mesh.face_adjacency_angles)).mean()
    assert float(normal_consistency_loss(verts, faces)) == pytest.approx(expected, rel=1e-4)
    folded = verts.clone()
    folded[0] = -0.5 * folded[0]  # pull one vertex through the surface: a fold
    assert float(normal_consistency_loss(folded, faces)) > 2 * expected
