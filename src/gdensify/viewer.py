"""`gdensify view SPLATS.ply [OTHER.ply]`: a local web viewer built on viser (optional extra `viewer`).

The server listens on 127.0.0.1 by default. The GUI shows one set at a time (a dropdown toggles between them, e.g.
coarse and GD) or all side by side (each shifted along the world x axis by the widest set's extent plus a margin).
With a cameras JSON the input cameras are drawn as frustums. viser's own splat primitive draws only the DC colour; the
checkbox "full SH (gdensify rasterizer)" instead renders every view-dependent SH term through
`gdensify.render.rasterize` (backend `cpu`, falling back to `reference`) for each browser's current camera and shows
the image as the background, re-rendering whenever the camera moves.

Camera conversion: viser reports, per browser, the camera-to-world rotation (wxyz) and position in OpenCV camera
axes (x right, y down, z forward), the vertical field of view in radians and the canvas size; `viser_to_cameras`
turns them into our world-to-camera `Cameras` with square pixels and the principal point at the image centre.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from .cameras import Cameras
from .gaussians import Gaussians, quat_to_rotmat

__all__ = ["viser_to_cameras", "splat_arrays", "side_by_side_offsets", "SplatViewer", "view_command"]

_INSTALL_HINT = "the viewer needs viser: pip install 'gdensify[viewer]'"


def viser_to_cameras(wxyz: Sequence[float], position: Sequence[float], fov_y: float, width: int,
                     height: int) -> Cameras:
    """One OpenCV world-to-camera `Cameras` from viser's camera (c2w rotation wxyz, position, vertical FOV)."""
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = quat_to_rotmat(torch.tensor(wxyz, dtype=torch.float64))
    c2w[:3, 3] = torch.tensor(position, dtype=torch.float64)
    f = 0.5 * height / math.tan(0.5 * fov_y)
    k = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)
    return Cameras.from_camera_to_world(c2w[None].float(), k[None].float(), width, height)


def splat_arrays(gaussians: Gaussians) -> dict[str, np.ndarray]:
    """viser's splat inputs: centres (N, 3), covariances (N, 3, 3), DC colours (N, 3) in [0, 1], opacities (N, 1)."""
    from .sh import C0  # noqa: PLC0415

    g = gaussians.detach().to("cpu", torch.float32)
    return {"centers": g.means.numpy(), "covariances": g.covariances.numpy(),
            "rgbs": (0.5 + C0 * g.sh[:, 0]).clamp(0, 1).numpy(), "opacities": g.opacities[:, None].numpy()}


def side_by_side_offsets(sets: Sequence[Gaussians], margin: float = 0.2) -> list[Float[Tensor, "3"]]:
    """World-x offsets that place the sets next to each other, centred on the origin of the first."""
    widths = []
    for g in sets:
        x = g.means[:, 0].detach().float().cpu()
        widths.append(float(torch.quantile(x, 0.99) - torch.quantile(x, 0.01)) if len(x) > 1 else 1.0)
    step = max(widths) * (1 + margin)
    return [torch.tensor([i * step, 0.0, 0.0]) for i in range(len(sets))]


class SplatViewer:
    """A running viser server showing `sets` (see the module doc). `stop()` shuts it down."""

    def __init__(self, sets: Sequence[Gaussians], labels: Sequence[str], cameras: Cameras | None = None,
                 host: str = "127.0.0.1", port: int = 8080, up: Sequence[float] = (0.0, 0.0, 1.0),
                 render_side: int = 384, full_sh: bool = False) -> None:
        try:
            import viser  # noqa: PLC0415
        except ImportError as err:
            raise RuntimeError(f"{_INSTALL_HINT} ({err})") from err
        if not 1 <= len(sets) <= 4 or len(labels) != len(sets):
            raise ValueError(f"the viewer shows 1 to 4 sets with one label each, got {len(sets)} and {len(labels)}")
        self.sets, self.labels, self.render_side = list(sets), list(labels), render_side
        self.up = tuple(float(u) for u in up)
        self.offsets = side_by_side_offsets(self.sets)
        self.renders = 0  # frames rendered by the full-SH mode (for tests and logs)
        self._lock = threading.Lock()
        self.server = viser.ViserServer(host=host, port=port, label="gdensify", verbose=False)
        self.server.scene.set_up_direction(self.up)
        self.nodes = [self.server.scene.add_gaussian_splats(f"/splats/{i}", **splat_arrays(g), visible=i == 0)
                      for i, g in enumerate(self.sets)]
        choices = self.labels + (["side by side"] if len(self.sets) > 1 else [])
        self.layout = self.server.gui.add_dropdown("show", options=choices, initial_value=choices[0])
        self.full_sh = self.server.gui.add_checkbox("full SH (gdensify rasterizer)", initial_value=full_sh)
        self.layout.on_update(lambda _: self._refresh())
        self.full_sh.on_update(lambda _: self._refresh())
        if cameras is not None:
            self._add_frustums(cameras)
        self.server.on_client_connect(self._on_connect)
        self._refresh()

    @property
    def port(self) -> int:
        return self.server.get_port()

    def _add_frustums(self, cameras: Cameras) -> None:
        from .render.camera_paths import rotmat_to_quat  # noqa: PLC0415

        c2w = cameras.camera_to_world.double().cpu()
        quats = rotmat_to_quat(c2w[:, :3, :3]).numpy()
        extent = float((c2w[:, :3, 3] - c2w[:, :3, 3].mean(0)).norm(dim=-1).max()) or 1.0
        for i in range(len(cameras)):
            fy = float(cameras.intrinsics[i, 1, 1])
            self.server.scene.add_camera_frustum(
                f"/cameras/{i}", fov=2 * math.atan(0.5 * cameras.height / fy), aspect=cameras.width / cameras.height,
                scale=0.08 * extent, wxyz=quats[i], position=c2w[i, :3, 3].numpy(), color=(30, 90, 200))

    def _visible_sets(self) -> list[int]:
        value = self.layout.value
        return list(range(len(self.sets))) if value == "side by side" else [self.labels.index(value)]

    def _refresh(self) -> None:
        shown = self._visible_sets()
        side = len(shown) > 1
        for i, node in enumerate(self.nodes):
            node.visible = i in shown and not self.full_sh.value
            node.position = tuple(self.offsets[i].tolist()) if side else (0.0, 0.0, 0.0)
        if self.full_sh.value:
            for client in self.server.get_clients().values():
                self._render_client(client)
        else:
            self.server.scene.set_background_image(None)
            for client in self.server.get_clients().values():
                client.scene.set_background_image(None)

    def _on_connect(self, client) -> None:
        """Frame the sets (look at the middle of the side-by-side layout from across the world x axis along which
        the sets are laid out, a little above the horizon), then keep the full-SH render in step with the camera."""
        means = self.sets[0].means.detach().float().cpu()
        center = means.median(dim=0).values
        extent = float(torch.quantile((means - center).norm(dim=-1), 0.95)) if len(means) > 1 else 1.0
        span = float(self.offsets[-1][0])
        center = center + torch.tensor([0.5 * span, 0.0, 0.0])
        up = torch.nn.functional.normalize(torch.tensor(self.up), dim=0)
        across = torch.linalg.cross(up, torch.tensor([1.0, 0.0, 0.0]))
        if across.norm() < 1e-3:  # up along x: any horizontal direction will do
            across = torch.linalg.cross(up, torch.tensor([0.0, 1.0, 0.0]))
        direction = torch.nn.functional.normalize(torch.nn.functional.normalize(across, dim=0) + 0.4 * up, dim=0)
        eye = center + (2.5 * max(extent, 1e-3) + 1.2 * span) * direction
        client.camera.up_direction = tuple(up.tolist())
        client.camera.position = tuple(eye.tolist())
        client.camera.look_at = tuple(center.tolist())
        client.camera.on_update(lambda _: self._render_client(client) if self.full_sh.value else None)

    def scene_gaussians(self) -> Gaussians:
        """The Gaussians currently shown (side by side: shifted by their offsets)."""
        shown = self._visible_sets()
        if len(shown) == 1:
            return self.sets[shown[0]]
        parts = []
        for i in shown:
            g = self.sets[i]
            parts.append(Gaussians(g.means + self.offsets[i].to(g.means), g.quats, g.log_scales, g.opacity_logits,
                                   g.sh))
        return Gaussians.cat(parts)

    def render_view(self, wxyz, position, fov_y: float, width: int, height: int) -> np.ndarray:
        """uint8 (H, W, 3) full-SH render of the shown Gaussians from a viser camera (white background)."""
        from .render import rasterize  # noqa: PLC0415
        from .render.rasterize import _load_cpu  # noqa: PLC0415

        scale = self.render_side / max(width, height)
        w, h = max(8, round(width * scale)), max(8, round(height * scale))
        cams = viser_to_cameras(wxyz, position, fov_y, w, h)
        backend = "cpu" if _load_cpu()[0] is not None else "reference"
        with torch.no_grad():
            image = rasterize(self.scene_gaussians().to("cpu", torch.float32), cams, background=torch.ones(3),
                              backend=backend).image[0]
        return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()

    def _render_client(self, client) -> None:
        with self._lock:
            cam = client.camera
            image = self.render_view(cam.wxyz, cam.position, cam.fov, cam.image_width, cam.image_height)
            client.scene.set_background_image(image, format="jpeg")
            self.renders += 1

    def stop(self) -> None:
        self.server.stop()


def view_command(plys: Sequence[str | os.PathLike], labels: Sequence[str] | None = None,
                 cameras: str | os.PathLike | None = None, host: str = "127.0.0.1", port: int = 8080,
                 up: Sequence[float] = (0.0, 0.0, 1.0), duration: float | None = None) -> int:
    """Body of `gdensify view`: load the `.ply` files, serve until Ctrl-C (or `duration` seconds)."""
    from .io.ply import load_ply  # noqa: PLC0415
    from .io.video import load_cameras_file  # noqa: PLC0415

    if not 1 <= len(plys) <= 4:
        raise ValueError(f"view takes 1 to 4 .ply files, got {len(plys)}")
    if labels is None:
        names = [Path(p).stem for p in plys]
        labels = names if len(set(names)) == len(names) else [f"{i}: {Path(p).name}" for i, p in enumerate(plys)]
    if len(labels) != len(plys):
        raise ValueError(f"--labels: {len(labels)} names for {len(plys)} files")
    sets = [load_ply(p) for p in plys]
    cams = load_cameras_file(cameras) if cameras is not None else None
    viewer = SplatViewer(sets, list(labels), cams, host, port, up)
    print(f"viewer at http://{host}:{viewer.port} ({', '.join(f'{n}: {len(g):,} Gaussians' for n, g in zip(labels, sets))}); "
          f"Ctrl-C stops it")
    try:
        deadline = None if duration is None else time.monotonic() + duration
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
    return 0
