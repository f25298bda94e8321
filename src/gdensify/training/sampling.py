"""Deterministic, resumable sampling: each epoch is a fixed number of steps drawn from (seed, epoch, rank).

The sampler yields `(item_index, example_seed)` pairs; datasets derive every random choice of an example (views,
background colours) from `example_seed`, so an epoch's batches are a pure function of (seed, epoch, rank) and a
run resumed from an epoch-end checkpoint continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    """`samples_per_epoch` draws (with replacement across epochs, a permutation within) per rank."""

    def __init__(self, num_items: int, samples_per_epoch: int, seed: int = 0) -> None:
        if num_items < 1:
            raise ValueError("EpochSampler needs at least one item; is the dataset empty?")
        self.num_items, self.samples_per_epoch, self.seed, self.epoch = num_items, samples_per_epoch, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 7919 + rank)
        repeats = -(-self.samples_per_epoch // self.num_items)
        items = torch.cat([torch.randperm(self.num_items, generator=g) for _ in range(repeats)])
        seeds = torch.randint(0, 2**31 - 1, (self.samples_per_epoch,), generator=g)
        return iter(zip(items[: self.samples_per_epoch].tolist(), seeds.tolist()))
