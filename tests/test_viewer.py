"""The viser viewer: camera conversion, and a real headless Chromium loading the page (screenshot not blank, our
full-SH render visible), then the server stopped."""

import math
import shutil
import socket
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from gdensify.builtin_scene import orbit_cameras, trefoil_gaussians
from gdensify.cameras import look_at
from gdensify.render.camera_paths import rotmat_to_quat
from gdensify.viewer import side_by_side_offsets, viser_to_cameras

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_viser_camera_converts_to_opencv_world_to_camera():
    eye, target = torch.tensor([[1.0, -2.0, 0.7]]), torch.tensor([[0.1, 0.2, -0.1]])
    c2w = look_at(eye, target)[0]
    cams = viser_to_cameras(rotmat_to_quat(c2w[:3, :3]).tolist(), eye[0].tolist(), math.radians(50), 64, 48)
    assert torch.allclose(cams.world_to_camera[0], torch.linalg.inv(c2w), atol=1e-5)
    p = cams.world_to_camera[0, :3, :3] @ target[0] + cams.world_to_camera[0, :3, 3]
    uv = (cams.intrinsics[0] @ p) / p[2]
    assert torch.allclose(uv[:2], torch.tensor([32.0, 24.0]), atol=1e-4)
    assert math.isclose(2 * math.atan(24 / float(cams.intrinsics[0, 1, 1])), math.radians(50), rel_tol=1e-5)


def test_side_by_side_offsets_separate_the_sets():
    g = trefoil_gaussians(500)
    offsets = side_by_side_offsets([g, g])
    assert offsets[0].abs().sum() == 0 and offsets[1][0] > float(g.means[:, 0].max() - g.means[:, 0].min()) * 0.9


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _screenshot(url: str, path, tmp_path, ready, tries: int = 3) -> np.ndarray:
    """A headless Chromium screenshot of `url`, taken again (fresh profile each time) until `ready(image)`: the
    page fills in over websocket messages, which a loaded machine can delay past one page load."""
    for attempt in range(tries):
        try:
            subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            "--no-first-run", f"--user-data-dir={tmp_path / f'profile_{path.stem}_{attempt}'}",
                            f"--screenshot={path}", "--window-size=800,600", "--virtual-time-budget=15000", url],
                           check=True, capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            continue
        image = np.asarray(Image.open(path).convert("RGB")).astype(int)
        if ready(image):
            return image
    pytest.fail(f"no ready screenshot of {url} in {tries} tries")


def _object_pixels(image: np.ndarray) -> int:
    """Saturated, non-blue pixels in the centre of the page: the object (the GUI is grey, the frustums blue)."""
    centre = image[150:500, 150:650]
    r, g, b = centre[..., 0], centre[..., 1], centre[..., 2]
    saturated = centre.max(-1) - centre.min(-1) > 80
    return int((saturated & ~((b > r + 40) & (b > g + 40))).sum())


@pytest.mark.skipif(CHROMIUM is None, reason="headless test needs Debian's chromium (apt-get install chromium)")
def test_viewer_page_in_headless_chromium(tmp_path):
    pytest.importorskip("viser", reason="the viewer needs the `viewer` extra (viser)")
    from gdensify.viewer import SplatViewer

    g = trefoil_gaussians(3000)
    viewer = SplatViewer([g, g], ["coarse", "GD"], orbit_cameras(4, 64, 64), port=_free_port(), full_sh=True)
    try:
        shot = _screenshot(f"http://127.0.0.1:{viewer.port}", tmp_path / "sh.png", tmp_path,
                           lambda image: _object_pixels(image) > 2000)  # our full-SH render is on the page
        assert shot.std() > 10 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 100  # not blank
        assert viewer.renders >= 1  # the browser's camera reached our rasterizer
        viewer.full_sh.value = False  # viser's own splats
        viewer.layout.value = "side by side"
        _screenshot(f"http://127.0.0.1:{viewer.port}", tmp_path / "splats.png", tmp_path,
                    lambda image: _object_pixels(image) > 500)
    finally:
        viewer.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", viewer.port), timeout=2).close()


def test_view_command_serves_and_stops_and_names_the_extra(tmp_path, monkeypatch, capsys):
    import sys

    from gdensify.cli import main
    from gdensify.io import save_ply

    ply = save_ply(trefoil_gaussians(200), tmp_path / "fine.ply")
    monkeypatch.setitem(sys.modules, "viser", None)  # as if the extra were not installed
    assert main(["view", str(ply), "--port", str(_free_port()), "--duration", "0.1"]) == 2
    assert "gdensify[viewer]" in capsys.readouterr().err
    monkeypatch.delitem(sys.modules, "viser")
    pytest.importorskip("viser", reason="the viewer needs the `viewer` extra (viser)")
    assert main(["view", str(ply), str(ply), "--port", str(_free_port()), "--duration", "0.3"]) == 0
    assert "0: fine.ply" in capsys.readouterr().out
    assert main(["view", str(ply), "--labels", "a", "b", "--duration", "0"]) == 2
