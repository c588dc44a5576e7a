#!/usr/bin/env bash
# GPU check on a machine with an NVIDIA GPU (one run of a few minutes).
#
# Runs scripts/device_check.py (torch CUDA fp32/fp16, onnxruntime CUDA / TensorRT execution
# providers, the tensorrt backend fp32/fp16; latency per frame at 512/1024/2048 and parity
# against CPU) and the real-TensorRT tests of test/test_tensorrt_backend.py. Whatever is not
# installed is reported as skipped with the reason. Results: $OUT/device_check.json and logs
# in $OUT (default ./device_check_out).
#
# Usage (repository root):  scripts/device_check.sh      PYTHON=/path/to/python to choose one
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device_check_out}
mkdir -p "$OUT"

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in .venv/bin/python python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 \
        && "$candidate" -c 'import numpy, cv2, torch, transformers, onnx' >/dev/null 2>&1; then
      PY=$candidate
      break
    fi
  done
fi
if [ -z "$PY" ]; then
  echo "no python with numpy, opencv, torch, transformers and onnx found; set PYTHON=..." >&2
  exit 2
fi
echo "python: $PY ($("$PY" --version 2>&1))"
nvidia-smi 2>&1 | head -15 || echo "nvidia-smi not found"

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
timeout 420 "$PY" scripts/device_check.py --json "$OUT/device_check.json" 2>&1 \
  | tee "$OUT/device_check.log"
status=${PIPESTATUS[0]}
timeout 150 "$PY" -m pytest test/test_tensorrt_backend.py -q -rs -p no:cacheprovider 2>&1 \
  | tee "$OUT/pytest_tensorrt.log"
echo "device_check.py exit $status; results in $OUT"
exit "$status"
