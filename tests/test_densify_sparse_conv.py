"""Submanifold sparse convolution (pure PyTorch) against a dense `F.conv3d`, gradients, duplicate-cell rule."""

import pytest
import torch
import torch.nn.functional as F

from gdensify.densify import point_transformer as pt
from gdensify.densify.point_transformer import SubmanifoldConv3d, build_voxel_map


def _random_cells(n, size, seed, batches=1):
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(size ** 3 * batches, generator=g)[:n]
    b, rest = cells // size ** 3, cells % size ** 3
    grid = torch.stack([rest // size ** 2, (rest // size) % size, rest % size], dim=-1)
    return grid, b


def _dense_reference(conv, grid, batch, feat, size):
    """Scatter to a dense grid per object, F.conv3d with padding 1, read back the active sites."""
    B = int(batch.max()) + 1
    dense = feat.new_zeros(B, conv.in_channels, size, size, size)
    dense[batch, :, grid[:, 0], grid[:, 1], grid[:, 2]] = feat
    w = conv.weight.permute(0, 4, 1, 2, 3)  # (C_out, C_in, 3, 3, 3)
    out = F.conv3d(dense, w, conv.bias, padding=1)
    return out[batch, :, grid[:, 0], grid[:, 1], grid[:, 2]]


@pytest.mark.parametrize("dense_path", [False, True])
@pytest.mark.parametrize("n,size", [(60, 6), (200, 6), (5, 8)])
def test_matches_dense_conv3d(monkeypatch, dense_path, n, size):
    monkeypatch.setattr(pt, "_DENSE_MIN_PAIRS", 0.0 if dense_path else 1e9)
    torch.manual_seed(0)
    grid, batch = _random_cells(n, size, seed=n, batches=2)
    conv = SubmanifoldConv3d(5, 7).double()
    feat = torch.randn(n, 5, dtype=torch.float64)
    vm = build_voxel_map(grid, batch, 2)
    assert vm.dense == dense_path
    out = conv(feat, vm)
    ref = _dense_reference(conv, grid, batch, feat, size)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dense_path", [False, True])
def test_gradcheck(monkeypatch, dense_path):
    monkeypatch.setattr(pt, "_DENSE_MIN_PAIRS", 0.0 if dense_path else 1e9)
    grid, batch = _random_cells(20, 3, seed=3)
    vm = build_voxel_map(grid, batch, 1)
    conv = SubmanifoldConv3d(3, 2).double()
    feat = torch.randn(20, 3, dtype=torch.float64, requires_grad=True)
    w = conv.weight.detach().clone().requires_grad_(True)
    conv.weight = torch.nn.Parameter(w)

    def f(x, weight):
        wk = weight.permute(1, 2, 3, 4, 0).reshape(27, 3, 2)
        return pt._SubmanifoldConvFunction.apply(x, wk, vm)

    assert torch.autograd.gradcheck(f, (feat, w))


def test_dense_and_sparse_paths_agree(monkeypatch):
    grid, batch = _random_cells(300, 8, seed=5)
    feat = torch.randn(300, 16, requires_grad=True)
    conv = SubmanifoldConv3d(16, 8)
    outs, grads = [], []
    for thr in (0.0, 1e9):
        monkeypatch.setattr(pt, "_DENSE_MIN_PAIRS", thr)
        vm = build_voxel_map(grid, batch, 1)
        conv.zero_grad()
        feat.grad = None
        out = conv(feat, vm)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append((feat.grad.clone(), conv.weight.grad.clone()))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-4)


def test_several_points_in_one_cell_use_the_cell_mean():
    """Rule: a cell's input is the mean of its points; every point of the cell gets the cell's output."""
    grid = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 1, 2], [3, 3, 3]])
    batch = torch.zeros(4, dtype=torch.long)
    feat = torch.randn(4, 3, dtype=torch.float64)
    conv = SubmanifoldConv3d(3, 4).double()
    out = conv(feat, build_voxel_map(grid, batch, 1))
    torch.testing.assert_close(out[0], out[1])
    unique_grid = grid[[0, 2, 3]]
    unique_feat = torch.stack([feat[:2].mean(0), feat[2], feat[3]])
    ref = _dense_reference(conv, unique_grid, batch[:3], unique_feat, 5)
    torch.testing.assert_close(out[[0, 2, 3]], ref)


def test_objects_do_not_see_each_other():
    grid = torch.tensor([[2, 2, 2], [2, 2, 3]])
    feat = torch.randn(2, 3)
    conv = SubmanifoldConv3d(3, 3)
    apart = conv(feat, build_voxel_map(grid, torch.tensor([0, 1]), 2))
    alone = torch.cat([conv(feat[i:i + 1], build_voxel_map(grid[i:i + 1], torch.zeros(1, dtype=torch.long), 1))
                       for i in range(2)])
    torch.testing.assert_close(apart, alone)


def test_weight_layout_is_spconv_krsc():
    conv = SubmanifoldConv3d(5, 7)
    assert conv.weight.shape == (7, 3, 3, 3, 5)
