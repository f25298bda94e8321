"""Round trips of the export formats (.splat, .spz, .ply) within each format's quantisation, and the CLI."""

import gzip
import json
import struct

import pytest
import torch

from gdensify.builtin_scene import orbit_cameras, trefoil_gaussians
from gdensify.cameras import Cameras
from gdensify.cli import main
from gdensify.gaussians import Gaussians
from gdensify.io import load_ply, save_ply
from gdensify.io.splat import decode_splat, encode_splat, load_splat
from gdensify.io.spz import decode_spz, encode_spz, load_spz
from gdensify.render import rasterize


def _gaussians(n: int = 2000, degree: int = 3, seed: int = 0) -> Gaussians:
    base = trefoil_gaussians(n, seed=seed)
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    sh = (torch.rand(n, k, 3, generator=g) * 2 - 1) * 0.9
    sh[:, 0] = base.sh[:, 0]
    return Gaussians(base.means, torch.randn(n, 4, generator=g), base.log_scales,
                     torch.randn(n, generator=g) * 3, sh)


def _quat_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    sign = torch.sign((a * b).sum(-1, keepdim=True))
    return (a * sign - b).abs().max().item()


def test_splat_round_trip_within_quantisation():
    g = _gaussians(degree=1)
    data = encode_splat(g)
    assert len(data) == 32 * len(g)
    d = decode_splat(data)
    assert torch.equal(d.means, g.means)
    assert torch.allclose(d.log_scales, g.log_scales, atol=1e-6)
    assert (d.opacities - g.opacities.clamp(0.5 / 255, 254.5 / 255)).abs().max() <= 0.5 / 255 + 1e-6
    rgb = 0.5 + 0.28209479177387814 * g.sh[:, 0]
    rgb_back = 0.5 + 0.28209479177387814 * d.sh[:, 0]
    assert (rgb_back - rgb.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6
    assert _quat_error(d.quats, g.quats) <= 1.5 / 128
    assert d.sh_degree == 0


def test_splat_rejects_truncated_data():
    with pytest.raises(ValueError, match="multiple of 32"):
        decode_splat(b"\0" * 33)


def test_spz_header_and_round_trip_within_quantisation():
    g = _gaussians(degree=3)
    data = encode_spz(g)
    raw = gzip.decompress(data)
    magic, version, n, degree, fractional, flags, reserved = struct.unpack_from("<IIIBBBB", raw)
    assert (magic, version, n, degree, fractional, flags, reserved) == (0x5053474E, 3, len(g), 3, 12, 0, 0)
    assert len(raw) == 16 + len(g) * (9 + 1 + 3 + 3 + 4 + 15 * 3)
    d = decode_spz(data)
    assert (d.means - g.means).abs().max() <= 2.0 ** -13 + 1e-7
    assert (d.log_scales - g.log_scales).abs().max() <= 1 / 32 + 1e-6
    assert (d.opacities - g.opacities.clamp(0.5 / 255, 254.5 / 255)).abs().max() <= 0.5 / 255 + 1e-6
    assert (d.sh[:, 0] - g.sh[:, 0]).abs().max() <= 0.5 / (255 * 0.15) + 1e-5
    assert _quat_error(d.quats, g.quats) <= 2e-3
    assert (d.sh[:, 1:4] - g.sh[:, 1:4]).abs().max() <= 4.5 / 128 + 1e-6
    assert (d.sh[:, 4:] - g.sh[:, 4:]).abs().max() <= 8.5 / 128 + 1e-6


def test_spz_axes_are_rub_in_the_file():
    """Decoding without the flip back gives RUB Gaussians that render like the original seen through the flipped
    world (positions, rotations and odd SH terms all flipped consistently)."""
    g = _gaussians(n=1500, degree=2)
    rdf = decode_spz(encode_spz(g))
    rub = decode_spz(encode_spz(g), to_rdf=False)
    assert torch.allclose(rub.means, rdf.means * torch.tensor([1.0, -1.0, -1.0]))
    cams = orbit_cameras(2, 48, 48)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    flipped = Cameras(cams.world_to_camera @ flip, cams.intrinsics, 48, 48)
    a = rasterize(rdf, cams, backend="reference").image
    b = rasterize(rub, flipped, backend="reference").image
    assert (a - b).abs().max() < 1e-4


def test_spz_large_positions_use_fewer_fractional_bits_and_bad_files_fail():
    g = _gaussians(n=50, degree=0)
    far = Gaussians(g.means * 20000, g.quats, g.log_scales, g.opacity_logits, g.sh)
    raw = gzip.decompress(encode_spz(far))
    fractional = raw[13]
    assert fractional < 12
    assert (decode_spz(encode_spz(far)).means - far.means).abs().max() <= 2.0 ** -(fractional + 1) * 1.01
    with pytest.raises(ValueError, match="magic"):
        decode_spz(gzip.compress(b"\0" * 32))
    with pytest.raises(ValueError, match="gzip"):
        decode_spz(b"not gzip")


def test_export_cli_prunes_writes_sidecar_and_round_trips(tmp_path, capsys):
    g = _gaussians(n=400, degree=1)
    src = save_ply(g, tmp_path / "in.ply")
    keep = int((g.opacities >= 0.3).sum())
    for name in ("out.splat", "out.spz", "out.ply"):
        out = tmp_path / name
        assert main(["export", str(src), str(out), "--min-opacity", "0.3"]) == 0
        meta = json.loads((tmp_path / (name + ".json")).read_text())
        assert meta["count"] == keep and meta["count_before_pruning"] == 400
        assert "OpenCV" in meta["coordinate_frame"]["camera_axes"]
    assert len(load_splat(tmp_path / "out.splat")) == keep
    assert len(load_spz(tmp_path / "out.spz")) == keep
    assert torch.equal(load_ply(tmp_path / "out.ply").means, g.means[g.opacities >= 0.3])
    assert main(["export", str(src), str(tmp_path / "out.splat")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(src), str(tmp_path / "out.splat"), "--overwrite"]) == 0
    assert main(["export", str(src), str(tmp_path / "out.xyz")]) == 2


def test_compressed_ply_needs_gsplat_or_writes_its_layout(tmp_path, capsys):
    import importlib.util

    src = save_ply(_gaussians(n=300, degree=1), tmp_path / "in.ply")
    out = tmp_path / "c.ply"
    code = main(["export", str(src), str(out), "--compressed"])
    if importlib.util.find_spec("gsplat") is None:
        assert code == 2 and "gdensify[gpu]" in capsys.readouterr().err and not out.exists()
    else:
        assert code == 0 and b"element chunk" in out.read_bytes()[:2000]
    assert main(["export", str(src), str(tmp_path / "c.splat"), "--compressed"]) == 2
