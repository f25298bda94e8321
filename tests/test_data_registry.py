"""The `DATASETS` registry: detection, typed configs (old experiments included), evaluation examples."""

import json

import pytest
import torch

from gdensify.assets import sample_data, shipped_checkpoint
from gdensify.config import ConfigError, dump_yaml, to_dict
from gdensify import Gaussians
from gdensify.data import (
    DATASETS,
    BlenderDataConfig,
    BlenderObjects,
    RE10KDataConfig,
    RE10KScenes,
    ViewBatch,
    ViewExample,
    build_dataset,
    data_config_from_checkpoint,
    data_config_from_dict,
    detect_dataset,
    read_blender_cameras,
)
from gdensify.data.blender_objects import ObjectEvaluationDataset
from gdensify.data.captures import Captures
from gdensify.io import load_checkpoint


def test_registry_names_and_detection(tmp_path):
    assert DATASETS == {"blender": BlenderObjects, "re10k": RE10KScenes, "capture": Captures}
    assert detect_dataset(sample_data("object")) == "blender"
    assert detect_dataset(sample_data("object") / "obj_00001") == "blender"
    assert detect_dataset(sample_data("scene")) == "re10k"
    with pytest.raises(ValueError, match=rf"{tmp_path.name}: no known dataset layout"):
        detect_dataset(tmp_path)
    with pytest.raises(ValueError, match="no known dataset layout"):
        detect_dataset(tmp_path / "missing")


def test_old_configs_and_shipped_checkpoints_map_to_data_configs():
    objects = data_config_from_checkpoint(load_checkpoint(shipped_checkpoint("object")))
    assert objects == BlenderDataConfig(root="data/objects/train2", val_root="data/objects/heldout", val_limit=4)
    scenes = data_config_from_checkpoint(load_checkpoint(shipped_checkpoint("scene")))  # a pre-registry experiment
    assert scenes == RE10KDataConfig(root="data/scenes", image_size=64, min_gap=10, max_gap=30)
    assert data_config_from_dict({"root": "x"}, kind="scene") == RE10KDataConfig(root="x")
    # pre-registry object runs had every target on the background: resuming one must not switch to random greys
    old = data_config_from_dict({"root": "x"}, kind="object")
    assert old == BlenderDataConfig(root="x", target_backgrounds="fixed")
    assert data_config_from_dict({"name": "blender"}).target_backgrounds == "random_grey"
    assert data_config_from_dict({"name": "re10k", "index": "i.json"}).index == "i.json"
    with pytest.raises(ConfigError, match="data.min_gap"):
        data_config_from_dict({"min_gap": 3}, kind="object")
    with pytest.raises(ConfigError, match="unknown dataset 'nope'"):
        data_config_from_dict({"name": "nope"})
    # an experiment dumped before the registry (no data.name) loads as the dataset its kind names
    from gdensify.training.experiment import experiment_from_dict

    stored = json.loads(load_checkpoint(shipped_checkpoint("scene")).metadata["gdensify.experiment"])
    assert "name" not in stored["data"]
    experiment = experiment_from_dict(stored)
    assert experiment.data == scenes and to_dict(experiment)["data"]["name"] == "re10k"
    old_objects = experiment_from_dict({"kind": "object", "data": {"root": "x", "val_limit": 4}})
    assert old_objects.data == BlenderDataConfig(root="x", val_limit=4, target_backgrounds="fixed")


def test_experiment_yaml_round_trip_keeps_the_dataset(tmp_path):
    from gdensify.training.experiment import load_experiment

    experiment = load_experiment("scene-tiny", ["data.root=elsewhere", "data.index=idx.json"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(experiment))
    again = load_experiment(path)
    assert again.data == experiment.data and again.data.name == "re10k" and again.data.index == "idx.json"
    assert load_experiment("tiny").data.name == "blender"


def test_blender_evaluation_examples_follow_the_protocol():
    root = sample_data("object")
    with pytest.raises(ValueError, match="image_size"):
        build_dataset(BlenderDataConfig(root=str(root)))
    source = build_dataset(BlenderDataConfig(root=str(root)), image_size=32)
    examples = list(source.evaluation_examples())
    reference = ObjectEvaluationDataset(root, 32)
    assert len(examples) == len(reference) == 3
    for example, expected in zip(examples, reference):
        assert isinstance(example, ViewExample) and example.name == expected.name
        assert torch.equal(example.input_images, expected.input_images)
        assert example.input_images.shape[1:3] == (32, 32) and len(example.input_indices) == 4
    # Gaussians go back to the dataset's units: the input camera centres map to the stored ones
    first = examples[0]
    centres = first.input_cameras.centers
    n = len(centres)
    moved = first.to_dataset_frame(Gaussians(centres, torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4), torch.zeros(n, 3),
                                             torch.zeros(n), torch.zeros(n, 1, 3)))
    stored = read_blender_cameras(root / first.name, "train")[0].centers[first.input_indices]
    torch.testing.assert_close(moved.means, stored.to(moved.means.dtype), atol=1e-4, rtol=1e-5)
    assert len(list(source.evaluation_examples(limit=2))) == 2
    assert build_dataset(BlenderDataConfig(root=str(root), image_size=16), 32).image_size == 16
    validation = build_dataset(BlenderDataConfig(root=str(root), val_root=str(root), val_limit=2), 32)
    assert [e.name for e in validation.validation_examples()] == [e.name for e in examples[:2]]
    assert build_dataset(BlenderDataConfig(root=str(root)), 32).validation_examples() == []


def test_re10k_evaluation_examples_and_batched_cameras(tmp_path):
    root = sample_data("scene")
    source = build_dataset(RE10KDataConfig(root=str(root), image_size=32))
    examples = list(source.evaluation_examples())
    index = json.loads((root / "evaluation_index.json").read_text())
    assert [e.name for e in examples] == [k for k in index if index[k] is not None]
    assert examples[0].input_indices.tolist() == index[examples[0].name]["context"]
    assert examples[0].to_dataset_frame is None and examples[0].input_images.shape == (2, 32, 32, 3)
    assert len(source.validation_examples()) == min(len(examples), 4)
    assert build_dataset(RE10KDataConfig(root=str(root), validate=False)).validation_examples() == []
    with pytest.raises(FileNotFoundError, match="data.root.*make-data"):
        build_dataset(RE10KDataConfig(root=str(tmp_path / "none"))).training_dataset()
    batch = ViewBatch.collate(examples)
    w2c, k = batch.input_world_to_camera, batch.input_intrinsics
    assert w2c.shape == (len(examples), 2, 4, 4) and k.shape == (len(examples), 2, 3, 3)
    assert torch.equal(w2c[1], examples[1].input_cameras.world_to_camera)
    assert torch.equal(k[0], examples[0].input_cameras.intrinsics)
    assert batch.input_near_far.tolist() == [[1.0, 100.0]] * len(examples)
