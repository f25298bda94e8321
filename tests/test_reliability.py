"""Bad input through the CLI: every expected failure is one line `gdensify CMD: error: ...` naming the file, field
or value, exit code 2, no traceback, and nothing that existed before is changed. Protocol departures are errors or
recorded flags; hidden staging folders are never data; `--out` is refused when not empty."""

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gdensify.assets import shipped_checkpoint
from gdensify.cli import main
from gdensify.data.blender import find_blender_objects
from gdensify.io import load_ply, save_ply
from gdensify.synthetic import generate_objects
from gdensify.synthetic.scenes import generate_scenes
from gdensify.training.experiment import load_experiment, run_config_text

FAST = ["model.backbone.image_size=32", "model.selection.k=200", "train.batch_size=1", "train.warmup_steps=1",
        "train.log_every=1", "data.n_targets=2"]


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    root = tmp_path_factory.mktemp("objects")
    generate_objects(root, 2, seed=3, resolution=32, n_train=8, n_test=2, supersample=1, progress=False)
    return root


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    generate_scenes(root, 3, seed=3, width=32, height=32, progress=False)
    return root


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(argv, capsys, root: Path, *needles: str) -> str:
    """`argv` exits with 2 and one error line holding every needle; nothing under `root` changed."""
    before = snapshot(root)
    code, _, err = run(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"gdensify {argv[0]}: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert snapshot(root) == before
    return lines[0]


# ---------------------------------------------------------------------------------------------------- objects
def _object_case(objects, tmp_path, change=None, name="case"):
    case = tmp_path / name
    shutil.copytree(objects / "obj_00000", case)
    if change is not None:
        change(case)
    return case


def _set_train(key, value):
    return lambda case: edit_json(case / "transforms_train.json", lambda d: d.update({key: value}))


def _first_pose_everywhere(case):
    def change(d):
        for frame in d["frames"]:
            frame["transform_matrix"] = d["frames"][0]["transform_matrix"]
    edit_json(case / "transforms_train.json", change)


OBJECT_CASES = {
    "no test split": (lambda c: (c / "transforms_test.json").unlink(), ["transforms_test.json", "data.target_split"]),
    "camera_angle_x 0": (_set_train("camera_angle_x", 0), ["transforms_train.json", "'camera_angle_x'", "0.0"]),
    "camera_angle_x pi": (_set_train("camera_angle_x", math.pi), ["'camera_angle_x'", "180.0°"]),
    "fl_x with w 0": (lambda c: edit_json(c / "transforms_train.json", lambda d: d.update(fl_x=100, w=0)),
                      ["'w'", "0.0"]),
    "focal for 179 degrees": (lambda c: edit_json(c / "transforms_train.json", lambda d: d.update(
        fl_x=0.25, fl_y=0.25)), ["transforms_train.json", "field of view"]),
    "identical poses": (_first_pose_everywhere, ["transforms_train.json", "same transform_matrix"]),
    "k1 not a number": (_set_train("k1", "abc"), ["transforms_train.json", "'k1'", "'abc'"]),
    "2 train frames": (lambda c: edit_json(c / "transforms_train.json", lambda d: d.update(frames=d["frames"][:2])),
                       ["case", "cannot choose 4 views out of 2", "data.n_inputs"]),
}


@pytest.mark.parametrize("case", list(OBJECT_CASES))
def test_object_input_is_refused(case, objects, tmp_path, capsys):
    change, needles = OBJECT_CASES[case]
    data = _object_case(objects, tmp_path, change)
    assert_refused(["eval", "--data", data, "--out", tmp_path / "out", "--no-progress"], capsys, tmp_path,
                   *needles)
    assert not (tmp_path / "out").exists()


def test_protocol_departures_are_printed_and_recorded(objects, tmp_path, capsys):
    data = _object_case(objects, tmp_path, lambda c: (c / "transforms_test.json").unlink())
    code, out, _ = run(["eval", "--data", data, "--out", tmp_path / "a", "--no-progress", "--inputs", "2",
                        "data.target_split=train"], capsys)
    assert code == 0
    notes = json.loads((tmp_path / "a" / "metrics.json").read_text())["protocol_departures"]
    assert len(notes) == 2 and "train views" in notes[0] and "2 input views" in notes[1]
    assert out.count("warning: not the evaluation protocol") == 2
    code, out, _ = run(["eval", "--data", objects, "--out", tmp_path / "b", "--no-progress"], capsys)
    assert code == 0 and json.loads((tmp_path / "b" / "metrics.json").read_text())["protocol_departures"] == []


def test_hidden_and_staging_folders_are_not_data(objects, tmp_path, capsys):
    root = tmp_path / "objs"
    shutil.copytree(objects, root)
    shutil.copytree(objects / "obj_00001", root / ".obj_00002.123@host.abcd.partial")
    shutil.copytree(objects / "obj_00001", root / ".hidden")
    assert [p.name for p in find_blender_objects(root)] == ["obj_00000", "obj_00001"]
    code, _, _ = run(["eval", "--data", root, "--out", tmp_path / "out", "--no-progress"], capsys)
    assert code == 0 and json.loads((tmp_path / "out" / "metrics.json").read_text())["n_objects"] == 2


# ---------------------------------------------------------------------------------------------------- checkpoints
def _edit_checkpoint(tmp_path, tensors=None, metadata=None) -> Path:
    source = shipped_checkpoint("object")
    with safe_open(str(source), framework="pt") as f:
        meta = dict(f.metadata())
        state = {k: f.get_tensor(k) for k in f.keys()}
    if tensors:
        tensors(state)
    meta.update(metadata or {})
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path), metadata=meta)
    return path


def _nan_first(state):
    name = sorted(k for k, v in state.items() if v.is_floating_point())[0]
    state[name] = torch.full_like(state[name], float("nan"))


@pytest.mark.parametrize("case", ["nan weights", "config not json", "cuda without cuda", "malformed device"])
def test_checkpoint_and_device_input_is_refused(case, objects, tmp_path, capsys):
    argv = ["eval", "--data", objects / "obj_00000", "--out", tmp_path / "out", "--no-progress"]
    if case == "nan weights":
        argv += ["--checkpoint", _edit_checkpoint(tmp_path, tensors=_nan_first)]
        needles = ["edited.safetensors", "NaN"]
    elif case == "config not json":
        argv += ["--checkpoint", _edit_checkpoint(tmp_path, metadata={"gdensify.config": "{oops"})]
        needles = ["edited.safetensors", "gdensify.config"]
    elif case == "cuda without cuda":
        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
        argv += ["--device", "cuda"]
        needles = ["--device", "'cuda'", "CUDA is not available"]
    else:
        argv += ["--device", "tpu9"]
        needles = ["--device", "'tpu9'"]
    assert_refused(argv, capsys, tmp_path, *needles)


def test_scene_checkpoint_on_object_data_is_one_line(objects, tmp_path, capsys):
    line = assert_refused(["eval", "--data", objects, "--checkpoint", shipped_checkpoint("scene"), "--out",
                           tmp_path / "out", "--no-progress"], capsys, tmp_path)
    assert "evaluation index" not in line  # the message of a scene dataset would mislead here


def test_unknown_data_layout_says_what_was_found_and_expected(tmp_path, capsys):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("x")
    assert_refused(["eval", "--data", tmp_path / "stuff", "--out", tmp_path / "out"], capsys, tmp_path,
                   "notes.txt", "transforms_train.json", ".torch")


# ---------------------------------------------------------------------------------------------------- scenes
def _scene_case(scenes, tmp_path, change):
    case = tmp_path / "scenes"
    shutil.copytree(scenes, case)
    change(case)
    return case


def _index_add(extra, replace=False):
    def change(case):
        path = case / "evaluation_index.json"
        data = {} if replace else json.loads(path.read_text())
        data.update(extra)
        path.write_text(json.dumps(data))
    return change


def _out_of_range(case):
    path = case / "evaluation_index.json"
    data = json.loads(path.read_text())
    key = next(k for k, v in data.items() if v is not None)
    data[key]["target"] = [4200]
    path.write_text(json.dumps(data))


SCENE_CASES = {
    "text as chunk": (lambda c: (c / "test" / "000000.torch").write_text("this is not a torch file"),
                      ["000000.torch", "not a torch-saved chunk"]),
    "index scene missing": (_index_add({"deadbeefdeadbeef": {"context": [0, 10], "target": [5]}}),
                            ["evaluation_index.json", "1 of 2", "deadbeefdeadbeef"]),
    "index scenes all missing": (_index_add({"deadbeefdeadbeef": {"context": [0, 10], "target": [5]}}, True),
                                 ["evaluation_index.json", "1 of 1", "deadbeefdeadbeef"]),
    "index frame out of range": (_out_of_range, ["000000.torch", "4200"]),
}


@pytest.mark.parametrize("case", list(SCENE_CASES))
def test_scene_input_is_refused(case, scenes, tmp_path, capsys):
    change, needles = SCENE_CASES[case]
    data = _scene_case(scenes, tmp_path, change)
    assert_refused(["eval", "--data", data, "--out", tmp_path / "out", "--no-progress"], capsys, tmp_path,
                   *needles)
    assert not (tmp_path / "out").exists()


def test_scene_root_without_test_index_is_still_scene_data(scenes, tmp_path, capsys):
    data = _scene_case(scenes, tmp_path, lambda c: (c / "test" / "index.json").unlink())
    code, _, err = run(["eval", "--data", data, "--out", tmp_path / "out", "--no-progress"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["n_scenes"] == 1


# ---------------------------------------------------------------------------------------------------- render
@pytest.fixture(scope="module")
def ply(tmp_path_factory):
    from gdensify.builtin_scene import trefoil_gaussians

    return save_ply(trefoil_gaussians(300, seed=0), tmp_path_factory.mktemp("ply") / "g.ply")


@pytest.mark.parametrize("case", ["views 0", "resolution 0", "out is a folder", "out exists", "out not png",
                                  "builtin views 0", "builtin out not empty"])
def test_render_input_is_refused(case, ply, tmp_path, capsys):
    (tmp_path / "old.png").write_bytes(b"old")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("keep")
    base = ["render", ply, "--resolution", 16, "--backend", "reference"]
    argv, needles = {
        "views 0": (base + ["--views", 0, "--out", tmp_path / "r.png"], ["--views", "0"]),
        "resolution 0": (["render", ply, "--resolution", 0, "--out", tmp_path / "r.png"], ["--resolution", "0"]),
        "out is a folder": (base + ["--out", tmp_path], ["--out", "is a folder"]),
        "out exists": (base + ["--out", tmp_path / "old.png"], ["old.png", "--overwrite"]),
        "out not png": (base + ["--out", tmp_path / "r.jpg"], ["r.jpg", ".png"]),
        "builtin views 0": (["demo", "--builtin", "--views", 0, "--out", tmp_path / "b"], ["--views", "0"]),
        "builtin out not empty": (["demo", "--builtin", "--gaussians", 50, "--views", 1, "--resolution", 8,
                                   "--backend", "reference", "--out", tmp_path / "full"], ["full", "--overwrite"]),
    }[case]
    assert_refused(argv, capsys, tmp_path, *needles)


def test_render_warns_when_nothing_is_visible(ply, tmp_path, capsys):
    g = load_ply(ply)
    g.log_scales = torch.full_like(g.log_scales, 80.0)
    huge = save_ply(g, tmp_path / "huge.ply")
    code, _, err = run(["render", huge, "--resolution", 16, "--views", 2, "--backend", "reference", "--out",
                        tmp_path / "r.png"], capsys)
    assert code == 0 and "none of the 300 Gaussians is visible" in err


# ---------------------------------------------------------------------------------------------------- outputs
def test_outputs_are_refused_unless_overwrite_and_replaced_whole(objects, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    assert_refused(["reconstruct", "--data", objects, "--out", out, "--no-progress"], capsys, tmp_path,
                   str(out), "--overwrite", "stale.txt")
    code, _, err = run(["reconstruct", "--data", objects / "obj_00000", "--out", out, "--overwrite",
                        "--no-progress"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "obj_00000", "per_object.csv"]
    assert sorted(p.name for p in (out / "obj_00000").iterdir()) == ["coarse.ply", "comparison.png", "fine.ply"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging or lock left


def test_out_never_holds_the_data(objects, tmp_path, capsys):
    data = tmp_path / "objs"
    shutil.copytree(objects, data)
    assert_refused(["reconstruct", "--data", data / "obj_00000", "--out", data, "--overwrite", "--no-progress"],
                   capsys, tmp_path, "--out", "holds --data")


# ---------------------------------------------------------------------------------------------------- configs
def _run_folder(objects, tmp_path) -> Path:
    run_dir = tmp_path / "run"
    experiment = load_experiment("tiny", FAST + [f"data.root={objects}", f"train.out_dir={run_dir}"])
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "logs").mkdir()
    (run_dir / "config.yaml").write_text(run_config_text(experiment))
    (run_dir / "logs" / "metrics.csv").write_text("step,train/loss\n0,1.0\n1,0.9\n")
    return run_dir


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("case", ["empty yaml", "unknown section", "missing section", "negative grad_clip",
                                  "resume with config", "malicious last.ckpt", "truncated last.ckpt",
                                  "resume without run"])
def test_train_input_is_refused(case, objects, tmp_path, capsys):
    run_dir = _run_folder(objects, tmp_path)
    marker = tmp_path / "MARKER"
    if case == "malicious last.ckpt":
        torch.save({"state_dict": {}, "payload": Evil(marker)}, run_dir / "checkpoints" / "last.ckpt")
    else:
        (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04" + os.urandom(200))
    yaml_file = tmp_path / "config.yaml"
    yaml_file.write_text({"empty yaml": "", "unknown section": run_config_text(load_experiment("tiny")) +
                          "trainer: {}\n", "missing section": "model: {backbone: {name: lara}}\ntrain: {}\n"}
                         .get(case, ""))
    argv, needles = {
        "empty yaml": (["train", "--config", yaml_file], ["config.yaml", "missing section", "model.backbone.name"]),
        "unknown section": (["train", "--config", yaml_file], ["config.yaml", "unknown top-level", "trainer"]),
        "missing section": (["train", "--config", yaml_file], ["config.yaml", "['data']"]),
        "negative grad_clip": (["train", "train.grad_clip=-3", f"data.root={objects}",
                                f"train.out_dir={tmp_path / 'new'}"], ["train.grad_clip", "-3"]),
        "resume with config": (["train", "--resume", run_dir, "--config", "scene-tiny"], ["--config", "--resume"]),
        "malicious last.ckpt": (["train", "--resume", run_dir], ["last.ckpt", "weights-only"]),
        "truncated last.ckpt": (["train", "--resume", run_dir], ["last.ckpt", "not a readable checkpoint"]),
        "resume without run": (["train", "--resume", tmp_path / "nothing"], ["config.yaml", "does not exist"]),
    }[case]
    assert_refused(argv, capsys, tmp_path, *needles)
    assert not marker.exists()


def test_run_config_paths_are_relative_to_the_run_folder(objects, tmp_path, monkeypatch):
    monkeypatch.chdir(objects.parent)
    run_dir = _run_folder(Path(objects.name), tmp_path)
    text = (run_dir / "config.yaml").read_text()
    assert "out_dir: .\n" in text and f"root: {os.path.relpath(objects, run_dir)}\n" in text
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    experiment = load_experiment(run_dir / "config.yaml")
    assert Path(experiment.train.out_dir).resolve() == run_dir.resolve()
    assert Path(experiment.data.root).resolve() == objects.resolve()


def test_a_bug_keeps_its_traceback(monkeypatch):
    import gdensify.cli as cli

    def bug(args):
        raise RuntimeError("shape mismatch")  # as torch raises, from outside gdensify

    bug.__code__ = bug.__code__.replace(co_filename=torch.__file__)
    monkeypatch.setattr(cli, "_make_data", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["make-data", "objects", "x", "--count", "1"])
    with pytest.raises(KeyError):
        monkeypatch.setattr(cli, "_make_data", lambda args: {}["missing"])
        main(["make-data", "objects", "x", "--count", "1"])


@pytest.mark.parametrize("change, needle", [
    (lambda k, w: k[:, 0, 0].zero_(), "focal lengths must be > 0"),
    (lambda k, w: k[:, 1, 1].mul_(-1), "focal lengths must be > 0"),
    (lambda k, w: w.zero_(), "singular rotation"),
])
def test_degenerate_cameras_are_refused(change, needle):
    from gdensify.cameras import Cameras

    k = torch.tensor([[[20.0, 0, 8], [0, 20, 8], [0, 0, 1]]])
    w = torch.eye(4)[None].clone()
    change(k, w)
    with pytest.raises(ValueError, match=needle):
        Cameras(w, k, 16, 16)
    with pytest.raises(ValueError, match="whole number of pixels"):
        Cameras(torch.eye(4)[None], torch.tensor([[[20.0, 0, 8], [0, 20, 8], [0, 0, 1]]]), 10.7, 16)


def test_cli_subprocess_exit_code_and_one_line(ply, tmp_path):
    result = subprocess.run([sys.executable, "-m", "gdensify.cli", "render", str(ply), "--views", "0", "--out",
                             str(tmp_path / "r.png")], capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == 2 and result.stderr.strip() == "gdensify render: error: --views must be > 0, got 0"


def test_leftovers_of_ended_processes_are_removed_and_live_ones_kept(tmp_path):
    from gdensify.io import atomic_path
    from gdensify.io.staging import owned_temp_prefix, remove_stale

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    mine = owned_temp_prefix("last.ckpt")
    dead = mine.replace(f".{os.getpid()}@", f".{ended.pid}@")
    other_host = f".last.ckpt.{ended.pid}@another-host."
    for name in (mine + "a.tmp", dead + "b.tmp", other_host + "c.tmp", ".last.ckpt.legacy.tmp"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / f".build.{ended.pid}@{mine.split('@')[1]}d.build").mkdir()
    with atomic_path(tmp_path / "last.ckpt") as tmp:  # the next write of last.ckpt removes the dead writer's temp
        tmp.write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == sorted(
        [mine + "a.tmp", other_host + "c.tmp", ".last.ckpt.legacy.tmp"])
    assert [p.name for p in remove_stale(tmp_path, "build", (".build",))] == [
        f".build.{ended.pid}@{mine.split('@')[1]}d.build"]
