#!/usr/bin/env bash
# What liverrt checks on a lent CUDA machine, in one run (its image: torch 2.11 with CUDA, numba,
# onnxruntime for CPU only, no TensorRT; no network):
#   1. the whole test suite on that torch, CUDA tests included (marker gpu), 6 workers;
#   2. meanwhile, on the GPU: the study's U-Net trained at 512x512 on phantoms (about 2 minutes),
#      brought back to measure the fp16/int8 export gates of a trained 512x512 network on a CPU;
#   3. then, alone on the machine: benchmarks/gpu_torch.py (torch engine GPU vs CPU for the three
#      networks, the trained U-Net end to end, and the gate of the GPU engine against the CPU).
# Packages the image lacks travel as wheels in .whl/ (see benchmarks/RESULTS.md for the list).
# Usage: OUT=DIR bash benchmarks/gpu_check.sh   -> DIR: env.txt, pytest.log, train.log, train_log.csv,
#        curves.png, unet512.pt, gpu_bench.log, gpu_bench.json
set -uo pipefail
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg NUMBA_CACHE_DIR=/tmp/liverrt-numba
PY=python3
{
  date -u
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  fi
} >"$OUT/env.txt" 2>&1
export PYTHONPATH=/tmp/site
if ! $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$OUT/env.txt" 2>&1; then
  echo "editable install failed; running from src/" >>"$OUT/env.txt"
  export PYTHONPATH=/tmp/site:$PWD/src
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
  nproc
  $PY -c "import torch, numba, onnxruntime, onnx, liverrt; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), '| numba', numba.__version__, '| onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers(), '| onnx', onnx.__version__, '| liverrt', liverrt.__version__)"
} >>"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== phantoms and training (background)"
timeout 90 $PY -m liverrt data synth --out /tmp/ph512 --cases 14 --size 512 --slices 48 --seed 0 >"$OUT/train.log" 2>&1
(
  timeout 240 $PY -m liverrt train unet --data /tmp/ph512 --out /tmp/run512 --size 512 --epochs 30 \
    --max-minutes 2.5 --batch-size 8 --val-fraction 0.15 >>"$OUT/train.log" 2>&1
  echo "train exit $?" >>"$OUT/train.log"
) &
train_pid=$!

echo "== tests"
OMP_NUM_THREADS=2 timeout 220 $PY -m pytest -q -n 6 -p no:cacheprovider -rs --durations=10 >"$OUT/pytest.log" 2>&1
echo "pytest exit $?" >>"$OUT/pytest.log"
tail -n 25 "$OUT/pytest.log"
wait "$train_pid"
tail -n 4 "$OUT/train.log"
cp /tmp/run512/best.pt "$OUT/unet512.pt" 2>/dev/null
cp /tmp/run512/train_log.csv /tmp/run512/curves.png "$OUT/" 2>/dev/null

echo "== GPU benchmark"
trained=()
[ -f /tmp/run512/best.pt ] && trained=(--trained /tmp/run512/best.pt)
timeout 180 $PY benchmarks/gpu_torch.py --out /tmp/gpu_bench "${trained[@]}" >"$OUT/gpu_bench.log" 2>&1
echo "gpu_torch exit $?" >>"$OUT/gpu_bench.log"
cp /tmp/gpu_bench/results.json "$OUT/gpu_bench.json" 2>/dev/null
tail -n 45 "$OUT/gpu_bench.log"
