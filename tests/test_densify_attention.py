"""Serialized patch attention against an explicit per-patch loop; PTv3 padding; block behaviour."""

import math

import pytest
import torch

from gdensify.densify.point_transformer import Block, PointBatch, SerializedAttention, build_patches


def test_padding_example_from_ptv3():
    """n = 10, P = 4: slots [0..9, 6, 7]; the last patch is {8, 9, 6, 7}."""
    p = build_patches(torch.arange(10), torch.tensor([10]), 4)
    assert p.index.flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 6, 7]
    assert p.valid is None
    assert p.slot_of_point.tolist() == list(range(10))


def test_short_object_is_one_masked_patch():
    p = build_patches(torch.arange(7), torch.tensor([3, 4]), 4)
    # object 0 has 3 < P points: one patch with a missing slot; object 1 has exactly P
    assert p.index.shape == (2, 4)
    assert p.valid.tolist() == [[True, True, True, False], [True, True, True, True]]


def _reference_attention(attn: SerializedAttention, point: PointBatch, feat, order_index):
    """Per object, per patch loop with the PTv3 padding rule, plain softmax attention, first occurrence wins."""
    P, H = attn.patch_size, attn.num_heads
    C = attn.channels
    D = C // H
    order = point.serialized_order[order_index % point.serialized_order.shape[0]]
    qkv = attn.qkv(feat)
    out = torch.zeros(len(feat), C, dtype=feat.dtype)
    for b in range(point.num_objects):
        seq = [int(i) for i in order if int(point.batch[i]) == b]
        n = len(seq)
        if n == 0:
            continue
        if n > P and n % P:
            m = math.ceil(n / P) * P
            seq = seq + [seq[t - P] for t in range(n, m)]
        patches = [seq[s:s + P] for s in range(0, len(seq), P)]
        done = set()
        for patch in patches:
            x = qkv[patch].view(len(patch), 3, H, D)
            q, k, v = x[:, 0].transpose(0, 1), x[:, 1].transpose(0, 1), x[:, 2].transpose(0, 1)
            w = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(D), dim=-1)
            o = (w @ v).transpose(0, 1).reshape(len(patch), C)
            for j, i in enumerate(patch):
                if i not in done:
                    out[i] = o[j]
                    done.add(i)
    return attn.proj(out)


@pytest.mark.parametrize("counts", [[10], [48], [100], [5, 130], [0, 7, 49, 96]])
def test_patch_attention_equals_per_patch_loop(counts):
    torch.manual_seed(0)
    P = 16 if max(counts) < 60 else 48
    n = sum(counts)
    batch = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)]).long()
    perm = torch.randperm(n)
    batch = batch[perm]  # objects interleaved in the input
    coord = torch.rand(n, 3, dtype=torch.float64)
    feat = torch.randn(n, 32, dtype=torch.float64)
    point = PointBatch(coord, feat, batch, len(counts), 0.1).serialize()
    attn = SerializedAttention(32, 4, patch_size=P).double()
    for order_index in range(4):
        got = attn(feat, point, order_index)
        ref = _reference_attention(attn, point, feat, order_index)
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_block_keeps_objects_apart_and_is_differentiable():
    torch.manual_seed(1)
    n0, n1 = 70, 40
    coord = torch.rand(n0 + n1, 3)
    feat = torch.randn(n0 + n1, 16, requires_grad=True)
    batch = torch.cat([torch.zeros(n0), torch.ones(n1)]).long()
    g = torch.randn(2, 8)
    block = Block(16, 2, patch_size=16, mlp_ratio=2.0, global_dim=8).eval()
    with torch.no_grad():
        block.norm1.affine.weight.normal_()
    joint = block(PointBatch(coord, feat, batch, 2, 0.1, g).serialize(), 1).feat
    sep = []
    for b, sl in ((0, slice(0, n0)), (1, slice(n0, None))):
        pb = PointBatch(coord[sl], feat[sl], torch.zeros(len(coord[sl]), dtype=torch.long), 1, 0.1, g[b:b + 1])
        sep.append(block(pb.serialize(), 1).feat)
    torch.testing.assert_close(joint, torch.cat(sep), rtol=1e-5, atol=1e-5)
    joint.square().sum().backward()
    assert feat.grad is not None and torch.isfinite(feat.grad).all()
    assert all(p.grad is not None for p in block.parameters())


def test_drop_path_uses_generator():
    block = Block(16, 2, patch_size=16, drop_path=0.5).train()
    coord, feat = torch.rand(50, 3), torch.randn(50, 16)
    batch = torch.zeros(50, dtype=torch.long)

    def run(seed):
        return block(PointBatch(coord, feat, batch, 1, 0.1).serialize(), 0, torch.Generator().manual_seed(seed)).feat

    torch.testing.assert_close(run(3), run(3))
    assert not torch.allclose(run(3), run(4))
