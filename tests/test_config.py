from dataclasses import dataclass, field
from typing import Literal

import pytest

from gdensify.config import ConfigError, apply_overrides, dump_yaml, from_dict, load_yaml, to_dict


@dataclass
class Inner:
    channels: int = 8
    factors: tuple[int, ...] = (2, 4)


@dataclass
class Outer:
    lr: float = 1e-3
    mode: Literal["a", "b"] = "a"
    name: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_round_trip_and_overrides(tmp_path):
    cfg = apply_overrides(Outer(), ["lr=5e-4", "inner.factors=[2,2,2]", "mode=b", "name=run1"])
    assert cfg == Outer(lr=5e-4, mode="b", name="run1", inner=Inner(factors=(2, 2, 2)))
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_yaml(Outer, path) == cfg
    assert from_dict(Outer, to_dict(cfg)) == cfg
    assert apply_overrides(Outer(), ["lr=1"]).lr == 1.0


@pytest.mark.parametrize("override, message", [
    ("inner.chanels=3", "inner.chanels"),
    ("mode=c", "mode"),
    ("inner.channels=abc", "inner.channels"),
    ("lr", "key=value"),
    ("nothing.here=1", "nothing.here"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Outer(), [override])


def test_checkpoint_round_trip_and_errors(tmp_path):
    import torch

    from gdensify.io import load_checkpoint, save_checkpoint

    weights = {"a.weight": torch.randn(3, 2), "b": torch.arange(4)}
    path = save_checkpoint(tmp_path / "m.safetensors", weights, "object", to_dict(Outer()), {"note": "hi"})
    ckpt = load_checkpoint(path, kind="object")
    assert ckpt.config == to_dict(Outer()) and ckpt.metadata["note"] == "hi"
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in weights.items())
    with pytest.raises(ValueError, match="expected 'scene'"):
        load_checkpoint(path, kind="scene")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_checkpoint(tmp_path / "bad.safetensors")
