#!/usr/bin/env bash
# GPU check for a lent CUDA machine: one prepared script, about 5 minutes on one H200 (each step has its own
# time limit; the whole run stays under 8 minutes). Never needed by the tests.
#
#   benchmarks/gpu_check.sh [RESULTS_DIR]      # default: $OUT when set, else gpu_check_results
#
# Steps (each writes its output into RESULTS_DIR; a failing step is reported and the next one still runs):
#   1. environment: GPU, driver, torch, gsplat                                      -> env.txt
#   2. gsplat backend against the PyTorch reference: images, alphas, depths and the
#      gradients of every Gaussian parameter; renderer throughput                   -> render.json
#   3. the published-size object and scene models on CUDA, float32 beside bfloat16  -> published_models.json
#   4. 20 training steps of `tiny` and of `scene-tiny` on CUDA (synthetic data)     -> train_tiny.log, train_scene.log
#   5. a summary with the throughput table                                          -> summary.md (and gpu_check.log)
# gsplat is not installed by this script: `pip install -e '.[gpu]'` (or a gsplat wheel) is the user's step; without
# it step 2 reports the comparison as not available and times the reference only.
# GPU_CHECK_DEVICE=cpu runs the same steps on the CPU at toy sizes (a smoke run of this script).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="${1:-${OUT:-gpu_check_results}}"
PY="${PYTHON:-python}"
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$RESULTS/gpu_check.log"
: >"$LOG"
declare -A STATUS SECONDS_TAKEN

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log, record status and duration
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  SECONDS_TAKEN[$name]=$((SECONDS - t0))
  if [ "$rc" -eq 0 ]; then STATUS[$name]=ok
  elif [ "$rc" -eq 124 ]; then STATUS[$name]="timed out"
  else STATUS[$name]="failed (rc $rc)"; fi
  echo "== $name: ${STATUS[$name]} in ${SECONDS_TAKEN[$name]} s" | tee -a "$LOG"
}

# 1. environment
{
  date -u
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  else
    echo "nvidia-smi: not available"
  fi
  "$PY" - <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
try:
    import gsplat
    print("gsplat", gsplat.__version__)
except Exception as exc:
    print("gsplat not importable:", exc)
EOF
} >"$RESULTS/env.txt" 2>&1
cat "$RESULTS/env.txt" | tee -a "$LOG"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
if [ "$DEVICE" = cpu ]; then
  ACCEL=cpu; QUICK=(--quick); RENDER=(--backend cpu --quick)
else
  ACCEL=gpu; QUICK=(); RENDER=()
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: torch sees no CUDA device; nothing else to check" | tee -a "$LOG"
    exit 2
  fi
fi

# 2. renderer: gsplat vs reference, throughput
step render 100 "$PY" "$ROOT/benchmarks/gpu_check.py" --device "$DEVICE" --repeats 3 "${RENDER[@]}" \
  --json "$RESULTS/render.json"

# 3. published-size models, float32 and bfloat16
step published_models 150 "$PY" "$ROOT/benchmarks/published_models.py" --device "$DEVICE" "${QUICK[@]}" --repeats 3 \
  --targets 2 --skip-raster --json "$RESULTS/published_models.json"

# 4. 20 training steps of each tiny model on CUDA, on synthetic data
step make_data 45 bash -c "'$PY' -m gdensify.cli make-data objects '$WORK/objects' --count 4 && \
  '$PY' -m gdensify.cli make-data scenes '$WORK/scenes' --count 4"
step train_tiny 75 "$PY" -m gdensify.cli train --config tiny --accelerator "$ACCEL" --no-progress \
  train.max_steps=20 train.out_dir="$WORK/run_tiny" data.root="$WORK/objects"
cp "$LOG" "$RESULTS/train_tiny.log"
step train_scene 75 "$PY" -m gdensify.cli train --config scene-tiny --accelerator "$ACCEL" --no-progress \
  train.max_steps=20 train.out_dir="$WORK/run_scene" data.root="$WORK/scenes"
sed -n '/== train_scene/,$p' "$LOG" >"$RESULTS/train_scene.log"
sed -i -n '/== train_tiny/,/== train_tiny:/p' "$RESULTS/train_tiny.log"

# 5. summary and throughput table
"$PY" - "$RESULTS" "${SECONDS_TAKEN[train_tiny]:-}" "${SECONDS_TAKEN[train_scene]:-}" "${STATUS[train_tiny]:-}" \
  "${STATUS[train_scene]:-}" <<'EOF' | tee "$RESULTS/summary.md"
import json, sys
from pathlib import Path
res = Path(sys.argv[1])
t_tiny, t_scene, s_tiny, s_scene = sys.argv[2:6]
print("# GPU check\n")
print((res / "env.txt").read_text().strip().replace("\n", "  \n"), "\n")
print("| what | throughput | detail |\n|---|---|---|")
render = res / "render.json"
if render.exists():
    r = json.loads(render.read_text())
    for p in r["parity"]:
        g = max(p["grad_max_rel"].values())
        print(f"| {r['backend']} vs reference, {p['n']:,} Gaussians at {p['size']}² | | image max abs diff "
              f"{p['image_max_abs']:.1e}, alpha {p['alpha_max_abs']:.1e}, worst gradient max rel {g:.1e} |")
    if not r["available"]:
        print(f"| {r['backend']} vs reference | not available | {r['status']} |")
    for t in r["throughput"]:
        print(f"| render {t['backend']}, {t['n']:,} Gaussians at {t['size']}² | {1 / t['forward_s']:.1f} fwd/s, "
              f"{1 / t['forward_backward_s']:.1f} fwd+bwd/s | |")
models = res / "published_models.json"
if models.exists():
    m = json.loads(models.read_text())
    for kind, s in m.items():
        if not s:
            continue
        print(f"| {kind} model forward, fp32 / bf16 | {1 / s['fp32_s']:.2f} / {1 / s['fast_s']:.2f} per s | "
              f"{s['fp32_s']:.3f} s / {s['fast_s']:.3f} s; fine render {s['fast_render_s']:.4f} s per view; "
              f"max render diff {s['max_render_diff']:.1e} |")
for name, secs, status in (("tiny", t_tiny, s_tiny), ("scene-tiny", t_scene, s_scene)):
    rate = f"{20 / float(secs):.2f} steps/s (incl. start-up)" if secs and status == "ok" else "n/a"
    print(f"| train {name}, 20 steps | {rate} | {status or 'not run'}, {secs or '?'} s |")
EOF
echo "== steps: $(for k in "${!STATUS[@]}"; do printf '%s=%s; ' "$k" "${STATUS[$k]}"; done)" | tee -a "$LOG"
