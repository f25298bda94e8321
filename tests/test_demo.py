"""The shipped checkpoints and samples: small, documented, loadable by the current code, and the demo runs."""

import functools
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from gdensify.assets import sample_data, shipped_checkpoint
from gdensify.cli import main
from gdensify.io import load_checkpoint, load_ply


@pytest.mark.parametrize("kind, stored_kind", [("object", "gd"), ("scene", "scene")])  # the scene one predates "gd"
def test_shipped_checkpoint_is_small_and_records_its_recipe(kind, stored_kind):
    path = shipped_checkpoint(kind)
    assert path.stat().st_size <= 20 * 2**20
    checkpoint = load_checkpoint(path, stored_kind)
    experiment = json.loads(checkpoint.metadata["gdensify.experiment"])
    assert int(checkpoint.metadata["gdensify.step"]) == experiment["train"]["max_steps"]


def test_object_demo_reconstructs_a_shipped_object(tmp_path, capsys):
    one = tmp_path / "objects"
    one.mkdir()
    first = sorted(sample_data("object").iterdir())[0]
    shutil.copytree(first, one / first.name)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--data", str(one), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "PSNR fine" in out and "demo finished" in out
    assert "Gaussians coarse (all) / coarse (visible) / selected / fine" in out
    folder = tmp_path / "demo" / first.name
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["n_objects"] == 1 and metrics["psnr_fine"] > metrics["psnr_background"]
    # the fine set: the visible (opacity > 0.005) non-selected coarse Gaussians and the densifier's leaves
    assert len(load_ply(folder / "coarse.ply")) == metrics["n_coarse"] == 32**3
    assert len(load_ply(folder / "fine.ply")) == metrics["n_fine"] > 0
    assert (folder / "comparison.png").is_file()


def test_scene_demo(tmp_path, capsys):
    assert main(["demo", "--scene", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["n_scenes"] == 2 and metrics["psnr_fine"] > metrics["psnr_background"]
    assert "PSNR coarse" in capsys.readouterr().out
    index = json.loads((sample_data("scene") / "evaluation_index.json").read_text())
    key = sorted(index)[0]
    with Image.open(tmp_path / "demo" / key / "comparison.png") as image:  # a row per target, 4 px gaps
        assert image.size == (4 * 64 + 3 * 4, len(index[key]["target"]) * (64 + 4) - 4)


def test_quality_benchmark_scores_the_shipped_model(tmp_path):
    """`benchmarks/object_quality.py`'s table on one shipped object, so the benchmark cannot rot."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location("bench_object_quality", folder / "object_quality.py")
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        from quality_common import evaluate_checkpoint, quality_table
    finally:
        sys.path.remove(str(folder))
    run = functools.partial(evaluate_checkpoint, examples=bench.held_out_objects, data=str(sample_data("object")),
                            limit=1, label="objects")
    table = quality_table(run, str(shipped_checkpoint("object")), str(shipped_checkpoint("object")), "objects", 0.5)
    assert "Held-out objects: 1;" in table and "| coarse-only model, same budget |" in table
    fine, random = (float(line.split("|")[2]) for line in table.splitlines()
                    if line.startswith(("| GD, fine (gradient", "| GD, fine (random")))
    assert fine > 15 and random > 15 and fine != random  # the selection override reached the model
