"""One object written in every capture layout: do the readers recover it, and does the object model score the same?

The shipped object `assets/objects/obj_00000` (32 train + 8 test views, 128², exact poses) is read as a Blender
capture and written as nerfstudio `transforms.json`, COLMAP (binary and text), LLFF and NeuS by the test suite's
writers (`tests/test_data_formats.py`). Each copy is read back with `read_capture`; the table gives the largest
camera error (world-to-camera and intrinsics entries) and image error (composited on white) against the source,
then `capture_to_object_example` (the same 4 input views for every layout; targets: the other 36 views at the
model's input size) goes through the shipped object model, and the PSNR of the fine (GD) and coarse renders is
reported.

    python benchmarks/capture_formats.py [--checkpoint src/gdensify/assets/object_tiny.safetensors]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_data_formats as writers  # noqa: E402  (the test suite's layout writers)

from gdensify.cameras import Cameras, opengl_to_opencv  # noqa: E402
from gdensify.data.formats import capture_to_object_example, read_capture  # noqa: E402
from gdensify.evaluation.evaluate import evaluate_example  # noqa: E402
from gdensify.models.loading import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--object", default=str(ROOT / "src/gdensify/assets/objects/obj_00000"))
    parser.add_argument("--checkpoint", default=str(ROOT / "src/gdensify/assets/object_tiny.safetensors"))
    args = parser.parse_args()
    source = read_capture(args.object, "blender")
    # the Blender JSON's matrices are rounded to 9 digits: project the rotations onto SO(3) (float64) so that the
    # source poses are exact and every error below is the reader's
    w2c = source.cameras.world_to_camera.double().clone()
    u, _, vt = torch.linalg.svd(w2c[:, :3, :3])
    w2c[:, :3, :3] = u @ vt
    source.cameras = Cameras(w2c, source.cameras.intrinsics.double(), source.cameras.width, source.cameras.height)
    rgba8 = np.stack([np.asarray(Image.open(f.image_path).convert("RGBA")) for f in source.frames])
    writers.SIZE, writers.VIEWS = source.cameras.width, len(source)
    truth = {"cams": source.cameras, "c2w_gl": opengl_to_opencv(source.cameras.camera_to_world).numpy(),
             "rgba8": rgba8}
    model, _ = load_model(args.checkpoint, "object")
    size = model.config.backbone.image_size
    inputs = None
    want_images = writers._composite(rgba8)
    print(f"object {source.name}: {len(source)} views {source.cameras.width}², model input {size}²")
    print()
    print("| format | reader | cameras recovered (max error) | images (max error) | PSNR fine | PSNR coarse |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for layout, write in writers.WRITERS.items():
            cap = read_capture(write(Path(tmp) / layout, truth))
            want_w2c = writers.neus_expected_w2c(truth) if layout == "neus" else source.cameras.world_to_camera
            cam_err = max(float((cap.cameras.world_to_camera.double() - want_w2c.double()).abs().max()),
                          float((cap.cameras.intrinsics.double() - source.cameras.intrinsics.double()).abs().max()))
            images, masks = cap.load()
            img_err = float((images * masks + 1 - masks - want_images).abs().max())
            ex = capture_to_object_example(cap, inputs=inputs, input_size=size)
            inputs = ex.input_indices
            row = evaluate_example(model, ex.example, None, torch.Generator().manual_seed(0)).row
            print(f"| {layout} | {cap.format} | {cam_err:.1e} | {img_err:.1e} | {row['psnr_fine']:.3f} | "
                  f"{row['psnr_coarse']:.3f} |")


if __name__ == "__main__":
    main()
