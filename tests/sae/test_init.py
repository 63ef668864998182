"""The pre-bias initialisation: geometric median by Weiszfeld iterations."""

import torch

from sae.init import data_median, geometric_median


def test_geometric_median_is_a_stationary_point_of_the_distance_sum():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g, dtype=torch.float64) + 3.0
    m = geometric_median(x, iters=200)
    # d/dm sum_i ||x_i - m|| = -sum_i (x_i - m) / ||x_i - m||, zero at the median.
    unit = (x - m) / (x - m).norm(dim=1, keepdim=True)
    assert unit.sum(0).norm() < 1e-3 * len(x)
    assert (x - m).norm(dim=1).sum() < (x - x.mean(0)).norm(dim=1).sum()


def test_geometric_median_ignores_a_far_outlier_unlike_the_mean():
    x = torch.zeros(101, 3)
    x[:100] = torch.randn(100, 3, generator=torch.Generator().manual_seed(1)) * 0.01
    x[100] = torch.tensor([1e4, 0.0, 0.0])
    m = geometric_median(x)
    assert m.norm() < 0.1
    assert x.mean(0).norm() > 50


def test_zero_iterations_give_the_coordinate_wise_median():
    x = torch.tensor([[0.0, 5.0], [1.0, 6.0], [9.0, 7.0]])
    assert torch.equal(data_median(x, iters=0), torch.tensor([1.0, 6.0]))
