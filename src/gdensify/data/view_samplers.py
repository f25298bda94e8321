"""View samplers: which frames of a sequence or an object are the inputs and which the targets.

Objects (the protocol in `gdensify.data.protocol`):
  * `select_input_views`: the evaluation inputs, farthest-point sampling on viewing directions from frame 0;
  * `TrainingViewSampler`: random inputs spread around the object (one per direction group) and random targets.
Scenes (MVSplat's `view_sampler/`):
  * `BoundedViewSampler`: two context frames a bounded gap apart and targets between them (training);
  * `load_evaluation_index`: the fixed context and target frames of every test scene (MVSplat's
    `evaluation_index_re10k.json` format).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from jaxtyping import Float
from torch import Tensor

from ..cameras import Cameras
from .blender import closest_point_to_axes
from .re10k import RE10KFormatError

__all__ = ["view_directions", "farthest_view_sampling", "select_input_views", "group_views", "TrainingViewSampler",
           "BoundedViewSampler", "EvaluationEntry", "load_evaluation_index"]


# ---------------------------------------------------------------------------------------------------- objects
def view_directions(cameras: Cameras, center: Float[Tensor, "3"] | None = None) -> Float[Tensor, "V 3"]:
    """Unit vectors from `center` (default: the point closest to all optical axes) to each camera centre."""
    centres = cameras.centers.detach().double().cpu()
    if center is None:
        c2w = cameras.camera_to_world.detach().double().cpu()
        center = closest_point_to_axes(c2w[:, :3, 3], torch.nn.functional.normalize(c2w[:, :3, 2], dim=-1))
    return torch.nn.functional.normalize(centres - torch.as_tensor(center, dtype=torch.float64), dim=-1)


def farthest_view_sampling(directions: Float[Tensor, "V 3"], count: int, start: int = 0) -> list[int]:
    """Greedy farthest-point sampling by angle between unit directions; deterministic (ties → lower index)."""
    v = len(directions)
    if not 1 <= count <= v:
        raise ValueError(f"cannot choose {count} views out of {v}")
    if not 0 <= start < v:
        raise ValueError(f"start view {start} out of range 0..{v - 1}")
    d = directions.double()
    chosen = [start]
    min_angle = torch.arccos((d @ d[start]).clamp(-1, 1))
    for _ in range(count - 1):
        scores = min_angle.clone()
        scores[chosen] = -1.0
        best = int(torch.argmax(scores))  # argmax returns the first maximum: ties → lower index
        chosen.append(best)
        min_angle = torch.minimum(min_angle, torch.arccos((d @ d[best]).clamp(-1, 1)))
    return chosen


def select_input_views(cameras: Cameras, count: int = 4, start: int = 0) -> list[int]:
    """The protocol's input views: farthest-point sampling on viewing directions from frame `start` (0)."""
    return farthest_view_sampling(view_directions(cameras), count, start)


def group_views(cameras: Cameras, groups: int = 4) -> list[list[int]]:
    """Deterministic direction clusters: farthest-point seeds, each view assigned to the nearest seed (by angle)."""
    d = view_directions(cameras)
    seeds = farthest_view_sampling(d, groups)
    assign = torch.argmax(d @ d[seeds].T, dim=1)
    assign[seeds] = torch.arange(groups)  # every group holds at least its seed (duplicate directions)
    return [torch.nonzero(assign == g).flatten().tolist() for g in range(groups)]


class TrainingViewSampler:
    """Random input / target view indices for one training example.

    Inputs: one random view from each of `n_inputs` direction groups (`group_views`), in random group order, so
    inputs are spread around the object but vary. Targets: `n_targets` distinct random views of the whole split
    (inputs allowed, as in the official Gobjaverse loader) or, with `targets_exclude_inputs`, of the others."""

    def __init__(self, n_inputs: int = 4, n_targets: int = 4, targets_exclude_inputs: bool = False) -> None:
        if n_inputs < 1 or n_targets < 1:
            raise ValueError("TrainingViewSampler needs n_inputs >= 1 and n_targets >= 1")
        self.n_inputs, self.n_targets, self.exclude = n_inputs, n_targets, targets_exclude_inputs

    def __call__(self, cameras: Cameras, generator: torch.Generator | None = None) -> tuple[list[int], list[int]]:
        v = len(cameras)
        need = self.n_targets + (self.n_inputs if self.exclude else 0)
        if v < self.n_inputs or v < need:
            raise ValueError(f"{v} views are too few for {self.n_inputs} inputs and {self.n_targets} targets"
                             + (" (targets exclude inputs)" if self.exclude else ""))
        groups = group_views(cameras, self.n_inputs)
        order = torch.randperm(self.n_inputs, generator=generator).tolist()
        inputs = []
        for g in order:
            members = groups[g]
            inputs.append(members[int(torch.randint(len(members), (1,), generator=generator))])
        pool = [i for i in range(v) if not (self.exclude and i in inputs)]
        perm = torch.randperm(len(pool), generator=generator)[: self.n_targets].tolist()
        return inputs, [pool[i] for i in perm]



# ------------------------------------------------------------------------------------- scenes: evaluation index
@dataclass(frozen=True)
class EvaluationEntry:
    context: tuple[int, ...]
    target: tuple[int, ...]


def load_evaluation_index(source: str | os.PathLike | Mapping) -> dict[str, EvaluationEntry]:
    """Read `{scene key: {"context": [i, j], "target": [a, b, c]} | null}`; null entries are skipped.

    `source` is a JSON file or an already-parsed mapping. Order is preserved."""
    file = None
    if isinstance(source, Mapping):
        raw = source
    else:
        file = Path(source)
        try:
            raw = json.loads(file.read_text())
        except FileNotFoundError as exc:
            raise RE10KFormatError("evaluation index not found", file=file) from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RE10KFormatError(f"invalid JSON ({exc})", file=file) from exc
        if not isinstance(raw, dict):
            raise RE10KFormatError("an evaluation index must be a JSON object keyed by scene", file=file)
    entries = {}
    for key, value in raw.items():
        if value is None:
            continue
        if not isinstance(value, Mapping) or "context" not in value or "target" not in value:
            raise RE10KFormatError(f"entry must be null or have 'context' and 'target', got {value!r}",
                                   file=file, scene=key)
        parts = []
        for name in ("context", "target"):
            seq = value[name]
            if not isinstance(seq, (list, tuple)) or not seq or not all(
                    isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in seq):
                raise RE10KFormatError(f"'{name}' must be a non-empty list of frame indices, got {seq!r}",
                                       file=file, scene=key)
            parts.append(tuple(seq))
        entries[key] = EvaluationEntry(*parts)
    return entries


# ---------------------------------------------------------------------------------------------- scenes: training
@dataclass
class BoundedViewSampler:
    """MVSplat/pixelSplat's "bounded" training view sampler (two context views, targets between them).

    - The context gap (frames between the two context views) is drawn uniformly in [min_gap, max_gap], with
      max_gap clipped to V - 1 and min_gap raised to 2·min_distance_to_context. During the first
      `warm_up_steps` steps both bounds grow linearly from (initial_min_gap, initial_max_gap) to
      (min_gap, max_gap), as `schedule` in MVSplat.
    - The left context index is uniform in [0, V - 1 - gap]; the right one is left + gap.
    - `num_target_views` targets are drawn uniformly (with replacement, as MVSplat) in
      [left + min_distance_to_context, right - min_distance_to_context], both ends included.
    - `pixelsplat_gap_bug=True` reproduces the bug MVSplat keeps on purpose: max_gap = min(V - 1, min_gap), so the
      gap always equals the (scheduled) minimum; with MVSplat's RE10K settings (25->45 during warm-up, final 45/192)
      it grows from 25 to 45 frames and stays there.
    MVSplat's RE10K config: min_gap=45, max_gap=192, initial 25/45, warm_up_steps=150_000, 4 targets, bug on.
    A scene too short for the bounds raises ValueError (MVSplat skips it).
    """

    num_context_views: int = 2
    num_target_views: int = 4
    min_gap: int = 25
    max_gap: int = 45
    min_distance_to_context: int = 0
    warm_up_steps: int = 0
    initial_min_gap: int = 25
    initial_max_gap: int = 45
    pixelsplat_gap_bug: bool = False

    def __post_init__(self) -> None:
        if self.num_context_views != 2:
            raise ValueError("BoundedViewSampler supports exactly 2 context views (as MVSplat)")
        if self.num_target_views < 1:
            raise ValueError("num_target_views must be >= 1")
        if not (1 <= self.min_gap <= self.max_gap):
            raise ValueError(f"need 1 <= min_gap <= max_gap, got {self.min_gap}, {self.max_gap}")
        if not (1 <= self.initial_min_gap <= self.initial_max_gap):
            raise ValueError("need 1 <= initial_min_gap <= initial_max_gap")
        if self.min_distance_to_context < 0 or self.warm_up_steps < 0:
            raise ValueError("min_distance_to_context and warm_up_steps must be >= 0")

    def gap_bounds(self, step: int = 0) -> tuple[int, int]:
        """(min_gap, max_gap) at training step `step`, before clipping to the scene length."""
        if self.warm_up_steps <= 0:
            return self.min_gap, self.max_gap
        fraction = step / self.warm_up_steps

        def schedule(initial: int, final: int) -> int:
            return min(initial + int((final - initial) * fraction), final)

        return schedule(self.initial_min_gap, self.min_gap), schedule(self.initial_max_gap, self.max_gap)

    def sample(self, num_views: int, generator: torch.Generator | None = None,
               step: int = 0) -> tuple[Tensor, Tensor]:
        """(context indices (2,), target indices (num_target_views,)) as int64 tensors."""
        lo, hi = self.gap_bounds(step)
        hi = min(num_views - 1, lo if self.pixelsplat_gap_bug else hi)
        lo = max(2 * self.min_distance_to_context, lo)
        if hi < lo:
            raise ValueError(f"scene with {num_views} frames is too short for a context gap >= {lo}")
        gap = int(torch.randint(lo, hi + 1, (), generator=generator))
        left = int(torch.randint(0, num_views - gap, (), generator=generator))
        right = left + gap
        m = self.min_distance_to_context
        target = torch.randint(left + m, right - m + 1, (self.num_target_views,), generator=generator)
        return torch.tensor([left, right], dtype=torch.int64), target.to(torch.int64)


