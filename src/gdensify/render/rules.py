"""`RasterRules`: the small differences between gdensify's render contract and the Inria CUDA rasterizer.

The default `RasterRules()` is gdensify's own contract (the semantics every backend followed before these rules
existed). `RasterRules.inria()` switches every kernel rule to what the Inria `diff-gaussian-rasterization` CUDA
kernel does, in the "GDM" fork the official GD object model renders with (`forward.cu`, `backward.cu`,
`auxiliary.h`); `RasterRules.gd_object_release()` adds the released object model's SH view-direction origin.

Each field is one rule; the `reference` and `cpu` backends honour all of them, the `gsplat` backend only the ones
applied outside its kernel (`far_cull`, `clamp_image`) and raises `ValueError` for the others.

Parts of the CUDA kernel that are not rules here, because gdensify already computes the same thing (as read from
the GDM kernel's source; a faithful CPU emulation of it agrees with gdensify to ≤ 1.1e-6 on 64² renders once the
tile rectangle and radius rules match):
- the pixel mean: CUDA's `ndc2Pix` gives ((ndc + 1)·W − 1)/2 = u − 0.5 with pixel centres at integers, i.e. the
  same position as gdensify's u with centres at +0.5 (the `p_hom.w + 1e-7` guard changes it by ~1e-7 relative);
- the J clamp: CUDA clamps x/z to ±1.3·tan(fov_x/2) = ±1.3·W/(2·fx); gdensify's ±1.3·max(cx, W − cx)/fx is the
  same whenever the principal point is the image centre (as in the official cameras);
- 0.3 px² dilation, conic, α = min(0.99, o·G), skip α < 1/255 and power > 0, stop before T < 1e-4, the background
  term in the backward;
- degenerate footprints: CUDA culls `det == 0` only; gdensify culls det ≤ 0 and non-finite det. With the 0.3 px²
  dilation det ≥ 0.09 for every finite footprint, so the two agree on all finite inputs.
Not pinned by that evidence (the CUDA build itself could not be run): the colour clamp (gdensify: SH + 0.5 clamped
at 0, no gradient where clamped, as upstream Inria's `computeColorFromSH`), the order of Gaussians of equal depth
in a tile (gdensify and the emulation: by index; CUDA: whatever its key sort leaves), and float rounding of the
fused CUDA arithmetic.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

TileRectRule = Literal["mean", "pixel"]
ShViewOrigin = Literal["center", "negated_position"]


@dataclass(frozen=True)
class RasterRules:
    """Renderer rules (frozen; build variants with `dataclasses.replace` or `RasterRules.inria(**changes)`).

    Attributes:
        tile_rect: which point the 16×16 tile rectangle is centred on. "mean" (default): the projected mean u,
            x0 = floor((u − r)/16), x1 = floor((u + r + 15)/16). "pixel": CUDA `getRect` on the integer-pixel
            mean u − 0.5 with `(int)` truncation, x0 = (int)((u − 0.5 − r)/16),
            x1 = (int)((u − 0.5 + r + 15)/16); both clamped to [0, tiles]. (Truncation and floor agree once clamped
            at 0.) y likewise.
        radius_floor: λ_max = mid + sqrt(max(radius_floor, mid² − det)) and radius = ceil(3·sqrt(λ_max)), with
            mid = (a + c)/2 of Σ₂D. 0.0 (default) is the exact largest eigenvalue; CUDA uses 0.1, which widens
            near-circular footprints (sqrt(0.1) ≈ 0.32 px² added to λ).
        far_cull: cull camera z ≥ `Cameras.far` (default True). False: cull only z ≤ `Cameras.near`, as CUDA does
            (its near is hard-coded to 0.2; pass `near=0.2` in `Cameras` for the released object model; CUDA's far
            only shapes the unused z row of its projection matrix).
        alpha_clamp_grad: False (default): the derivative of α = min(0.99, o·G) is zero where the clamp is active.
            True: as CUDA's backward, the gradient passes through the clamp (dL/dG = o·dL/dα, dL/do = G·dL/dα for
            every pair that contributed, clamped or not). The forward is unchanged.
        sh_view_origin: where SH view directions start, for every SH evaluation of the render. "center" (default):
            the camera centre, d = normalize(μ − C). "negated_position": the negated camera position −C, i.e.
            d = normalize(μ + C) — the released GD object model's `MiniCam.camera_center = −c2w[:3, 3]`.
        clamp_image: clamp the rendered image to [0, 1] (zero gradient outside), as the official code does after
            every render. alpha and depth are never clamped.
    """

    tile_rect: TileRectRule = "mean"
    radius_floor: float = 0.0
    far_cull: bool = True
    alpha_clamp_grad: bool = False
    sh_view_origin: ShViewOrigin = "center"
    clamp_image: bool = False

    def __post_init__(self) -> None:
        if self.tile_rect not in ("mean", "pixel"):
            raise ValueError(f"RasterRules.tile_rect must be 'mean' or 'pixel', got {self.tile_rect!r}")
        if self.sh_view_origin not in ("center", "negated_position"):
            raise ValueError("RasterRules.sh_view_origin must be 'center' or 'negated_position', got "
                             f"{self.sh_view_origin!r}")
        if not (isinstance(self.radius_floor, (int, float)) and 0.0 <= float(self.radius_floor) < float("inf")):
            raise ValueError(f"RasterRules.radius_floor must be a finite number ≥ 0, got {self.radius_floor!r}")
        for name in ("far_cull", "alpha_clamp_grad", "clamp_image"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"RasterRules.{name} must be a bool, got {getattr(self, name)!r}")

    @classmethod
    def inria(cls, **changes) -> "RasterRules":
        """The Inria/GDM CUDA kernel: integer-pixel tile rectangle, radius floor 0.1, no far cull, gradient
        through the 0.99 clamp, image clamped to [0, 1] (as the official code clamps every render); SH directions
        from the true camera centre (the kernel uses the `campos` it is given). `changes` override fields."""
        rules = cls(tile_rect="pixel", radius_floor=0.1, far_cull=False, alpha_clamp_grad=True, clamp_image=True)
        return dataclasses.replace(rules, **changes)

    @classmethod
    def gd_object_release(cls) -> "RasterRules":
        """The released GD object model's renders: `inria()` with SH directions from the negated camera position.
        Use `Cameras(..., near=0.2)` with it (the kernel's hard-coded near plane)."""
        return cls.inria(sh_view_origin="negated_position")


DEFAULT_RULES = RasterRules()
