"""Scene-level quality and cost benchmark. Prints Markdown tables; asserts nothing.

Quality, on the held-out test split of a generated RE10K-layout dataset (its evaluation index: 2 context views,
3 targets between them; per-scene mean over targets, then mean over scenes, as MVSplat):
  * the GD model's fine render with gradient selection, the same model with random selection, and its coarse
    render (the MVSplat backbone's Gaussians) from the same forward pass;
  * a coarse-only model (`model.densify=false`, i.e. MVSplat) trained with the same budget;
  * the trivial image: black everywhere.
Cost: forward time and peak memory of one scene (2 context views) for the `tiny` (64²) and `paper` (256²) presets
(random weights) on CPU, each in a fresh subprocess.

    python benchmarks/scene_quality.py --gd outputs/scene_tiny/model.safetensors \\
        --coarse-only outputs/scene_tiny_coarse/model.safetensors --data data/scenes
    python benchmarks/scene_quality.py --cost-only
"""

from __future__ import annotations

from quality_common import main, time_forward


def cost_worker(preset: str, runs: int) -> dict:
    import torch

    from gdensify.cameras import Cameras
    from gdensify.data.batch import ViewBatch, ViewExample
    from gdensify.models import GDConfig, GDModel

    torch.manual_seed(0)
    size = {"tiny": 64, "paper": 256}[preset]
    c2w = torch.eye(4).repeat(3, 1, 1)
    c2w[:, 0, 3] = torch.tensor([-0.1, 0.1, 0.0])  # forward-facing, 10 cm baseline
    cams = Cameras.from_camera_to_world(c2w, torch.tensor([[0.9 * size, 0, size / 2], [0, 0.9 * size, size / 2],
                                                           [0, 0, 1.0]]).repeat(3, 1, 1), size, size, 1.0, 100.0)
    g = torch.Generator().manual_seed(0)
    example = ViewExample(torch.rand(2, size, size, 3, generator=g), cams[:2], torch.rand(1, size, size, 3, generator=g),
                          cams[2:], torch.zeros(1, 3), "random", torch.zeros(3))
    model = GDModel(GDConfig.preset(f"scene-{preset}"))
    return dict(time_forward(model, ViewBatch.collate([example]), runs), input=f"2 × {size}²")


def held_out_scenes(model, checkpoint, data: str):
    from dataclasses import replace

    from gdensify.data import build_dataset, data_config_from_checkpoint

    config = replace(data_config_from_checkpoint(checkpoint), root=data)
    return list(build_dataset(config).evaluation_examples())


if __name__ == "__main__":
    main(__doc__, __file__, cost_worker, held_out_scenes, "scenes", 0.3)
