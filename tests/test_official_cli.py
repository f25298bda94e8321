"""`gdensify convert` and `--checkpoint OFFICIAL.ckpt` on a Lightning checkpoint made from the object fixture's
official weights; `gdensify download` of published checkpoints without a network."""

import json

import pytest
import torch
from official_fixtures import load_fixture, object_config, weights

from gdensify.assets import sample_data
from gdensify.cli import main
from gdensify.models.loading import is_gdensify_checkpoint, load_model


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    tensors, meta = load_fixture("object_small")
    folder = tmp_path_factory.mktemp("official")
    ckpt = folder / "epoch=49.ckpt"
    torch.save({"state_dict": weights(tensors), "epoch": 49, "global_step": 0}, ckpt)
    config = folder / "official.json"
    config.write_text(json.dumps(object_config(meta)))
    return ckpt, config


def test_convert_writes_a_gdensify_checkpoint(official, tmp_path, capsys):
    ckpt, config = official
    out = tmp_path / "object.safetensors"
    assert main(["convert", str(ckpt), str(out), "--official-config", str(config)]) == 0
    assert is_gdensify_checkpoint(out) and not is_gdensify_checkpoint(ckpt)
    model, checkpoint = load_model(out)
    assert checkpoint.metadata["gdensify.official_kind"] == "gd-object"
    assert model.config.backbone.name == "lara" and model.config.selection.k == 200
    state = weights(load_fixture("object_small")[0])
    torch.testing.assert_close(model.backbone.view_embed, state["net.view_embed"])
    assert main(["convert", str(ckpt), str(out), "--official-config", str(config)]) == 2  # no silent overwrite
    assert "already exists" in capsys.readouterr().err


def test_eval_and_reconstruct_take_an_official_checkpoint(official, tmp_path):
    ckpt, config = official
    data = sample_data("object")
    assert main(["eval", "--checkpoint", str(ckpt), "--official-config", str(config), "--data", str(data),
                 "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_objects"] >= 1 and isinstance(metrics["psnr_fine"], float)
    assert metrics["checkpoint"] == str(ckpt)


def test_download_without_network_says_where_to_get_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GDENSIFY_CACHE", str(tmp_path))
    assert main(["download", "mvsplat-re10k"]) == 2
    err = capsys.readouterr().err
    assert "not on the Hugging Face Hub" in err and "re10k.ckpt" in err and "--checkpoint" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["download", "gd-object"]) == 2
    err = capsys.readouterr().err
    assert "Xiang12yu/GDM-object" in err and "by hand" in err
