#!/usr/bin/env bash
# GPU benchmark of the engine, made to run in ONE call of the device tool; results go to $OUT.
#
# ASSUMPTIONS (the GPU machine has no internet and receives only a copy of this working tree):
#   * Python: $PYTHON, else `python3`. On the lent H100/H200 machines python3 is Python 3.12 with
#     a CUDA torch, numpy, ninja and nvcc, but WITHOUT gsplat and smplx. This repository's .venv
#     cannot serve there (CPU-only torch, 2.8 GB, Python 3.11).
#   * gsplat 1.5.3 and smplx 0.1.28 are pure Python. When python3 lacks them they are taken from
#     the carried .venv/lib/python3.11/site-packages/{gsplat,smplx} (name both in `carry`).
#     gsplat JIT-compiles its CUDA kernels with nvcc on first use (minutes). The build runs in
#     its own process session and is kept in .cache/torch_extensions, so when a call ends before
#     the build does, the next call on the same (still warm) machine picks it up. If gsplat cannot
#     be built, the benchmark runs without the gsplat modes and says so.
#   * Weights: $GAGA_CHECKPOINT and $GAGA_FLAME when set; else synthetic official-format files are
#     generated once into .cache/gpu-assets by the project's own generator (engine/synthetic.py,
#     as `gagavatar assets synthesize`). Timings do not depend on the weights' values.
#
# Run from a session here (ignored paths travel only when carried):
#   device run: command "bash bench/gpu.sh", timeout_s 600, carry [".venv/lib/python3.11/site-packages/gsplat",
#               ".venv/lib/python3.11/site-packages/smplx"]
#
# Writes $OUT/gpu_style_unet.md (bench/bench_style_unet.py: the neural renderer against the matmul
# rate), $OUT/gpu_bench.md (the markdown table of bench/bench_engine.py, with the machine) and
# $OUT/gpu_bench.log. Knobs: FRAMES (batch of the batched modes, default 16), REPEAT (default 10),
# GSPLAT_WAIT (seconds to wait for the gsplat build after the weights are ready, default 240: the
# benchmark itself needs minutes, torch.compile included; a first call may therefore report
# without the gsplat modes, and the next call on the warm machine includes them).
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/.cache/gpu-bench}
PY=${PYTHON:-python3}
FRAMES=${FRAMES:-16}
REPEAT=${REPEAT:-10}
GSPLAT_WAIT=${GSPLAT_WAIT:-240}
SITE_PACKAGES=$REPO/.venv/lib/python3.11/site-packages
mkdir -p "$OUT" "$REPO/.cache"
LOG=$OUT/gpu_bench.log
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1

# The repository root is the package `gagavatar`: expose it (and missing pure-Python packages).
SITE=/tmp/gagavatar-gpu-site
mkdir -p "$SITE"
ln -sfn "$REPO" "$SITE/gagavatar"
for pkg in gsplat smplx; do
  if ! "$PY" -c "import $pkg" 2>/dev/null; then
    if [ -d "$SITE_PACKAGES/$pkg" ]; then ln -sfn "$SITE_PACKAGES/$pkg" "$SITE/$pkg"
    else echo "warning: $pkg is neither installed for $PY nor carried ($SITE_PACKAGES/$pkg)"; fi
  fi
done
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
export TORCH_EXTENSIONS_DIR=$REPO/.cache/torch_extensions
export TORCHINDUCTOR_CACHE_DIR=$REPO/.cache/inductor
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" || exit 1

# gsplat's CUDA build: detached (setsid), so that it survives this call if the call's time runs out;
# the weights are generated meanwhile.
ARCH=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH}
GSPLAT_OK=$REPO/.cache/gsplat-built
if [ ! -f "$GSPLAT_OK" ]; then
  if [ ! -f "$REPO/.cache/gsplat-building" ]; then
    touch "$REPO/.cache/gsplat-building"
    setsid bash -c "'$PY' -c 'from gsplat.cuda._backend import _C; assert _C is not None' \
      > '$REPO/.cache/gsplat-build.log' 2>&1 && touch '$GSPLAT_OK'; rm -f '$REPO/.cache/gsplat-building'" \
      > /dev/null 2>&1 < /dev/null &
  fi
fi

# Weights.
ASSETS=$REPO/.cache/gpu-assets
CKPT=${GAGA_CHECKPOINT:-$ASSETS/GAGAvatar.pt}
FLAME=${GAGA_FLAME:-$ASSETS/FLAME_with_eye.pt}
if [ ! -f "$CKPT" ] || [ ! -f "$FLAME" ]; then
  "$PY" -c "import sys; from gagavatar.engine import synthetic; synthetic.synthesize(sys.argv[1], seed=0)" "$ASSETS" || exit 1
fi

if [ ! -f "$GSPLAT_OK" ]; then
  echo "waiting up to ${GSPLAT_WAIT}s for gsplat's CUDA build (log: .cache/gsplat-build.log)"
  for _ in $(seq "$GSPLAT_WAIT"); do
    [ -f "$GSPLAT_OK" ] || [ ! -f "$REPO/.cache/gsplat-building" ] && break
    sleep 1
  done
  cp "$REPO/.cache/gsplat-build.log" "$OUT/gsplat_build.log" 2>/dev/null || true
fi
GSPLAT_FLAG=()
if [ -f "$GSPLAT_OK" ]; then echo "gsplat: built"
elif [ -f "$REPO/.cache/gsplat-building" ]; then
  echo "gsplat: still building; call bench/gpu.sh again on the same warm machine to include the gsplat modes"
  GSPLAT_FLAG=(--no-gsplat)
else
  echo "gsplat: build FAILED (see gsplat_build.log); benchmarking without the gsplat modes"
  GSPLAT_FLAG=(--no-gsplat)
fi

cd "$REPO" && "$PY" bench/bench_style_unet.py --checkpoint "$CKPT" --flame "$FLAME" --device cuda \
  --markdown "$OUT/gpu_style_unet.md"
"$PY" bench/bench_engine.py --checkpoint "$CKPT" --flame "$FLAME" --device cuda \
  --frames "$FRAMES" --repeat "$REPEAT" --markdown "$OUT/gpu_bench.md" "${GSPLAT_FLAG[@]}"
