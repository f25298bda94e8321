"""Scene-level training, evaluation and reconstruction end to end on tiny generated RE10K-layout scenes."""

import json

import pytest

from gdensify.cli import main
from gdensify.synthetic.scenes import generate_scenes
from gdensify.io import load_checkpoint, load_ply
from gdensify.training.experiment import load_experiment
from gdensify.training.fit import fit


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    generate_scenes(root, 4, seed=1, width=64, height=64, frames_min=16, frames_max=18, eval_context_gap=8,
                    eval_targets=2, supersample=1, test_fraction=0.5, progress=False)
    return root


def test_scene_training_then_eval_and_reconstruct(scenes, tmp_path, capsys):
    experiment = load_experiment("scene-tiny", [
        f"data.root={scenes}", f"train.out_dir={tmp_path / 'run'}", "train.max_steps=2", "train.checkpoint_every=1",
        "train.batch_size=1", "train.warmup_steps=1", "train.log_every=1", "data.n_targets=2", "data.min_gap=4",
        "data.max_gap=8", "data.val_limit=1", "model.selection.k=64"])
    fit(experiment, progress=False)
    ckpt = tmp_path / "run" / "model.safetensors"
    stored = load_checkpoint(ckpt)
    assert stored.kind == "gd" and stored.config["backbone"]["name"] == "mvsplat"
    logged = (tmp_path / "run" / "logs" / "metrics.csv").read_text()
    assert "val/psnr_fine" in logged and "train/loss_fine" in logged

    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(scenes), "--out", str(tmp_path / "ev"),
                 "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_scenes"] == 2
    for key in ("psnr_fine", "psnr_coarse", "ssim_fine", "ssim_coarse"):
        assert isinstance(metrics[key], float), key
    assert len((tmp_path / "ev" / "per_scene.csv").read_text().strip().splitlines()) == 3
    capsys.readouterr()

    index = json.loads((scenes / "evaluation_index.json").read_text())
    first = sorted(index)[0]
    (tmp_path / "one.json").write_text(json.dumps({first: index[first]}))
    assert main(["reconstruct", "--checkpoint", str(ckpt), "--data", str(scenes), "--index",
                 str(tmp_path / "one.json"), "--out", str(tmp_path / "rec"), "--no-progress"]) == 0
    coarse, fine = load_ply(tmp_path / "rec" / first / "coarse.ply"), load_ply(tmp_path / "rec" / first / "fine.ply")
    assert len(coarse) == 2 * 64 * 64 and len(fine) > len(coarse) - 2 * 64
    assert (tmp_path / "rec" / first / "comparison.png").is_file()


def test_scene_eval_reports_a_missing_index(scenes, tmp_path, capsys):
    experiment = load_experiment("scene-tiny", [f"data.root={scenes}", f"train.out_dir={tmp_path / 'run'}",
                                                "train.max_steps=1", "train.checkpoint_every=1", "data.validate=false",
                                                "train.batch_size=1", "data.min_gap=4", "data.max_gap=8",
                                                "data.n_targets=1", "model.densify=false"])
    fit(experiment, progress=False)
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "model.safetensors"), "--data", str(scenes),
                 "--index", str(tmp_path / "none.json"), "--out", str(tmp_path / "ev")]) == 2
    assert "none.json" in capsys.readouterr().err
