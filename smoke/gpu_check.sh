#!/usr/bin/env bash
# GPU smoke on a Linux box with an NVIDIA GPU and no internet, in under ten minutes.
#
#   smoke/gpu_check.sh WHEEL_DIR [OUT_DIR]
#
# Needs: nvidia-smi, nvcc, cmake, ninja, and a python3 (or $PYTHON) with torch (CUDA build) and
# transformers. WHEEL_DIR holds smoke/gpu_check_requirements.txt's files. It installs them into
# OUT/site (on PYTHONPATH), builds llama-cpp-python with GGML_CUDA for this card's compute
# capability only, generates the tiny model, runs transformers on CUDA and the tiny GGUF fully
# offloaded, checks both against the numpy reference, and prints a JSON summary.
set -euo pipefail

die() { echo "gpu_check: FAIL: $*" >&2; exit 1; }
step() { echo "gpu_check: $*" >&2; }

[ $# -ge 1 ] || die "usage: $0 WHEEL_DIR [OUT_DIR]"
REPO=$(cd "$(dirname "$0")/.." && pwd)
WHEELS=$(cd "$1" 2>/dev/null && pwd) || die "wheel directory $1 does not exist"
OUT=${2:-$(mktemp -d -t xinfer-gpu-check-XXXXXX)}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
STARTED=$SECONDS

command -v nvidia-smi >/dev/null || die "nvidia-smi not found: no NVIDIA driver here"
CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d ' ') \
  || die "nvidia-smi could not report a compute capability"
[[ $CC =~ ^[0-9]+\.[0-9]+$ ]] || die "unexpected compute capability '$CC' from nvidia-smi"
ARCH=${CC/./}
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
step "GPU: $GPU (compute capability $CC, building for sm_$ARCH only)"

if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
for tool in nvcc cmake ninja; do
  command -v "$tool" >/dev/null || die "$tool not found on PATH"
done
"$PYTHON" -c "import torch, transformers; assert torch.cuda.is_available(), 'torch sees no CUDA device'" \
  || die "$PYTHON needs torch with CUDA and transformers"

# No venv: a venv made from a venv's python does not see that venv's torch (GPU images ship
# torch in a venv). Our wheels go into a target directory on PYTHONPATH instead.
SITE=$OUT/site
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
step "installing the wheels from $WHEELS into $SITE"
PIP=("$PYTHON" -m pip install --no-index --find-links "$WHEELS" --no-deps -q --target "$SITE")
"${PIP[@]}" scikit-build-core pathspec packaging diskcache typing-extensions gguf \
  || die "installing the build and runtime wheels from $WHEELS failed"

step "building llama-cpp-python with GGML_CUDA for sm_$ARCH (log: $OUT/llama-build.log)"
BUILD_START=$SECONDS
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
  timeout 480 "${PIP[@]}" --no-build-isolation --no-cache-dir llama-cpp-python >"$OUT/llama-build.log" 2>&1 \
  || { tail -n 30 "$OUT/llama-build.log" >&2; die "llama-cpp-python CUDA build failed or took over 8 minutes"; }
BUILD_S=$((SECONDS - BUILD_START))
LIB_DIR=$("$PYTHON" -c "import llama_cpp, os; print(os.path.join(os.path.dirname(llama_cpp.__file__), 'lib'))")
ls "$LIB_DIR" | grep -q 'ggml-cuda' || die "no libggml-cuda in $LIB_DIR: the build has no CUDA backend"
step "built in ${BUILD_S}s; CUDA backend library present"

step "tiny model, transformers on CUDA, GGUF fully offloaded"
PYTHONPATH=$REPO:$PYTHONPATH "$PYTHON" -m smoke.gpu_report --python "$PYTHON" --out "$OUT" \
  >"$OUT/summary.json" || { cat "$OUT/summary.json"; die "checks failed (see above; logs in $OUT)"; }
"$PYTHON" - "$OUT/summary.json" "$GPU" "$CC" "$BUILD_S" "$((SECONDS - STARTED))" <<'PY'
import json, sys
path, gpu, cc, build_s, total_s = sys.argv[1:]
summary = json.load(open(path))
summary.update(gpu=gpu, compute_capability=cc, llama_cpp_build_s=int(build_s), total_s=int(total_s))
json.dump(summary, open(path, "w"), indent=2)
print(json.dumps(summary, indent=2))
PY
step "PASS in $((SECONDS - STARTED))s (summary: $OUT/summary.json)"
