"""A posed capture of your own as a dataset (`DATASETS["capture"]`): one folder in any layout `data.formats`
reads (nerfstudio / instant-ngp `transforms.json`, COLMAP, LLFF, IDR/NeuS; Blender folders are the `blender`
dataset), reconstructed as one object or one scene.

`role` decides which example is built: `"object"` (`formats.capture_to_object_example`: inputs by spread viewing
directions or `inputs`, targets the other frames, the object centred and scaled without ground-truth bounds) or
`"scene"` (`formats.capture_to_scene_example`: a context pair, targets between them, the scene rescaled to the
scale the scene model was trained at). The command line sets it from the model's backbone. The example carries
`to_dataset_frame`, so reconstructions come back in the capture's units and frame; `notes` holds the line that
says how the example was made (centre, radius, scale and where each came from).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from torch.utils.data import Dataset

from ..cameras import nearest_by_direction, nearest_by_position
from .batch import ViewExample
from .formats import FORMATS, capture_to_object_example, capture_to_scene_example, detect_format, read_capture
from .formats.capture import CaptureFormatError
from .source import DataSource

__all__ = ["CaptureDataConfig", "Captures"]


@dataclass
class CaptureDataConfig:
    """One capture folder (`root`). Objects: `inputs` (frame indices) or `n_inputs` spread views, targets at
    `target_size` (default: the model's input size), `center`/`radius` (your units) to override the estimates.
    Scenes: `context` (two frame indices) or an automatic pair, `scene_scale` to override the automatic rescaling,
    inputs at `image_size`²."""

    name: Literal["capture"] = "capture"
    root: str = "."
    format: str | None = None  # one of `data.formats.FORMATS`; None: detected
    role: Literal["object", "scene"] = "object"
    image_size: int | None = None
    inputs: tuple[int, ...] | None = None
    n_inputs: int = 4
    target_size: int | None = None
    center: tuple[float, float, float] | None = None
    radius: float | None = None
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    context: tuple[int, int] | None = None
    scene_scale: float | None = None
    val_limit: int = 1

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"data.format: {self.format!r} is not one of {sorted(FORMATS)}")
        if self.n_inputs < 1:
            raise ValueError(f"data.n_inputs must be >= 1, got {self.n_inputs}")
        if self.scene_scale is not None and not self.scene_scale > 0:
            raise ValueError(f"data.scene_scale must be positive, got {self.scene_scale}")


class Captures(DataSource):
    """`DATASETS["capture"]`: the capture at `config.root` as one evaluation example (module docstring)."""

    config_class = CaptureDataConfig

    def __init__(self, config: CaptureDataConfig, image_size: int | None = None) -> None:
        super().__init__(config, image_size)
        self.item_label = f"{config.role}s"
        self.nearest_input = nearest_by_direction if config.role == "object" else nearest_by_position
        self.notes: list[str] = []

    @staticmethod
    def detect(folder: str | os.PathLike) -> bool:
        try:
            return detect_format(folder) != "blender"
        except (CaptureFormatError, FileNotFoundError):
            return False

    def training_dataset(self, seed: int = 0) -> Dataset:
        raise ValueError(f"{self.config.root}: a capture is one item for evaluation and reconstruction; train on a "
                         "dataset (data.name: blender or re10k)")

    def evaluation_dataset(self, root: str | os.PathLike | None = None) -> list[ViewExample]:
        cfg = self.config
        capture = read_capture(self.existing(root or cfg.root, "data.root"), cfg.format)
        if cfg.role == "object":
            made = capture_to_object_example(
                capture, inputs=cfg.inputs, n_inputs=cfg.n_inputs, input_size=self.image_size,
                target_size=cfg.target_size, background=cfg.background, center=cfg.center, radius=cfg.radius)
        else:
            made = capture_to_scene_example(capture, context=cfg.context, image_size=self.image_size,
                                            scene_scale=cfg.scene_scale)
        self.notes = [made.summary()]
        example = made.example
        example.to_dataset_frame = made.to_output_frame
        return [example]

    def validation_root(self) -> str | None:
        return None
