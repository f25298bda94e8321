"""The released-code rules behind the official parity, checked on their own: the spconv CPU duplicate-voxel rule
against a loop-by-loop reference, the released serialization tie order, and MVSplat's e3nn SH convention."""

import math

import pytest
import torch

from gdensify.densify.point_transformer import SubmanifoldConv3d, build_voxel_map
from gdensify.densify.serialization import serialize
from gdensify.models.mvsplat_geometry import e3nn_wigner_matrices, rotate_sh, sh_rotation_matrices
from gdensify.sh import eval_sh

OFFSETS = [(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)]


def spconv_cpu_reference(conv, grid, batch, feat):
    """Point-level loops: centre tap on the point's own feature; kernel index k < 13 (offset d): the first point
    (lowest index) of a cell receives W_k·f of every point of the cell at +d; k > 13: every point of a cell
    receives W_k·f of the first point of the cell at +d."""
    cells = {}
    for i, (b, c) in enumerate(zip(batch.tolist(), grid.tolist())):
        cells.setdefault((b, *c), []).append(i)
    w = conv.weight
    out = feat @ w[:, 1, 1, 1, :].T + conv.bias
    out = [row for row in out]
    for k, (dx, dy, dz) in enumerate(OFFSETS):
        if k == 13:
            continue
        wk = w[:, dx + 1, dy + 1, dz + 1, :]
        for (b, x, y, z), members in cells.items():
            neighbour = cells.get((b, x + dx, y + dy, z + dz))
            if neighbour is None:
                continue
            if k < 13:
                out[members[0]] = out[members[0]] + wk @ feat[neighbour].sum(0)
            else:
                for p in members:
                    out[p] = out[p] + wk @ feat[neighbour[0]]
    return torch.stack(out)


def _points(n, size, seed, objects=2):
    g = torch.Generator().manual_seed(seed)
    grid = torch.randint(0, size, (n, 3), generator=g)
    batch = torch.randint(0, objects, (n,), generator=g)
    feat = torch.randn(n, 5, generator=g, dtype=torch.float64)
    return grid, batch, feat


@pytest.mark.parametrize("n,size", [(40, 3), (120, 4), (30, 6)])
def test_spconv_cpu_rule_matches_reference(n, size):
    torch.manual_seed(0)
    conv = SubmanifoldConv3d(5, 4).double()
    grid, batch, feat = _points(n, size, seed=n)
    voxels = build_voxel_map(grid, batch, 2)
    assert voxels.max_points_per_voxel > 1
    with torch.no_grad():
        ours = conv(feat, voxels, "spconv_cpu")
        ref = spconv_cpu_reference(conv, grid, batch, feat)
        mean_rule = conv(feat, voxels, "mean")
    assert torch.allclose(ours, ref, atol=1e-12)
    assert (ours - mean_rule).abs().max() > 1e-3


def test_spconv_cpu_rule_single_points_and_gradients():
    torch.manual_seed(1)
    conv = SubmanifoldConv3d(3, 2).double()
    cells = torch.randperm(125)[:30]
    grid = torch.stack([cells // 25, (cells // 5) % 5, cells % 5], -1)
    batch = torch.zeros(30, dtype=torch.long)
    feat = torch.randn(30, 3, dtype=torch.float64)
    voxels = build_voxel_map(grid, batch, 1)
    assert torch.allclose(conv(feat, voxels, "spconv_cpu"), conv(feat, voxels, "mean"))
    grid, batch, feat = _points(25, 3, seed=5)
    voxels = build_voxel_map(grid, batch, 2)
    feat.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f, w: SubmanifoldConv3d._spconv_cpu(f, w, voxels),
                                    (feat, torch.randn(27, 5, 2, dtype=torch.float64, requires_grad=True)))
    with pytest.raises(ValueError, match="duplicate rule"):
        conv(feat[:, :3], voxels, "first")


def test_released_ties_are_the_stacked_unstable_argsort():
    g = torch.Generator().manual_seed(3)
    grid = torch.randint(0, 4, (500, 3), generator=g)  # many points per cell
    batch = torch.zeros(500, dtype=torch.long)
    code, order, inverse = serialize(grid, batch, 1, ties="released")
    assert torch.equal(order, torch.argsort(code))
    stable_code, stable, _ = serialize(grid, batch, 1)
    assert torch.equal(code, stable_code) and not torch.equal(order, stable)
    assert torch.equal(stable, torch.argsort(code, dim=-1, stable=True))
    for row, inv in zip(order, inverse):
        assert torch.equal(row[inv], torch.arange(500))
    with pytest.raises(ValueError, match="ties"):
        serialize(grid, batch, 1, ties="random")


def _rotations(n, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(n, 4, generator=g, dtype=torch.float64), dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(n, 3, 3)


def test_e3nn_convention():
    r1, r2 = _rotations(2, 0)
    d1, d2, d12 = (e3nn_wigner_matrices(r, 4) for r in (r1, r2, r1 @ r2))
    assert torch.allclose(d12, d1 @ d2, atol=1e-10)  # a representation of SO(3)
    assert torch.allclose(d1 @ d1.T, torch.eye(25, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(d1[1:4, 1:4], r1, atol=1e-12)  # e3nn's degree-1 matrix is R itself
    assert not torch.allclose(d1, sh_rotation_matrices(r1, 4), atol=1e-3)
    # applied to 3DGS coefficients it is not a rotation of the colour function; the exact one is
    sh = torch.randn(25, 3, dtype=torch.float64) * 0.2
    dirs = torch.nn.functional.normalize(torch.randn(50, 3, dtype=torch.float64), dim=-1)
    exact = eval_sh(4, rotate_sh(sh, r1).expand(50, 25, 3), dirs @ r1.T)
    assert torch.allclose(exact, eval_sh(4, sh.expand(50, 25, 3), dirs), atol=1e-9)
    e3nn = eval_sh(4, rotate_sh(sh, r1, "e3nn").expand(50, 25, 3), dirs @ r1.T)
    assert (e3nn - eval_sh(4, sh.expand(50, 25, 3), dirs)).abs().max() > 1e-2
    assert torch.equal(rotate_sh(sh[:1], r1, "e3nn"), sh[:1])  # degree 0 untouched
    with pytest.raises(ValueError, match="convention"):
        rotate_sh(sh, r1, "xyz")
    assert math.isclose(float(torch.linalg.det(d1[4:9, 4:9])), 1.0, abs_tol=1e-9)


def test_released_ties_batch_equals_separate_calls():
    g = torch.Generator().manual_seed(4)
    grids = [torch.randint(0, 3, (n, 3), generator=g) for n in (300, 200)]
    batch = torch.tensor([0, 1] * 200 + [0] * 100)  # interleaved objects
    grid = torch.empty(500, 3, dtype=torch.long)
    grid[batch == 0], grid[batch == 1] = grids[0], grids[1]
    _, order, _ = serialize(grid, batch, 2, ties="released")
    for b, sub in enumerate(grids):
        rows = torch.nonzero(batch == b).flatten()
        _, alone, _ = serialize(sub, torch.zeros(len(sub), dtype=torch.long), 1, ties="released")
        start = 0 if b == 0 else 300
        assert torch.equal(order[:, start: start + len(sub)], rows[alone])
