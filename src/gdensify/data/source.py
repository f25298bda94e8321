"""`DataSource`: what every entry of `gdensify.data.DATASETS` provides (MVSplat's `Dataset` classes behind its
`DATASETS` table, with the evaluation protocol included).

An entry is built from its typed config (a dataclass with a `name: Literal[...]` field, one member of the
`DataConfig` union) and the model's input size, and hands out `ViewExample`s:
  * `detect(folder)`: whether a folder is in this layout (the CLI's `--data` detection);
  * `training_dataset(seed)`: a map-style dataset keyed by `(item, example_seed)` pairs
    (`gdensify.training.sampling.StepSampler`; `example_seed` is an `ExampleSeed`, an int carrying the training
    step its example is drawn for);
  * `evaluation_dataset(root)`: the dataset's evaluation protocol on `root` (default `config.root`), map-style;
    `evaluation_examples(limit)` iterates it;
  * `validation_examples()`: the first `config.val_limit` evaluation examples of `validation_root()`.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterator

from torch.utils.data import Dataset

from ..cameras import Cameras
from .batch import ViewExample

__all__ = ["DataSource", "ExampleSeed", "step_of"]


class ExampleSeed(int):
    """An example's seed (an int, so `torch.Generator().manual_seed(seed)` works as before) with the optimizer
    step the example is drawn for as `.step`."""

    step: int

    def __new__(cls, value: int, step: int = 0) -> "ExampleSeed":
        seed = super().__new__(cls, value)
        seed.step = int(step)
        return seed

    def __getnewargs__(self) -> tuple[int, int]:  # pickles (DataLoader workers) with its step
        return int(self), self.step

    def __repr__(self) -> str:
        return f"ExampleSeed({int(self)}, step={self.step})"


def step_of(example_seed: int) -> int:
    """The training step an example seed was drawn for (0 for a plain int)."""
    return getattr(example_seed, "step", 0)


class DataSource(ABC):
    """One dataset layout: training data, its evaluation protocol and validation examples as `ViewExample`s."""

    config_class: type
    layout: str = ""  # what `detect` looks for, for messages
    item_label: str  # what one example is, plural ("objects", "scenes"): report and CSV names
    nearest_input: Callable[[Cameras, Cameras], list[int]]  # each target's nearest input view (comparison images)

    def __init__(self, config: Any, image_size: int | None = None) -> None:
        """image_size: the model's input size, used when the config does not set `image_size`."""
        self.config = config
        size = config.image_size if config.image_size is not None else image_size
        if size is None:
            raise ValueError("data.image_size is null and no model input size was given")
        self.image_size = int(size)

    @staticmethod
    @abstractmethod
    def detect(folder: str | os.PathLike) -> bool:
        """Whether `folder` holds data in this layout."""

    @abstractmethod
    def training_dataset(self, seed: int = 0) -> Dataset:
        """Training `ViewExample`s keyed by `(item, example_seed)`."""

    @abstractmethod
    def evaluation_dataset(self, root: str | os.PathLike | None = None) -> Dataset:
        """The evaluation protocol's `ViewExample`s on `root` (default `config.root`), map-style."""

    @abstractmethod
    def validation_root(self) -> str | None:
        """The folder validated at every epoch end, or None (no validation)."""

    def protocol_departures(self, trained: Any | None = None) -> list[str]:
        """How this config's evaluation departs from the dataset's protocol (and from `trained`, the data config
        the model was trained with, when it is the same dataset), one note each; printed and recorded in
        `metrics.json` by `eval` and `reconstruct`."""
        return []

    def evaluation_examples(self, limit: int | None = None) -> Iterator[ViewExample]:
        """The first `limit` (default all) evaluation examples of `config.root`, read one at a time."""
        dataset = self.evaluation_dataset()
        count = len(dataset) if limit is None else min(limit, len(dataset))
        return (dataset[i] for i in range(count))

    def validation_examples(self) -> list[ViewExample]:
        root = self.validation_root()
        if root is None:
            return []
        dataset = self.evaluation_dataset(root)
        return [dataset[i] for i in range(min(len(dataset), self.config.val_limit))]

    @staticmethod
    def existing(path: str | os.PathLike, key: str) -> str:
        """`path` unchanged if it exists, else FileNotFoundError naming the config `key`."""
        if not Path(path).exists():
            raise FileNotFoundError(f"{key}: {path} does not exist (generate synthetic data with `gdensify make-data "
                                    f"objects|scenes DIR --count N`)")
        return str(path)
