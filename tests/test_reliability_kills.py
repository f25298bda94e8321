"""SIGKILL mid-write (`make-data`, `reconstruct`, `train`): the next run sees no partial state, removes the
leftovers and loses no log rows. Two `reconstruct` runs into one folder: one wins whole, the other refuses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gdensify.data.blender import find_blender_objects
from gdensify.io import load_checkpoint
from gdensify.io.staging import owned_temp_prefix
from gdensify.synthetic import generate_objects

FAST = ["model.backbone.image_size=32", "model.selection.k=200", "train.batch_size=1", "train.warmup_steps=1",
        "train.log_every=1", "data.n_targets=2"]


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    root = tmp_path_factory.mktemp("objects")
    generate_objects(root, 2, seed=4, resolution=32, n_train=8, n_test=2, supersample=1, progress=False)
    return root


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "gdensify.cli", *map(str, args)]


def start(*args) -> subprocess.Popen:
    return subprocess.Popen(cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_when(process: subprocess.Popen, ready, timeout: float = 240.0) -> None:
    """SIGKILL `process` as soon as `ready()` holds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"finished before the kill: {process.stderr.read()}"
        assert time.monotonic() < deadline, "the awaited state never appeared"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_killed_make_data_leaves_nothing_counted_and_is_cleaned(tmp_path):
    out = tmp_path / "objs"
    process = start("make-data", "objects", out, "--count", 6, "--resolution", 32)
    kill_when(process, lambda: any((p / "transforms_train.json").is_file() for p in out.glob(".obj_*.partial")))
    assert any(out.glob(".obj_*.partial"))
    complete = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    if complete:
        assert find_blender_objects(out) == complete
    else:
        with pytest.raises(FileNotFoundError):  # the partial object is not one
            find_blender_objects(out)
    rerun = subprocess.run(cli("make-data", "objects", out, "--count", 6, "--resolution", 32), capture_output=True,
                           text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"obj_{i:05d}" for i in range(6)]


def test_killed_reconstruct_leaves_no_output_and_the_next_run_cleans_up(objects, tmp_path):
    out = tmp_path / "rec"
    process = start("reconstruct", "--data", objects, "--out", out, "--no-progress")
    kill_when(process, lambda: any((p / "obj_00000" / "fine.ply").is_file() for p in tmp_path.glob(".rec.*.staging")))
    assert not out.exists()
    assert (tmp_path / ".rec.lock").is_file()  # held by the killed run
    rerun = subprocess.run(cli("reconstruct", "--data", objects, "--out", out, "--no-progress"), capture_output=True,
                           text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec"]
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "obj_00000", "obj_00001", "per_object.csv"]


def test_killed_train_resumes_without_losing_log_rows_and_cleans_temporaries(objects, tmp_path):
    run = tmp_path / "run"
    csv = run / "logs" / "metrics.csv"
    args = ["train", *FAST, f"data.root={objects}", f"train.out_dir={run}", "train.max_steps=5",
            "train.checkpoint_every=1", "--no-progress"]
    process = start(*args)
    kill_when(process, lambda: csv.is_file() and len(csv.read_text().splitlines()) >= 3
              and (run / "checkpoints" / "last.ckpt").is_file())
    before = csv.read_text().splitlines()
    stale = run / "checkpoints" / f"{owned_temp_prefix('last.ckpt').replace(str(os.getpid()), str(dead_pid()))}x.tmp"
    stale.write_bytes(b"")
    other = tmp_path / "elsewhere"
    other.mkdir()
    resumed = subprocess.run(cli("train", "--resume", run, "--no-progress"), capture_output=True, text=True,
                             cwd=other, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert resumed.returncode == 0, resumed.stderr
    assert "trained " in resumed.stdout and "(now at step 5 of 5)" in resumed.stdout
    after = csv.read_text().splitlines()
    assert after[1:len(before)] == before[1:] and len(after) > len(before)
    assert {int(float(line.split(",")[after[0].split(",").index("step")])) for line in after[1:]} == set(range(5))
    assert not stale.exists()
    assert load_checkpoint(run / "model.safetensors").metadata["gdensify.step"] == "5"
    again = subprocess.run(cli("train", "--resume", run, "--no-progress"), capture_output=True, text=True)
    assert again.returncode == 0 and "trained 0 steps" in again.stdout
    assert csv.read_text().splitlines() == after


def test_concurrent_reconstruct_into_one_folder_one_wins_whole(objects, tmp_path):
    out = tmp_path / "same"
    runs = [start("reconstruct", "--data", objects, "--out", out, "--selection", method, "--no-progress")
            for method in ("gradient", "random")]
    errors = [r.communicate()[1] for r in runs]
    codes = [r.returncode for r in runs]
    assert sorted(codes) == [0, 2], errors
    loser = errors[codes.index(2)].strip().splitlines()[-1]
    assert loser.startswith("gdensify reconstruct: error: --out") and ("another gdensify run" in loser
                                                                       or "not empty" in loser)
    winner = ("gradient", "random")[codes.index(0)]
    assert json.loads((out / "metrics.json").read_text())["selection"] == winner
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]
