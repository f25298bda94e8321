"""Space-filling-curve serialization: brute-force references, bijection, locality, batch packing, shuffling."""

import itertools

import pytest
import torch

from gdensify.densify import serialization as ser
from gdensify.densify.point_transformer import PointBatch


def _hilbert_reference(x: int, y: int, z: int, nbits: int) -> int:
    """Scalar bit-array Hilbert index (the numpy-hilbert-curve formulation PTv3 ports): Gray-code/axis-exchange
    loop over bits then axes, bit-major interleave with x first, then Gray → binary over the whole string."""
    locs = [[(v >> (nbits - 1 - b)) & 1 for b in range(nbits)] for v in (x, y, z)]
    for bit in range(nbits):
        for dim in range(3):
            if locs[dim][bit]:
                for lb in range(bit + 1, nbits):
                    locs[0][lb] ^= 1
            else:
                for lb in range(bit + 1, nbits):
                    t = locs[0][lb] ^ locs[dim][lb]
                    locs[dim][lb] ^= t
                    locs[0][lb] ^= t
    code, acc = 0, 0
    for b in range(nbits):
        for d in range(3):
            acc ^= locs[d][b]
            code = (code << 1) | acc
    return code


def _morton_reference(x: int, y: int, z: int, nbits: int) -> int:
    code = 0
    for b in reversed(range(nbits)):
        code = (code << 3) | (((x >> b) & 1) << 2) | (((y >> b) & 1) << 1) | ((z >> b) & 1)
    return code


def _full_grid(depth):
    s = 1 << depth
    return torch.tensor(list(itertools.product(range(s), repeat=3)), dtype=torch.long)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_hilbert_equals_brute_force(depth):
    grid = _full_grid(depth)
    codes = ser.hilbert_encode(grid, depth)
    ref = torch.tensor([_hilbert_reference(*map(int, c), depth) for c in grid])
    assert torch.equal(codes, ref)


def test_hilbert_known_order_depth_one():
    order = torch.argsort(ser.hilbert_encode(_full_grid(1), 1))
    cells = _full_grid(1)[order].tolist()
    assert cells == [[0, 0, 0], [0, 0, 1], [0, 1, 1], [0, 1, 0], [1, 1, 0], [1, 1, 1], [1, 0, 1], [1, 0, 0]]


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_z_order_equals_brute_force_and_decodes(depth):
    g = torch.Generator().manual_seed(depth)
    grid = torch.randint(0, 1 << depth, (300, 3), generator=g)
    codes = ser.z_order_encode(grid, depth)
    ref = torch.tensor([_morton_reference(*map(int, c), depth) for c in grid])
    assert torch.equal(codes, ref)
    assert torch.equal(ser.z_order_decode(codes, depth), grid)
    assert ser.z_order_encode(torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]]), 1).tolist() == [4, 2, 1]


@pytest.mark.parametrize("order", ser.ORDERS)
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_codes_are_a_bijection_of_the_grid(order, depth):
    grid = _full_grid(depth)
    codes = ser.encode_curve(grid, depth, order)
    assert torch.equal(torch.sort(codes).values, torch.arange(1 << (3 * depth)))


@pytest.mark.parametrize("order", ["hilbert", "hilbert-trans"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_hilbert_consecutive_cells_are_face_neighbours(order, depth):
    grid = _full_grid(depth)
    seq = grid[torch.argsort(ser.encode_curve(grid, depth, order))]
    steps = (seq[1:] - seq[:-1]).abs().sum(dim=1)
    assert bool((steps == 1).all())


@pytest.mark.parametrize("order", ser.ORDERS)
def test_neighbouring_cells_stay_close_in_the_order(order):
    """Every aligned 2^k cube is one contiguous run of the order (so cells of one cube are ≤ 8^k − 1 apart), and
    face neighbours are on average far closer in the order than random pairs."""
    depth = 4
    grid = _full_grid(depth)
    rank = torch.empty(len(grid), dtype=torch.long)
    rank[torch.argsort(ser.encode_curve(grid, depth, order))] = torch.arange(len(grid))
    for k in (1, 2, 3):
        cube = (grid >> k)
        cube_id = (cube[:, 0] << 8) | (cube[:, 1] << 4) | cube[:, 2]
        for cid in torch.unique(cube_id)[:20]:
            r = torch.sort(rank[cube_id == cid]).values
            assert int(r[-1] - r[0]) == (1 << (3 * k)) - 1
    index = (grid[:, 0] << 8) | (grid[:, 1] << 4) | grid[:, 2]
    lookup = torch.full((1 << 12,), -1, dtype=torch.long)
    lookup[index] = torch.arange(len(grid))
    inside = grid[:, 0] < 15
    nb = lookup[index[inside] + (1 << 8)]
    neighbour_gap = (rank[inside] - rank[nb]).abs().float().mean()
    random_gap = (rank - rank[torch.randperm(len(grid), generator=torch.Generator().manual_seed(0))]).abs()
    assert neighbour_gap < 0.2 * random_gap.float().mean()


def test_serialize_orders_are_permutations_and_inverse():
    g = torch.Generator().manual_seed(0)
    coord = torch.rand(500, 3, generator=g)
    batch = torch.randint(0, 3, (500,), generator=g)
    grid = ser.quantize(coord, batch, 0.05, 3)
    codes, orders, inverses = ser.serialize(grid, batch, 3)
    assert orders.shape == (4, 500)
    for order, inverse, code in zip(orders, inverses, codes):
        assert torch.equal(torch.sort(order).values, torch.arange(500))
        assert torch.equal(order[inverse], torch.arange(500))
        assert torch.equal(inverse[order], torch.arange(500))
        assert bool((code[order][1:] >= code[order][:-1]).all())
        # objects are contiguous and in increasing order along every curve
        assert bool((batch[order][1:] >= batch[order][:-1]).all())


def test_trans_variant_swaps_x_and_y():
    grid = _full_grid(3)
    assert torch.equal(ser.encode_curve(grid, 3, "z-trans"), ser.encode_curve(grid[:, [1, 0, 2]], 3, "z"))
    assert torch.equal(ser.encode_curve(grid, 3, "hilbert-trans"), ser.encode_curve(grid[:, [1, 0, 2]], 3, "hilbert"))


def test_batch_packing_equals_separate_objects():
    """Per-object anchor and depth: the order inside each object is the order of a separate call."""
    g = torch.Generator().manual_seed(1)
    a = torch.rand(200, 3, generator=g) * 0.3
    b = torch.rand(150, 3, generator=g) * 0.9 + 5.0  # far away, larger extent (deeper curve)
    coord = torch.cat([a, b])
    batch = torch.cat([torch.zeros(200), torch.ones(150)]).long()
    grid = ser.quantize(coord, batch, 0.02, 2)
    _, orders, _ = ser.serialize(grid, batch, 2)
    for obj, pts, offset in ((0, a, 0), (1, b, 200)):
        gg = ser.quantize(pts, torch.zeros(len(pts), dtype=torch.long), 0.02, 1)
        _, sep, _ = ser.serialize(gg, torch.zeros(len(pts), dtype=torch.long), 1)
        for i in range(4):
            o = orders[i]
            mine = o[batch[o] == obj] - offset
            assert torch.equal(mine, sep[i])


def test_quantize_is_anchored_per_object():
    coord = torch.tensor([[0.5, 0.5, 0.5], [0.6, 0.5, 0.5], [10.0, 10.0, 10.0]])
    batch = torch.tensor([0, 0, 1])
    grid = ser.quantize(coord, batch, 0.05, 2)
    assert grid.tolist() == [[0, 0, 0], [2, 0, 0], [0, 0, 0]]


def test_shuffle_uses_the_generator_and_evaluation_is_fixed():
    coord = torch.rand(64, 3, generator=torch.Generator().manual_seed(2))
    batch = torch.zeros(64, dtype=torch.long)

    def names(shuffle, seed):
        pb = PointBatch(coord, torch.zeros(64, 4), batch, 1, 0.1)
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        return pb.serialize(shuffle=shuffle, generator=gen).order_names

    assert names(False, None) == ser.ORDERS
    assert names(True, 7) == names(True, 7)
    assert len({names(True, s) for s in range(20)}) > 1


def test_errors():
    with pytest.raises(ValueError, match="depth"):
        ser.z_order_encode(torch.zeros(2, 3, dtype=torch.long), 17)
    with pytest.raises(ValueError, match="integers"):
        ser.hilbert_encode(torch.zeros(2, 3), 2)
    with pytest.raises(ValueError, match=r"\[0, 2\^2\)"):
        ser.hilbert_encode(torch.tensor([[4, 0, 0]]), 2)
    with pytest.raises(ValueError, match="unknown serialization order"):
        ser.encode_curve(torch.zeros(2, 3, dtype=torch.long), 2, "peano")
    with pytest.raises(ValueError, match="bits per axis"):
        ser.serialize(torch.tensor([[1 << 17, 0, 0]]), torch.zeros(1, dtype=torch.long), 1)
