"""Videos decoded back and frame-counted; depth PNG/npy round trips; depth metrics; `render --video/--depth`."""

import numpy as np
import pytest
import torch

from gdensify.builtin_scene import orbit_cameras, trefoil_gaussians
from gdensify.cli import main
from gdensify.evaluation.depth import abs_rel, delta_accuracy, depth_metrics
from gdensify.io import save_ply
from gdensify.io.depth import colorize_depth, expected_depth, load_depth_png16, save_depth_png16
from gdensify.io.video import count_video_frames, ffmpeg_status, render_orbit_video, side_by_side_frames, write_video
from gdensify.render import rasterize

needs_ffmpeg = pytest.mark.skipif(not ffmpeg_status()[0], reason="imageio-ffmpeg (extra `video`) is not installed")


def _frames(n: int, h: int = 20, w: int = 31) -> list[np.ndarray]:
    return [np.full((h, w, 3), 10 * i, dtype=np.uint8) for i in range(n)]


@needs_ffmpeg
def test_mp4_written_decoded_and_frame_counted(tmp_path):
    path = write_video(_frames(7), tmp_path / "a.mp4", fps=5)
    assert path.suffix == ".mp4" and count_video_frames(path) == 7
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    assert tuple(meta["size"]) == (32, 20)  # odd width padded to even
    frames = [np.frombuffer(f, np.uint8).reshape(20, 32, 3) for f in reader]
    assert len(frames) == 7
    assert abs(int(frames[5][5, 5, 0]) - 50) <= 6  # content survives the lossy codec
    with pytest.raises(FileExistsError):
        write_video(_frames(2), path)


def test_gif_written_and_frame_counted(tmp_path):
    path = write_video(_frames(5), tmp_path / "a.gif", fps=10)
    assert count_video_frames(path) == 5
    with pytest.raises(ValueError, match="mp4 or .gif"):
        write_video(_frames(2), tmp_path / "a.avi")


def test_missing_ffmpeg_falls_back_to_gif(tmp_path, monkeypatch, capsys):
    import gdensify.io.video as video

    monkeypatch.setattr(video, "ffmpeg_status", lambda: (False, "ImportError: no imageio_ffmpeg"))
    path = video.write_video(_frames(3), tmp_path / "b.mp4", fps=10)
    assert path == tmp_path / "b.gif" and count_video_frames(path) == 3
    assert "gdensify[video]" in capsys.readouterr().err


def test_side_by_side_frames_and_orbit_video(tmp_path):
    frame = side_by_side_frames(_frames(2, 16, 16), ["coarse", "GD"], gap=4)
    assert frame.shape == (16, 36, 3)
    g = trefoil_gaussians(300)
    path = render_orbit_video([g, g], ["coarse", "GD"], None, tmp_path / "o.gif", fps=10, n_frames=4, size=24,
                              backend="reference", progress=False)
    assert count_video_frames(path) == 4


def test_item_orbit_video_puts_coarse_and_gd_side_by_side(tmp_path):
    from gdensify.io.video import item_orbit_video

    save_ply(trefoil_gaussians(200, seed=1), tmp_path / "coarse.ply")
    save_ply(trefoil_gaussians(400, seed=2), tmp_path / "fine.ply")
    path = item_orbit_video(tmp_path, tmp_path / "orbit.gif", n_frames=3, size=20, backend="reference", progress=False)
    assert count_video_frames(path) == 3
    from PIL import Image

    with Image.open(path) as im:
        assert im.size == (2 * 20 + 4, 20)
    with pytest.raises(FileNotFoundError, match="fine.ply"):
        item_orbit_video(tmp_path / "missing")


def test_expected_depth_png16_and_preview(tmp_path):
    g = trefoil_gaussians(500)
    r = rasterize(g, orbit_cameras(1, 32, 32), backend="reference")
    z = expected_depth(r.depth, r.alpha)[0]
    valid = torch.isfinite(z)
    assert valid.any() and (~valid).any()
    assert (z[valid] > 1.0).all() and (z[valid] < 3.0).all()  # cameras at distance 2 from an object of radius < 0.7
    scale = save_depth_png16(z, tmp_path / "d.png")
    assert scale == 1000.0
    back = load_depth_png16(tmp_path / "d.png")
    assert torch.equal(torch.isfinite(back), valid)
    assert (back[valid] - z[valid]).abs().max() <= 0.5 / scale + 1e-6
    preview = colorize_depth(z)
    assert preview.shape == (32, 32, 3) and torch.equal(preview[~valid], torch.ones(int((~valid).sum()), 3))
    assert preview[valid].std(0).max() > 0.05  # the colours vary with depth


def test_depth_metrics():
    gt = torch.tensor([[[1.0, 2.0], [4.0, 0.0]]])
    pred = torch.tensor([[[1.1, 3.0], [4.0, 5.0]]])
    assert torch.allclose(abs_rel(pred, gt), torch.tensor([(0.1 + 0.5 + 0.0) / 3], dtype=torch.float64))
    assert torch.allclose(delta_accuracy(pred, gt), torch.tensor([2 / 3], dtype=torch.float64))
    scaled = depth_metrics(2 * gt, gt, median_scale=True)
    assert torch.allclose(scaled["abs_rel"], torch.zeros(1, dtype=torch.float64))
    assert torch.isnan(abs_rel(pred, torch.zeros_like(gt)))[0]
    mask = torch.tensor([[[True, False], [True, True]]])
    assert torch.allclose(abs_rel(pred, gt, mask), torch.tensor([0.05], dtype=torch.float64))


def test_render_cli_video_and_depth(tmp_path):
    ply = save_ply(trefoil_gaussians(300), tmp_path / "t.ply")
    out = tmp_path / "v.gif"
    assert main(["render", str(ply), "--video", str(out), "--frames", "3", "--size", "16", "--backend",
                 "reference", "--depth", "--no-progress"]) == 0
    assert count_video_frames(out) == 3 and count_video_frames(tmp_path / "v_depth.gif") == 3
    assert main(["render", str(ply), "--video", str(out), "--frames", "3", "--size", "16", "--backend",
                 "reference", "--no-progress"]) == 2  # exists, no --overwrite
    png = tmp_path / "r.png"
    assert main(["render", str(ply), "--out", str(png), "--views", "2", "--resolution", "16", "--backend",
                 "reference", "--depth", "--npy"]) == 0
    assert (tmp_path / "r_depth_01.png").is_file() and (tmp_path / "r_depth.png").is_file()
    assert np.load(tmp_path / "r_depth.npy").shape == (2, 16, 16)
    assert main(["render", str(ply), "--video", str(tmp_path / "i.gif"), "--path", "interpolate", "--frames", "3",
                 "--size", "16", "--backend", "reference", "--no-progress"]) == 2  # needs --cameras


def test_frame_generators_do_not_leak_no_grad():
    from gdensify.io.video import render_frames

    frames = render_frames(trefoil_gaussians(100), orbit_cameras(3, 8, 8), backend="reference", progress=False)
    next(frames)
    assert torch.is_grad_enabled()
    frames.close()


def test_cameras_files_and_cli_paths_through_them(tmp_path):
    from gdensify.assets import sample_data
    from gdensify.io.video import load_cameras_file, save_cameras_file

    cams = orbit_cameras(5, 40, 30)
    path = save_cameras_file(cams, tmp_path / "cameras.json")
    back = load_cameras_file(path)
    assert torch.allclose(back.world_to_camera, cams.world_to_camera, atol=1e-6) and (back.width, back.height) == (40, 30)
    blender = load_cameras_file(sample_data("object") / "obj_00000" / "transforms_train.json")
    assert len(blender) == 32 and blender.width == 128
    (tmp_path / "bad.json").write_text('{"width": 4}')
    with pytest.raises(ValueError, match="height"):
        load_cameras_file(tmp_path / "bad.json")

    ply = save_ply(trefoil_gaussians(300), tmp_path / "t.ply")
    for kind in ("interpolate", "spiral"):
        out = tmp_path / f"{kind}.gif"
        assert main(["render", str(ply), "--video", str(out), "--path", kind, "--cameras", str(path), "--frames", "4",
                     "--size", "16", "--backend", "reference", "--no-progress"]) == 0
        assert count_video_frames(out) == 4
