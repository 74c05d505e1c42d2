#!/usr/bin/env bash
# The product itself on a lent GPU machine, offline: probe -> plan --auto -> the wheelhouse build of
# llama-cpp-python with the PLANNED CMake args -> verify -> the tiny model on llama.cpp fully
# offloaded (and transformers on CUDA), both held to the numpy reference with the GPU tolerance.
#
#   smoke/gpu_check.sh prepare CARRY_DIR          # here, with PyPI: what the GPU machine lacks
#   smoke/gpu_check.sh run [--cpu] CARRY_DIR [OUT] # there, no network (--cpu: the same steps here)
#
# CARRY_DIR (git-ignored, e.g. .gpu-carry; name it in the device run's `carry`) holds ~8 MB:
#   llama_cpp_python-<v>.tar.gz   the sdist trimmed of what no build reads (its .git, docs, vocab
#                                 models, tests: 76.6 MB -> ~7.4 MB), same file names otherwise
#   wheels/                       smoke/gpu_check_requirements.txt (pure Python; the image lacks them)
# The machine's own python3 must have torch (a CUDA build), transformers, numpy, tokenizers,
# safetensors, click, packaging, nvidia-ml-py, scikit-build-core, cmake and ninja (the lent image
# has all of them); the build runs with --no-build-isolation against them, and nvcc from CUDA.
#
# OUT gets: probe.json (the profile), nvml-raw.json (NVML's raw answers: copy it to
# tests/fixtures/raw/nvml__<gpu>-driver<version>.json as a probe fixture), plan.json, build.json,
# verify.json, summary.json, and the logs.
#
# What it cannot cover: `install` itself (torch and Xinference would come from the network; the
# image's torch stands in for the planned one, so verify judges the image's torch against the
# plan), xllamacpp's CUDA wheel (from its own index), vLLM/SGLang (GBs of CUDA wheels), serving
# over HTTP (the openai client is not in the image), more GPUs than the one lent, and other
# drivers or architectures than the lent machine's (those stay with tests/profiles).
#
# The CUDA wheel `install --profile` builds on a CPU host (tests/test_gpu_target.py) is 190 MB
# (libggml-cuda.so 47 MB, stored under three link names): over the carry limit as it is. Its
# distinct libraries come to about 56 MB unpacked, so carrying them needs deduplication and
# compression first; not done, since no GPU machine has been lent to run it on yet.
set -euo pipefail

die() { echo "gpu_check: FAIL: $*" >&2; exit 1; }
step() { echo "gpu_check: $*" >&2; }
usage() { die "usage: $0 prepare CARRY_DIR | $0 run [--cpu] CARRY_DIR [OUT_DIR]"; }

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
LLAMA_VERSION=0.3.36
SDIST=llama_cpp_python-$LLAMA_VERSION.tar.gz
CARRY_LIMIT_BYTES=$((48 * 1024 * 1024))  # of the 64 MiB a device run carries, with room for the repo

[ $# -ge 1 ] || usage
MODE=$1; shift

if [ "$MODE" = prepare ]; then
  [ $# -eq 1 ] || usage
  CARRY=$1
  mkdir -p "$CARRY/wheels"
  CACHED=${XDG_CACHE_HOME:-$HOME/.cache}/xinfer-setup/sdist/$SDIST
  if [ -f "$CACHED" ]; then
    FULL=$CACHED
  else
    FULL_DIR=$(mktemp -d)
    "$PYTHON" -m pip download --no-deps --no-binary :all: -q -d "$FULL_DIR" "llama-cpp-python==$LLAMA_VERSION" \
      || die "cannot download the llama-cpp-python $LLAMA_VERSION sdist"
    FULL=$FULL_DIR/$SDIST
  fi
  step "trimming $FULL"
  PYTHONPATH=$REPO "$PYTHON" -m smoke.gpu_check trim-sdist "$FULL" "$CARRY/$SDIST" >&2
  "$PYTHON" -m pip download --no-deps -q -d "$CARRY/wheels" -r "$REPO/smoke/gpu_check_requirements.txt" \
    || die "cannot download the wheels in smoke/gpu_check_requirements.txt"
  SIZE=$(du -sb "$CARRY" | cut -f1)
  [ "$SIZE" -le "$CARRY_LIMIT_BYTES" ] || die "$CARRY is $SIZE bytes, over the $CARRY_LIMIT_BYTES-byte budget"
  step "prepared $CARRY: $SIZE bytes"
  exit 0
fi

[ "$MODE" = run ] || usage
CPU=0
if [ "${1:-}" = --cpu ]; then CPU=1; shift; fi
[ $# -ge 1 ] || usage
CARRY=$(cd "$1" 2>/dev/null && pwd) || die "carry directory $1 does not exist (run: $0 prepare $1)"
[ -f "$CARRY/$SDIST" ] || die "carry directory $CARRY has no $SDIST (run: $0 prepare $1)"
OUT=${2:-$(mktemp -d -t xinfer-gpu-check-XXXXXX)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
STARTED=$SECONDS
# Scratch (the wheelhouse, the build tree, the site) stays out of OUT, whose files travel back.
WORK=${GPU_CHECK_WORK:-$(mktemp -d -t xinfer-gpu-work-XXXXXX)}
SITE=$WORK/site
export PYTHONPATH=$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}
# Nothing may reach a network: pip, the hub, uv.
export PIP_NO_INDEX=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 UV_OFFLINE=1
if [ "$CPU" = 1 ]; then
  # The CPU half, for tests: this machine's wheelhouse (a warm cache keeps the build to seconds).
  CACHE=${GPU_CHECK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xinfer-setup}
else
  CACHE=$WORK/cache
  command -v nvidia-smi >/dev/null || die "nvidia-smi not found: no NVIDIA driver here"
  if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH=/usr/local/cuda/bin:$PATH
  fi
  command -v nvcc >/dev/null || die "nvcc not found: the planned CUDA build needs it"
fi

# pip where the python has it (the lent image); uv's, for an environment uv made without pip.
install_into_site() {
  if "$PYTHON" -m pip --version >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$@"
  else
    uv pip install -q --offline --no-deps --python "$PYTHON" --target "$SITE" "$@"
  fi
}
step "carried wheels -> $SITE"
install_into_site "$CARRY"/wheels/*.whl || die "installing the carried wheels failed"

step "probe"
"$PYTHON" -m provision probe --json >"$OUT/probe.json" || die "probe failed"
if [ "$CPU" = 0 ]; then
  "$PYTHON" -m smoke.gpu_check nvml-raw >"$OUT/nvml-raw.json" || die "reading NVML failed"
  nvidia-smi -q -x >"$OUT/nvidia-smi-q-x.xml" 2>/dev/null || true
fi

step "plan --auto on that profile"
"$PYTHON" -m provision plan --auto --profile "$OUT/probe.json" --json >"$OUT/plan.json" || die "plan failed"
"$PYTHON" -m provision plan --auto --profile "$OUT/probe.json" >"$OUT/plan.txt" || true

step "wheelhouse build of llama-cpp-python with the planned CMake args (cache: $CACHE)"
"$PYTHON" -m smoke.gpu_check build --plan "$OUT/plan.json" --sdist "$CARRY/$SDIST" --cache "$CACHE" \
  >"$OUT/build.json" || die "the build failed (logs under $CACHE/logs)"
WHEEL=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["wheel"])' "$OUT/build.json")
install_into_site "$WHEEL" || die "installing $WHEEL failed"

step "verify"
"$PYTHON" -m smoke.gpu_check verify --plan "$OUT/plan.json" --python "$(command -v "$PYTHON")" \
  >"$OUT/verify.json" || { cat "$OUT/verify.json" >&2; die "verify failed"; }

step "tiny model: transformers and llama.cpp (full offload) against the numpy reference"
REPORT=(--python "$(command -v "$PYTHON")" --out "$WORK")
[ "$CPU" = 1 ] && REPORT+=(--cpu)
"$PYTHON" -m smoke.gpu_report "${REPORT[@]}" >"$OUT/summary.json" \
  || { cat "$OUT/summary.json" >&2; die "checks failed (logs in $WORK)"; }
"$PYTHON" - "$OUT" "$((SECONDS - STARTED))" <<'PY'
import json, sys
out, total_s = sys.argv[1], int(sys.argv[2])
summary = json.load(open(f"{out}/summary.json"))
build = json.load(open(f"{out}/build.json"))
profile = json.load(open(f"{out}/probe.json"))
summary.update(total_s=total_s, build=build, verify=json.load(open(f"{out}/verify.json")),
               gpus=[g["name"] for g in profile.get("gpus", [])],
               driver=(profile.get("nvidia") or {}).get("driver_version"))
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print(json.dumps({k: summary[k] for k in ("ok", "total_s", "gpus", "driver")}, indent=2))
PY
step "PASS in $((SECONDS - STARTED))s (summary: $OUT/summary.json)"
