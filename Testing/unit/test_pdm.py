"""The point distribution model: PCA of corresponding points, whitened loadings, thin-plate-spline warps."""

import numpy as np
import torch

from shapeprior.models.pdm import PointDistributionModel


def test_pdm_reconstructs_training_shapes_and_whitens_loadings():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 3)) * 10
    modes = rng.normal(size=(2, 50, 3))
    scores = rng.normal(size=(30, 2)) * [3.0, 1.0]
    points = base + np.einsum("nk,kpd->npd", scores, modes)
    pdm = PointDistributionModel.fit(points, np.zeros((0, 3), int), base, [f"s{i}" for i in range(30)], 0.999, {})
    assert pdm.size == 2  # two real modes explain everything
    assert np.allclose(pdm.points(pdm.loadings), points, atol=1e-8)
    assert np.allclose(pdm.loadings.std(0, ddof=1), 1.0)  # whitened
    assert np.allclose(pdm.mahalanobis(pdm.loadings), np.linalg.norm(pdm.loadings, axis=1))


def test_deepssm_net_takes_the_64_grid_and_its_pca_layer_gives_the_mean_at_zero():
    from shapeprior.models.deepssm import DeepSSMNet

    mean, basis = torch.randn(20, 3), torch.randn(3, 20, 3)
    net = DeepSSMNet(mean, basis, channels=(2, 2, 2, 2, 2)).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 1, 64, 64, 64)).shape == (2, 3)
    assert torch.allclose(net.points(torch.zeros(1, 3))[0], mean)
