"""End-to-end training on tiny generated objects: resumption is exact, runs are never overwritten, two gloo
processes stay in sync, and the trained checkpoint drives `eval` and `reconstruct`."""

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from gdensify.cli import main
from gdensify.data.blender_objects import ObjectEvaluationDataset, ObjectTrainingDataset
from gdensify.synthetic import generate_objects
from gdensify.io import load_checkpoint, load_ply
from gdensify.models.loading import initialise_from
from gdensify.training.experiment import RUN_CONFIG_HEADER, load_experiment
from gdensify.training.fit import fit

# A tiny model at 32² with a small selection so a step takes a fraction of a second.
FAST = ["model.backbone.image_size=32", "model.selection.k=200", "train.batch_size=1", "train.warmup_steps=1",
        "train.log_every=1", "data.n_targets=2"]


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    root = tmp_path_factory.mktemp("objects")
    generate_objects(root, 2, seed=5, resolution=32, n_train=8, n_test=2, supersample=1, progress=False)
    return root


def _experiment(objects, out, *extra):
    return load_experiment("tiny", FAST + [f"data.root={objects}", f"train.out_dir={out}", *extra])


def _weights(path):
    return load_checkpoint(path).state_dict


def test_object_datasets_yield_normalised_examples(objects):
    train = ObjectTrainingDataset(objects, 32, n_inputs=4, n_targets=2)
    a, b = train[(1, 7)], train[(1, 7)]
    assert a.input_images.shape == (4, 32, 32, 3) and a.target_images.shape == (2, 32, 32, 3)
    assert torch.equal(a.input_images, b.input_images) and torch.equal(a.target_cameras.intrinsics,
                                                                       b.target_cameras.intrinsics)
    distance = a.input_cameras.centers.norm(dim=-1).mean().item()
    assert distance == pytest.approx(2.0, rel=0.05)  # the model's camera distance after normalisation
    evaluation = ObjectEvaluationDataset(objects, 32)[0]
    assert evaluation.input_images.shape[0] == 4 and evaluation.target_images.shape[0] == 2


class Crash(Exception):
    pass


class CrashAt(Callback):
    """Kills training after `step` steps, as a crash would (no end-of-training checkpoint)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            raise Crash(f"crash at step {trainer.global_step}")


def test_resume_continues_exactly_and_runs_are_not_overwritten(objects, tmp_path):
    steps = ["train.max_steps=5", "train.checkpoint_every=2"]
    fit(_experiment(objects, tmp_path / "straight", *steps), progress=False)
    interrupted = _experiment(objects, tmp_path / "resumed", *steps)
    with pytest.raises(Crash):
        fit(interrupted, progress=False, callbacks=[CrashAt(3)])
    halfway = _weights(tmp_path / "resumed" / "model.safetensors")
    assert load_checkpoint(tmp_path / "resumed" / "model.safetensors").metadata["gdensify.step"] == "2"
    with pytest.raises(FileExistsError, match="--resume"):
        fit(interrupted, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--resume", str(tmp_path / "resumed"), "--no-progress"]) == 0
    noise = [str(w.message) for w in caught if "not resumable" in str(w.message) or "LeafSpec" in str(w.message)]
    assert not noise, noise  # the resumed run is exact: no warning may say otherwise
    a, b = _weights(tmp_path / "straight" / "model.safetensors"), _weights(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys()
    assert any(not torch.equal(halfway[k], b[k]) for k in b)  # the resumed run did train
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = load_checkpoint(tmp_path / "straight" / "model.safetensors").metadata
    assert meta["gdensify.step"] == "5" and json.loads(meta["gdensify.experiment"])["train"]["max_steps"] == 5
    assert (tmp_path / "straight" / "logs" / "metrics.csv").is_file()
    assert (tmp_path / "straight" / "config.yaml").read_text().startswith(RUN_CONFIG_HEADER + "model:")


def test_eval_and_reconstruct_from_a_trained_checkpoint(objects, tmp_path, capsys):
    fit(_experiment(objects, tmp_path / "run", "train.max_steps=1", "train.checkpoint_every=1"), progress=False)
    ckpt = str(tmp_path / "run" / "model.safetensors")
    assert main(["eval", "--checkpoint", ckpt, "--data", str(objects), "--out", str(tmp_path / "ev"),
                 "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n_objects"] == 2
    for key in ("psnr_fine", "psnr_coarse", "ssim_fine", "ssim_coarse", "psnr_background"):
        assert isinstance(metrics[key], float), key
    assert len((tmp_path / "ev" / "per_object.csv").read_text().strip().splitlines()) == 3
    assert "PSNR fine" in capsys.readouterr().out

    assert main(["reconstruct", "--checkpoint", ckpt, "--data", str(objects / "obj_00000"), "--out",
                 str(tmp_path / "rec"), "--no-progress"]) == 0
    coarse, fine = load_ply(tmp_path / "rec" / "obj_00000" / "coarse.ply"), load_ply(
        tmp_path / "rec" / "obj_00000" / "fine.ply")
    assert len(coarse) > 0 and len(fine) > 0 and (tmp_path / "rec" / "obj_00000" / "comparison.png").is_file()


def test_coarse_only_model_reports_no_fine_metrics(objects, tmp_path):
    fit(_experiment(objects, tmp_path / "run", "train.max_steps=1", "train.checkpoint_every=1", "model.densify=false"),
        progress=False)
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "model.safetensors"), "--data", str(objects),
                 "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["psnr_fine"] is None and isinstance(metrics["psnr_coarse"], float)


class WeightsAtStart(Callback):
    def on_train_start(self, trainer, module):
        self.state = {k: v.clone() for k, v in module.model.state_dict().items()}


def test_a_gd_run_can_start_from_a_coarse_only_model(objects, tmp_path):
    one_step = ["train.max_steps=1", "train.checkpoint_every=1"]
    fit(_experiment(objects, tmp_path / "coarse", *one_step, "model.densify=false"), progress=False)
    coarse = tmp_path / "coarse" / "model.safetensors"
    start = WeightsAtStart()
    fit(_experiment(objects, tmp_path / "gd", *one_step, f"train.init_weights={coarse}"), progress=False,
        callbacks=[start])
    stored = _weights(coarse)
    assert stored and all(torch.equal(start.state[k], v) for k, v in stored.items())
    fresh = set(start.state) - set(stored)
    assert fresh and all(k.startswith(("densifier.", "conditioning.")) for k in fresh), sorted(fresh)[:5]

    coarse_only = _experiment(objects, tmp_path / "x", "model.densify=false").build_model()
    with pytest.raises(ValueError, match="no counterpart"):
        initialise_from(coarse_only, tmp_path / "gd" / "model.safetensors")
    with pytest.raises(ValueError, match="differ in shape"):
        initialise_from(_experiment(objects, tmp_path / "x", "model.densify=false",
                                    "model.backbone.view_embed_dim=16").build_model(), coarse)
    with pytest.raises(ValueError, match="expected 'scene'"):
        initialise_from(coarse_only, coarse, kind="scene")


def test_train_reports_bad_config_and_missing_data(tmp_path, capsys):
    assert main(["train", "--config", "nope"]) == 2
    assert "preset" in capsys.readouterr().err
    assert main(["train", "train.max_steps=0"]) == 2
    assert "max_steps" in capsys.readouterr().err
    assert main(["train", f"data.root={tmp_path / 'none'}", f"train.out_dir={tmp_path / 'o'}"]) == 2
    assert "make-data" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "x.safetensors"), "--data", str(tmp_path)]) == 2


def test_two_gloo_processes_hold_identical_weights(objects, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "gdensify.cli", "train", "--no-progress", *FAST, f"data.root={objects}",
           f"train.out_dir={out}", "train.max_steps=2", "train.checkpoint_every=2", "train.devices=2",
           "train.accelerator=cpu", "train.strategy=ddp"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    replicas = json.loads((out / "replicas.json").read_text())
    assert replicas["world_size"] == 2 and replicas["in_sync"]
    assert replicas["checksums"][0] == replicas["checksums"][1]
