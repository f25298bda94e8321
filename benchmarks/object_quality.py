"""Object-level quality and cost benchmark. Prints Markdown tables; asserts nothing.

Quality, on held-out generated objects (never seen in training), with the protocol of `gdensify eval` (4 spread
train-split inputs, every test-split view as a target, white background):
  * the GD model's fine render with gradient selection, the same model with random selection, and its coarse
    render from the same forward pass;
  * a coarse-only model (`model.densify=false`) trained with the same budget (steps, batch, schedule);
  * the trivial image: the background colour everywhere.
Cost: forward time and peak memory of one object (4 views) for the `tiny` and `paper` presets (random weights)
on CPU, each in a fresh subprocess.

    python benchmarks/object_quality.py --gd outputs/tiny/model.safetensors \\
        --coarse-only outputs/tiny_coarse/model.safetensors --data data/objects/heldout
    python benchmarks/object_quality.py --cost-only
"""

from __future__ import annotations

from quality_common import main, time_forward


def cost_worker(preset: str, runs: int) -> dict:
    import torch

    from gdensify.builtin_scene import orbit_cameras
    from gdensify.data.batch import ViewBatch, ViewExample
    from gdensify.models import GDConfig, GDModel

    torch.manual_seed(0)
    model = GDModel(GDConfig.preset(f"object-{preset}"))
    size = model.config.backbone.image_size
    cams = orbit_cameras(4, size, size)
    g = torch.Generator().manual_seed(0)
    example = ViewExample(torch.rand(4, size, size, 3, generator=g), cams, torch.rand(1, size, size, 3, generator=g),
                          cams[:1], torch.ones(1, 3), "random")
    return dict(time_forward(model, ViewBatch.collate([example]), runs), input=f"4 × {size}²")


def held_out_objects(model, checkpoint, data: str):
    from gdensify.data.blender_objects import ObjectEvaluationDataset

    return ObjectEvaluationDataset(data, model.config.backbone.image_size)


if __name__ == "__main__":
    main(__doc__, __file__, cost_worker, held_out_objects, "objects", 0.5)
