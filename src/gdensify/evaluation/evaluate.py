"""Evaluate a reconstruction model on `ViewExample`s: fine and coarse metrics per item, then their mean.

Every item's metric is the mean over its target views; the summary is the mean over items (MVSplat's convention
for scenes, the same for objects). Fine and coarse are reported separately, never max(fine, coarse). LPIPS is
reported only when local VGG weights exist (`lpips_status()`); otherwise it is `null` with the reason.
A coarse-only model (no densifier) has `null` fine metrics.

Gaussian counts per item (`COUNTS`): every coarse Gaussian (`n_coarse`), the coarse candidates the fine set keeps
(`n_visible`: LaRa's opacity > 0.005 set; all of them for pixel-aligned scenes), the selected ones (`n_selected`)
and the fine set (`n_fine` = leaves + non-selected visible). "coarse → fine" alone compares all coarse Gaussians
with a set built from the visible ones only, as in the release; the visible count is the fair reference.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .. import runtime
from ..data.batch import ViewBatch, ViewExample
from ..io import atomic_path
from ..models.output import Reconstruction
from .metrics import UNAVAILABLE, LPIPSVGG, image_metrics, load_lpips_vgg, lpips_status, psnr

METRICS = ("psnr", "ssim", "lpips")
COUNTS = ("n_coarse", "n_visible", "n_selected", "n_fine")


def gaussian_counts(out: Reconstruction) -> dict[str, int | None]:
    """`COUNTS` of the first item of `out`: coarse (all) and fine from the sets, visible and selected from the
    model's diagnostics (None for a coarse-only model, which has no such sets)."""
    counts: dict[str, int | None] = {"n_coarse": len(out.coarse[0])}
    for key in ("n_visible", "n_selected"):
        value = out.diagnostics.get(key) if out.diagnostics else None
        counts[key] = None if value is None else int(round(float(value)))
    counts["n_fine"] = None if out.fine is None else len(out.fine[0])
    return counts


def format_counts(row: dict[str, Any]) -> str:
    """"coarse (all) / coarse (visible) / selected / fine" with thousands separators, "—" where unavailable."""
    return " / ".join("—" if row.get(k) is None else f"{int(round(row[k])):,}" for k in COUNTS)


COUNTS_HEADER = "Gaussians coarse (all) / coarse (visible) / selected / fine"


@dataclass
class ExampleResult:
    row: dict[str, Any]  # metrics (means over the target views), Gaussian counts, forward seconds
    reconstruction: Reconstruction
    renders: dict[str, Tensor | None]  # "coarse", "fine": (V_t, H, W, 3) on the model's device, or None


def evaluate_example(model: nn.Module, example: ViewExample, lpips_model: LPIPSVGG | None = None,
                     generator: torch.Generator | None = None, precision: str = "fp32") -> ExampleResult:
    """One item through the model, rendered into its target views and scored. `precision="bf16"`: the CPU fast
    path (`runtime.inference`, bfloat16 in `model.bf16_modules()` only); renders and metrics stay float32."""
    device = next(model.parameters()).device
    batch = ViewBatch.collate([example]).to(device)
    start = time.perf_counter()
    with runtime.inference(precision, model.bf16_modules() if precision == "bf16" else None, device.type):
        out = model(batch, generator=generator)
    seconds = time.perf_counter() - start
    row: dict[str, Any] = {"name": example.name, "n_targets": len(example.target_cameras), **gaussian_counts(out),
                           "seconds": round(seconds, 3)}
    truth = batch.target_images[0].float()
    background = batch.target_backgrounds[0][:, None, None, :].expand_as(truth)
    row["psnr_background"] = psnr(background, truth).mean().item()
    renders: dict[str, Tensor | None] = {}
    for which in ("fine", "coarse"):
        if which == "fine" and out.fine is None:
            row.update({f"{m}_fine": None for m in METRICS})
            renders[which] = None
            continue
        with torch.inference_mode():
            renders[which] = out.render(batch.target_cameras, batch.target_backgrounds, which)[0].clamp(0, 1)
        values = image_metrics(renders[which], truth, lpips_model)
        for m in METRICS:
            row[f"{m}_{which}"] = None if values[m] is None else values[m].mean().item()
    return ExampleResult(row, out, renders)


def summarize(rows: list[dict[str, Any]], item_label: str = "objects") -> dict[str, Any]:
    """Means over items of every numeric column; `n_<item_label>`; LPIPS availability."""
    summary: dict[str, Any] = {f"n_{item_label}": len(rows)}
    keys = [k for k in rows[0] if k not in ("name",)] if rows else []
    for key in keys:
        values = [r[key] for r in rows if r[key] is not None]
        summary[key] = None if len(values) < len(rows) or not values else sum(values) / len(values)
    summary["lpips_status"] = lpips_status()
    return summary


def evaluate(model: nn.Module, examples: Iterable[ViewExample], total: int | None = None, progress: bool = True,
             seed: int = 0, precision: str = "fp32") -> list[dict[str, Any]]:
    """Rows of `evaluate_example` for every example (LPIPS only when local weights exist)."""
    lpips_model = load_lpips_vgg()
    model.eval()
    rows = []
    for i, example in enumerate(tqdm(examples, total=total, desc="evaluate", unit="item", disable=not progress)):
        generator = torch.Generator(next(model.parameters()).device).manual_seed(seed + i)
        rows.append(evaluate_example(model, example, lpips_model, generator, precision).row)
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["name"])
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else (f"{v:.6f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def write_report(rows: list[dict[str, Any]], summary: dict[str, Any], out_dir: str | os.PathLike,
                 csv_name: str = "per_item.csv") -> Path:
    """`OUT/metrics.json` (the summary) and `OUT/<csv_name>` (one row per item), both written atomically."""
    out = Path(out_dir)
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()}
    with atomic_path(out / csv_name) as tmp:
        tmp.write_text(_csv_text(rows))
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(clean, indent=1) + "\n")
    return out / "metrics.json"


def format_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """A Markdown table of PSNR/SSIM/LPIPS-VGG (fine, coarse), background-only PSNR and Gaussian counts; LPIPS
    shows "—" and a note below the table when no weights are available."""
    def f(v: Any, digits: int = 2) -> str:
        return "—" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else f"{v:,}")
    lines = ["| item | PSNR fine | PSNR coarse | SSIM fine | SSIM coarse | LPIPS fine | LPIPS coarse | PSNR bg-only "
             f"| {COUNTS_HEADER} |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows + [dict(summary, name="**mean**")]:
        lines.append(f"| {r['name']} | {f(r['psnr_fine'])} | {f(r['psnr_coarse'])} | {f(r['ssim_fine'], 4)} | "
                     f"{f(r['ssim_coarse'], 4)} | {f(r.get('lpips_fine'), 4)} | {f(r.get('lpips_coarse'), 4)} | "
                     f"{f(r['psnr_background'])} | {format_counts(r)} |")
    status = str(summary.get("lpips_status", ""))
    if status.startswith(UNAVAILABLE):
        lines.append(f"LPIPS-VGG {status} — `gdensify download lpips` builds the weights into the user cache")
    return "\n".join(lines)
