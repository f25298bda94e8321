import functools
import math

import pytest
import torch
from safetensors.torch import save_file

from gdensify.evaluation import metrics as M


@pytest.fixture(autouse=True)
def _one_thread():
    """Small convolutions (VGG16 on tiny images, SSIM windows) are fastest on one thread, and far slower with
    several when the machine is busy; restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _images(seed=0, shape=(2, 48, 40, 3)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g)


def test_psnr_matches_a_hand_computation():
    a = torch.zeros(2, 4, 4, 3)
    b = a.clone()
    b[0, 0, 0, 0] = 0.5  # MSE = 0.25 / 48
    b[1] += 0.1  # MSE = 0.01 → 20 dB
    p = M.psnr(b, a)
    assert p.shape == (2,)
    assert p[0].item() == pytest.approx(-10 * math.log10(0.25 / 48), rel=1e-6)
    assert p[1].item() == pytest.approx(20.0, rel=1e-5)
    assert M.psnr(a, a).isinf().all()
    pooled = M.psnr_pooled(b, a).item()
    assert pooled == pytest.approx(-10 * math.log10((0.25 / 48 + 0.01) / 2), rel=1e-5)
    with pytest.raises(ValueError, match="shape"):
        M.psnr(a, a[..., :2])


def test_ssim_is_one_on_identical_images_and_decreases_with_noise():
    x = _images()
    assert torch.allclose(M.ssim(x, x), torch.ones(2), atol=1e-6)
    g = torch.Generator().manual_seed(1)
    values = [M.ssim((x + s * torch.randn(x.shape, generator=g)).clamp(0, 1), x).mean().item()
              for s in (0.02, 0.1, 0.3)]
    assert 1 > values[0] > values[1] > values[2]
    # layout: batch dims are kept, and the result matches pytorch_msssim on NCHW directly
    from pytorch_msssim import ssim as ref

    y = (x + 0.05).clamp(0, 1)
    expected = ref(y.permute(0, 3, 1, 2), x.permute(0, 3, 1, 2), data_range=1.0, size_average=False)
    torch.testing.assert_close(M.ssim(y, x), expected)
    assert M.ssim(y[None], x[None]).shape == (1, 2)
    with pytest.raises(ValueError, match="smaller than"):
        M.ssim(x[:, :8, :8], x[:, :8, :8])


def test_ms_ssim_needs_big_enough_images():
    x = _images(shape=(1, 176, 176, 3))
    assert M.ms_ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    assert M.ms_ssim(noisy, x).item() < 0.999
    small = _images(shape=(1, 128, 128, 3))
    with pytest.raises(ValueError, match="too small"):
        M.ms_ssim(small, small)
    assert M.ms_ssim_window(128, 128) == 7 and M.ms_ssim_window(176, 200) == 11 and M.ms_ssim_window(32, 32) is None
    assert M.ms_ssim(small, small, win_size=7).item() == pytest.approx(1.0, abs=1e-5)


@functools.lru_cache(maxsize=1)
def _random_lpips_state(seed=0):
    torch.manual_seed(seed)
    net = M.LPIPSVGG()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    for k in range(5):  # linear weights are non-negative in LPIPS
        w = getattr(net, f"lin{k}").model[1].weight
        w.data.abs_()
    return net.state_dict()


def test_lpips_unavailable_without_weights(monkeypatch, tmp_path):
    monkeypatch.delenv(M.LPIPS_ENV, raising=False)
    monkeypatch.delenv(M.VGG16_ENV, raising=False)
    monkeypatch.setattr(M, "lpips_weight_paths", lambda: [])
    x = _images()
    assert M.load_lpips_vgg() is None
    assert M.lpips_vgg(x, x) is None
    assert M.lpips_status().startswith(M.UNAVAILABLE)
    out = M.image_metrics(x, x)
    assert out["lpips"] is None and out["psnr"].isinf().all() and torch.allclose(out["ssim"], torch.ones(2))


def test_lpips_with_local_random_weights(monkeypatch, tmp_path):
    sd = _random_lpips_state()
    full = tmp_path / "lpips_vgg.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(full))
    monkeypatch.setenv(M.LPIPS_ENV, str(full))
    monkeypatch.delenv(M.VGG16_ENV, raising=False)
    M._CACHE.clear()
    model = M.load_lpips_vgg()
    assert model is not None and M.lpips_status().startswith("available")
    x = _images(shape=(3, 20, 16, 3))  # small: VGG16 is slow on CPU; 16 px survive the 4 poolings
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    d_same, d_diff = M.lpips_vgg(x, x), M.lpips_vgg(y, x)
    assert d_same.shape == (3,) and torch.all(d_same.abs() < 1e-6)  # LPIPS(x, x) = 0
    assert torch.all(d_diff > 1e-4)
    torch.testing.assert_close(M.lpips_vgg(y[None], x[None], model)[0], d_diff)
    torch.testing.assert_close(M.lpips_vgg(x, y), d_diff, rtol=1e-4, atol=1e-6)  # symmetric
    assert M.image_metrics(y, x)["lpips"] is not None
    # gradients flow to the prediction (usable as a loss)
    y.requires_grad_(True)
    M.lpips_vgg(y, x, model).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0

    # the split layout: torchvision-style backbone (+ classifier keys, ignored) and lpips's linear layers
    backbone = {k: v for k, v in sd.items() if k.startswith("features.")}
    backbone["classifier.0.weight"] = torch.zeros(2, 2)
    lins = {k: v for k, v in sd.items() if k.startswith("lin")}
    torch.save(backbone, tmp_path / "vgg16.pth")
    torch.save(lins, tmp_path / "vgg.pth")
    monkeypatch.setenv(M.LPIPS_ENV, str(tmp_path / "vgg.pth"))
    monkeypatch.setenv(M.VGG16_ENV, str(tmp_path / "vgg16.pth"))
    M._CACHE.clear()
    torch.testing.assert_close(M.lpips_vgg(y.detach(), x), d_diff)
    # lpips's own module names (net.slice{k}.{i}.*) load too
    renamed = {}
    ends = (4, 9, 16, 23, 30)
    for k, v in backbone.items():
        if k.startswith("features."):
            i = int(k.split(".")[1])
            s = next(j for j, e in enumerate(ends) if i < e) + 1
            renamed[f"net.slice{s}.{i}.{k.split('.')[2]}"] = v
    torch.save({**renamed, **lins}, tmp_path / "lpips_module.pth")
    torch.testing.assert_close(M.lpips_vgg(y.detach(), x, M.load_lpips_vgg(tmp_path / "lpips_module.pth")), d_diff)


def test_incomplete_explicit_lpips_weights_raise(monkeypatch, tmp_path):
    sd = _random_lpips_state()
    lins_only = tmp_path / "lins.pth"
    torch.save({k: v for k, v in sd.items() if k.startswith("lin")}, lins_only)
    monkeypatch.setenv(M.LPIPS_ENV, str(lins_only))
    monkeypatch.delenv(M.VGG16_ENV, raising=False)
    monkeypatch.setattr(M.torch.hub, "get_dir", lambda: str(tmp_path / "no_hub"))
    M._CACHE.clear()
    with pytest.raises(ValueError, match="lack 26 keys"):
        M.load_lpips_vgg()
    assert M.lpips_status().startswith(M.UNAVAILABLE)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        M.load_lpips_vgg(bad)
