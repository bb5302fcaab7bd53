#!/usr/bin/env bash
# Every GPU measurement the project is waiting for, in one run on a CUDA machine (at most 9 minutes
# by the step limits). Each step writes one log to $OUT (default ./gpu_check_out); the script goes on
# when a step fails or times out, and the summary at the end lists each step's exit status.
#
#   kernels   pytest tests/ops: every Triton kernel (fftconv, causal_conv1d, selective_scan, ssd, mlstm,
#             slstm) against its reference, on the GPU (not the interpreter)
#   ops_fp32  python benchmarks/ops.py                (fftconv and causal_conv1d, B=8 D=256, L = 1k .. 256k)
#   ops_bf16  python benchmarks/ops.py --dtype bf16
#   ops_mamba python benchmarks/ops_mamba.py          (selective_scan and ssd: kernel vs reference)
#   embed     python benchmarks/embed.py proteins --device cuda   (4,298 E. coli proteins: engine vs loop)
#   embed_cpu the same on the machine's CPU cores (the loop cannot use many cores, the batched engine can)
#
# Needs: python3 with torch (CUDA), triton, numpy, h5py, pytest; bioseq is used from this checkout
# (PYTHONPATH), not installed. The proteome is read from $BIOSEQ_SHARED/data/protein/ (default
# ../shared); on a machine without ../shared, copy that one file into an ignored folder of the
# checkout for the transfer and point BIOSEQ_SHARED at it (see benchmarks/RESULTS.md, "GPU check").
#
#   GPU_CHECK_QUICK=1 bash benchmarks/gpu_check.sh   # plumbing only: tiny sizes, runs on a CPU too
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
PY=${PYTHON:-python3}
QUICK=${GPU_CHECK_QUICK:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export BIOSEQ_SHARED=${BIOSEQ_SHARED:-$PWD/../shared}

declare -a SUMMARY=()
step() {  # step NAME SECONDS command...: run it, log to $OUT/NAME.txt, remember its exit status
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "== $name: $* (limit ${limit}s)"
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    echo "-- exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/$name.txt"
    tail -n 25 "$OUT/$name.txt"
    SUMMARY+=("$name: exit $rc, $((SECONDS - t0)) s")
}

{
    date -u
    nvidia-smi 2>&1 || echo "nvidia-smi: not found"
    "$PY" -c 'import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name())
try:
    import triton
    print("triton", triton.__version__)
except ImportError as e:
    print("triton: not importable:", e)'
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ "$QUICK" = 1 ]; then
    step kernels 300 "$PY" -m pytest tests/ops/test_causal_conv1d.py -q -x
    step ops_fp32 120 "$PY" benchmarks/ops.py --lengths 256,1024 --repeats 2
    step ops_bf16 120 "$PY" benchmarks/ops.py --dtype bf16 --lengths 256 --repeats 2
    step ops_mamba 120 "$PY" benchmarks/ops_mamba.py --lengths 256 --repeats 2
    step embed 300 "$PY" benchmarks/embed.py proteins --limit 100 --device "$("$PY" -c \
        'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')"
else
    export TRITON_INTERPRET=0  # compile for the GPU even where tests/conftest.py sees no /dev/nvidia*
    step kernels 150 "$PY" -m pytest tests/ops -q -x
    step ops_fp32 75 "$PY" benchmarks/ops.py --lengths 1024,4096,16384,65536,262144 --kernel-max-len 16384
    step ops_bf16 60 "$PY" benchmarks/ops.py --dtype bf16 --lengths 1024,4096,16384,65536,262144 \
        --kernel-max-len 16384
    step ops_mamba 60 "$PY" benchmarks/ops_mamba.py --batch 8 --channels 1024 --lengths 1024,4096,16384 \
        --clock wall --repeats 5
    step embed 100 "$PY" benchmarks/embed.py proteins --device cuda
    step embed_cpu 90 "$PY" benchmarks/embed.py proteins --threads "$(nproc)"
fi

printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
