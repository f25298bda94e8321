"""RealEstate10K-layout scenes as a dataset (`DATASETS["re10k"]`): the chunks of `re10k` through the view
samplers (`BoundedViewSampler` for training, the evaluation index for evaluation) and the shims, as `ViewExample`s
(context views are the inputs; black backgrounds as in MVSplat).

Root layout: `ROOT/train`, `ROOT/test` (chunks and `index.json`) and `ROOT/evaluation_index.json` (see `re10k`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from ..cameras import nearest_by_position
from .batch import ViewExample
from .re10k import ChunkStore, RawScene, RE10KFormatError, ViewOptions, load_views
from .shims import IntrinsicsMode
from .source import DataSource, step_of
from .view_samplers import BoundedViewSampler, EvaluationEntry, load_evaluation_index

__all__ = ["RE10KDataConfig", "RE10KScenes", "RE10KDataset"]


@dataclass
class RE10KDataConfig:
    """RealEstate10K-layout chunks, resized and centre-cropped to `image_size`²; training views from
    `BoundedViewSampler` (2 context views, targets between); evaluation from `index` (None:
    ROOT/evaluation_index.json)."""

    name: Literal["re10k"] = "re10k"
    root: str = "data/scenes"
    image_size: int = 64
    n_targets: int = 4
    min_gap: int = 10  # frames between the two context views
    max_gap: int = 30
    # Context-gap warm-up (MVSplat/pixelSplat's view sampler): over the first `gap_warm_up_steps` training steps the
    # gap bounds grow linearly from (initial_min_gap, initial_max_gap) (None: min_gap, max_gap) to
    # (min_gap, max_gap). `pixelsplat_gap_bug` keeps the bug MVSplat and GD keep on purpose: the gap always equals
    # the scheduled minimum (25 → 45 frames over the warm-up, then 45, with the released RE10K settings).
    gap_warm_up_steps: int = 0
    initial_min_gap: int | None = None
    initial_max_gap: int | None = None
    pixelsplat_gap_bug: bool = False
    near: float = 1.0
    far: float = 100.0
    validate: bool = True  # validate on the first `val_limit` entries of ROOT's evaluation index
    val_limit: int = 4
    index: str | None = None

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.n_targets < 1 or self.val_limit < 1:
            raise ValueError("data.image_size must be >= 8, data.n_targets and data.val_limit >= 1")
        if not 1 <= self.min_gap <= self.max_gap:
            raise ValueError(f"need 1 <= data.min_gap <= data.max_gap, got {self.min_gap}, {self.max_gap}")
        if self.gap_warm_up_steps < 0:
            raise ValueError(f"data.gap_warm_up_steps must be >= 0, got {self.gap_warm_up_steps}")
        initial = (self.initial_min_gap or self.min_gap, self.initial_max_gap or self.max_gap)
        if not 1 <= initial[0] <= initial[1]:
            raise ValueError(f"need 1 <= data.initial_min_gap <= data.initial_max_gap, got {initial}")
        if not 0 < self.near < self.far:
            raise ValueError(f"need 0 < data.near < data.far, got {self.near}, {self.far}")


def _mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 steps), stable across runs and platforms."""
    x = 0x9E3779B97F4A7C15
    mask = (1 << 64) - 1
    for p in parts:
        x = (x ^ (int(p) & mask)) & mask
        x = (x + 0x9E3779B97F4A7C15) & mask
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        x = z ^ (z >> 31)
    return x & ((1 << 63) - 1)


def _example(scene: RawScene, context: Sequence[int], target: Sequence[int], options: ViewOptions,
             flip: bool) -> ViewExample:
    """Context frames as inputs, black backgrounds (as MVSplat); frame numbers kept as the view indices."""
    c_img, c_cam = load_views(scene, context, options, flip)
    t_img, t_cam = load_views(scene, target, options, flip)
    return ViewExample(c_img, c_cam, t_img, t_cam, torch.zeros(len(t_cam), 3), scene.key, torch.zeros(3),
                       torch.tensor(list(context), dtype=torch.int64), torch.tensor(list(target), dtype=torch.int64))


class RE10KDataset(Dataset):
    """Map-style dataset over one split of an RE10K-layout root.

    Two modes:
    - evaluation (``evaluation_index`` given: a JSON path or a parsed mapping): one item per non-null entry whose
      scene is in this split, with exactly the entry's context and target frames; deterministic. Entries for
      scenes absent from the split are skipped (`missing_scenes` lists them) or, with ``on_missing="error"``,
      raise.
    - training (no index): one item per scene; views drawn by ``view_sampler`` (default `BoundedViewSampler()`)
      with a `torch.Generator` seeded from (example seed, item); a plain `item` key uses `seed` as its example seed.
      A scene too short for the sampler is replaced by the next item (deterministically).
    ``flip_augment`` mirrors an example with probability 0.5 (training only).
    Items are ordered chunk by chunk, so a small chunk cache (``chunk_cache`` chunks) suffices when read in order.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "test",
        *,
        image_shape: tuple[int, int] | None = (256, 256),
        near: float = 1.0,
        far: float = 100.0,
        intrinsics_mode: IntrinsicsMode = "exact",
        evaluation_index: str | os.PathLike | Mapping | None = None,
        view_sampler: BoundedViewSampler | None = None,
        seed: int = 0,
        flip_augment: bool = False,
        on_missing: Literal["skip", "error"] = "skip",
        trusted: bool = False,
        chunk_cache: int = 2,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.store = ChunkStore(self.root / split, trusted=trusted, cache_size=chunk_cache)
        self.options = ViewOptions(image_shape, near, far, intrinsics_mode)
        self.seed = int(seed)
        self.flip_augment = flip_augment
        self.missing_scenes: list[str] = []
        if evaluation_index is not None:
            self.view_sampler = None
            entries = load_evaluation_index(evaluation_index)
            position = {k: i for i, k in enumerate(self.store.keys)}
            self.missing_scenes = [k for k in entries if k not in position]
            if self.missing_scenes and on_missing == "error":
                where = evaluation_index if isinstance(evaluation_index, (str, os.PathLike)) else "the index"
                shown = ", ".join(self.missing_scenes[:10]) + (", ..." if len(self.missing_scenes) > 10 else "")
                raise RE10KFormatError(
                    f"{where}: {len(self.missing_scenes)} of {len(entries)} evaluation-index scene(s) are in no chunk "
                    f"of {self.store.dir}: {shown} (evaluating the rest would change the protocol)",
                    scene=self.missing_scenes[0])
            keys = sorted((k for k in entries if k in position), key=position.__getitem__)
            self.items: list[tuple[str, EvaluationEntry | None]] = [(k, entries[k]) for k in keys]
        else:
            self.view_sampler = view_sampler or BoundedViewSampler()
            self.items = [(k, None) for k in self.store.keys]

    @classmethod
    def for_evaluation(cls, root: str | os.PathLike, index: str | os.PathLike | Mapping | None = None,
                       **kwargs) -> "RE10KDataset":
        """The test split with `index` (default ROOT/evaluation_index.json)."""
        index = Path(root) / "evaluation_index.json" if index is None else index
        return cls(root, "test", evaluation_index=index, **kwargs)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: int | tuple[int, int]) -> ViewExample:
        """`item`, or in training `(item, example_seed)` (as `gdensify.training.sampling.StepSampler` yields):
        the views are then drawn from a generator seeded by (example_seed, item) (`seed` for a plain `item`), at
        the training step the example seed carries (`source.step_of`; the view sampler's gap schedule)."""
        item, example_seed = item if isinstance(item, tuple) else (item, self.seed)
        if not 0 <= item < len(self.items):
            raise IndexError(item)
        key, entry = self.items[item]
        if entry is not None:
            scene = self.store.scene(key)
            return _example(scene, entry.context, entry.target, self.options, False)
        for attempt in range(len(self.items)):
            key = self.items[(item + attempt) % len(self.items)][0]
            scene = self.store.scene(key)
            g = torch.Generator().manual_seed(_mix_seed(example_seed, attempt, item))
            try:
                context, target = self.view_sampler.sample(len(scene), g, step=step_of(example_seed))
            except ValueError:
                continue
            flip = self.flip_augment and bool(torch.rand((), generator=g) < 0.5)
            return _example(scene, context.tolist(), target.tolist(), self.options, flip)
        raise ValueError(f"no scene in {self.store.dir} is long enough for {self.view_sampler}")


class RE10KScenes(DataSource):
    """`DATASETS["re10k"]`: scenes of an RE10K-layout `config.root`; validation on its evaluation index."""

    config_class = RE10KDataConfig
    layout = "test/ or train/ holding .torch chunks (and index.json)"
    item_label = "scenes"
    nearest_input = staticmethod(nearest_by_position)

    @staticmethod
    def detect(folder: str | os.PathLike) -> bool:
        """Whether `folder` is an RE10K-layout root (a `test/` or `train/` split with `index.json` or chunks)."""
        folder = Path(folder)
        return any((folder / split / "index.json").is_file() or any((folder / split).glob("*.torch"))
                   for split in ("test", "train") if (folder / split).is_dir())

    def _options(self) -> dict:
        c = self.config
        return {"image_shape": (self.image_size, self.image_size), "near": c.near, "far": c.far}

    def view_sampler(self) -> BoundedViewSampler:
        """The training view sampler the config describes (gap bounds, warm-up, pixelSplat's gap rule)."""
        c = self.config
        return BoundedViewSampler(num_target_views=c.n_targets, min_gap=c.min_gap, max_gap=c.max_gap,
                                  warm_up_steps=c.gap_warm_up_steps, initial_min_gap=c.initial_min_gap or c.min_gap,
                                  initial_max_gap=c.initial_max_gap or c.max_gap,
                                  pixelsplat_gap_bug=c.pixelsplat_gap_bug)

    def training_dataset(self, seed: int = 0) -> RE10KDataset:
        c = self.config
        sampler = self.view_sampler()
        return RE10KDataset(self.existing(c.root, "data.root"), "train", view_sampler=sampler, seed=seed,
                            **self._options())

    def evaluation_dataset(self, root: str | os.PathLike | None = None) -> RE10KDataset:
        c = self.config
        root = self.existing(c.root if root is None else root, "data.root")
        return RE10KDataset.for_evaluation(root, c.index, on_missing="error", **self._options())

    def validation_root(self) -> str | None:
        return self.config.root if self.config.validate else None
