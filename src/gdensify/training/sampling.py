"""Deterministic, resumable sampling: the examples of optimizer step s are a pure function of (seed, s, rank).

`StepSampler` yields `(item_index, example_seed)` pairs, `batch_size` per step, from the step the trainer is at
(read through `step_source` when iteration starts) to `max_steps`. Sample i = s·batch_size + j of a rank lies in
pass p = i // num_items, which visits every item once in a random order (a permutation per (seed, pass, rank)).
Datasets derive every random choice of an example (views, colours) from `example_seed`, so a resumed run sees
exactly the batches an uninterrupted run would, whatever the training loop's epoch bookkeeping does.

`example_seed` is a `gdensify.data.source.ExampleSeed`: an int that also carries the optimizer step `s` its
example is drawn for (`.step`), for data schedules over training (e.g. the scene view sampler's context-gap
warm-up); a plain int key means step 0 (`step_of`).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from ..data.source import ExampleSeed


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class StepSampler(Sampler[tuple[int, int]]):
    """`batch_size` draws per step for steps [step_source(), max_steps)."""

    def __init__(self, num_items: int, batch_size: int, max_steps: int, seed: int = 0,
                 step_source: Callable[[], int] = lambda: 0) -> None:
        if num_items < 1:
            raise ValueError("StepSampler needs at least one item; is the dataset empty?")
        if batch_size < 1 or max_steps < 0:
            raise ValueError("StepSampler needs batch_size >= 1 and max_steps >= 0")
        self.num_items, self.batch_size, self.max_steps, self.seed = num_items, batch_size, max_steps, seed
        self.step_source = step_source

    def __len__(self) -> int:
        return max(0, self.max_steps - self.step_source()) * self.batch_size

    def _permutation(self, pass_index: int, rank: int) -> list[int]:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + pass_index) * 7919 + rank)
        return torch.randperm(self.num_items, generator=g).tolist()

    def example_seed(self, sample: int, rank: int) -> ExampleSeed:
        g = torch.Generator().manual_seed((self.seed * 1_000_033 + sample) * 7907 + rank + 1)
        return ExampleSeed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)), sample // self.batch_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rank, start = _rank(), self.step_source()
        cached: tuple[int, list[int]] = (-1, [])
        for sample in range(start * self.batch_size, self.max_steps * self.batch_size):
            pass_index = sample // self.num_items
            if cached[0] != pass_index:
                cached = (pass_index, self._permutation(pass_index, rank))
            yield cached[1][sample % self.num_items], self.example_seed(sample, rank)
