"""Speed of the fused ops: Triton kernel vs the pure-torch reference (fftconv, causal_conv1d).

    python benchmarks/ops.py                     # GPU: B=8, D=256, L = 1k .. 256k; CPU: small sizes
    python benchmarks/ops.py --op causal_conv1d --channels 384 --taps 3 --transposed   # Hyena's short conv
    python benchmarks/ops.py --dtype bf16 --op fftconv --lengths 1024,4096,32768

On CUDA it times, per length, ``fwd`` (forward) and ``fwd+bwd`` (forward + backward of a fixed random
upstream gradient, all inputs requiring grad) for every implementation (the spec ``ref``, the torch
fast paths ``spectral`` / ``shifted`` that run where the kernel does not, and the Triton ``kernel``),
with CUDA events: median of ``--repeats`` runs after ``--warmup`` runs (the first call also compiles
the kernel). It prints the milliseconds, each one's speed-up over ref, the peak CUDA memory of the
fwd+bwd run and, for fftconv, the memory-bound floor of the reference (~96 bytes per element of u,
see RESULTS.md) at ``--bandwidth`` TB/s. The fftconv kernel is a direct O(L * Lk) convolution: it is
skipped above ``--kernel-max-len`` (default 65536) where the FFT path wins by orders of magnitude.

Without CUDA it says so and times the torch implementations only, at small sizes (B=2, D=16,
L = 1k .. 16k).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
REF_BYTES_PER_ELEMENT = 96  # HBM bytes of the ref path's unfused fp32 passes per element of u (RESULTS.md)


def _timer(device: str):
    """Returns time_ms(fn, warmup, repeats) -> median milliseconds, CUDA events on GPU."""
    def time_ms(fn, warmup: int, repeats: int) -> float:
        for _ in range(warmup):
            fn()
        runs = []
        for _ in range(repeats):
            if device == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                runs.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                runs.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(runs)
    return time_ms


def _fwd_bwd(fn, inputs, gy):
    def run():
        for t in inputs:
            t.grad = None
        fn(*inputs).backward(gy)
    return run


def _measure(fn, inputs, gy, device, args):
    """(fwd ms, fwd+bwd ms, peak MB of fwd+bwd) for fn(*inputs)."""
    time_ms = _timer(device)
    with torch.no_grad():
        fwd = time_ms(lambda: fn(*inputs), args.warmup, args.repeats)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    both = time_ms(_fwd_bwd(fn, inputs, gy), args.warmup, args.repeats)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    return fwd, both, peak


def _row(cells, widths):
    return "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))


def _print_table(title, header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n{title}")
    print(_row(header, widths))
    for r in rows:
        print(_row(r, widths))


def _fmt(x: float) -> str:
    return "-" if x != x else f"{x:.3f}"  # NaN -> "-"


def _cells(L, res, floor_ms, gpu: bool):
    """One table row: per implementation fwd and fwd+bwd ms with the speed-up over ``ref`` (+ peak MB
    of fwd+bwd and the floor on GPU). ``res`` maps name -> (fwd ms, fwd+bwd ms, peak MB), ref first."""
    ref = res["ref"]
    cells = [L]
    for part in (0, 1):
        for name, r in res.items():
            cells.append(_fmt(r[part]))
            if name != "ref":
                cells.append(_fmt(ref[part] / r[part]))
    if gpu:
        cells += [_fmt(r[2]) for r in res.values()] + [_fmt(floor_ms)]
    return cells


def _header(names, gpu: bool, floor: str):
    cols = ["L"]
    for part in ("fwd ms", "f+b ms"):
        for name in names:
            cols.append(f"{name} {part}")
            if name != "ref":
                cols.append("speed-up")
    if gpu:
        cols += [f"{name} peak MB" for name in names] + [floor]
    return cols


def bench_fftconv(args, device, dtype, lengths):
    """Table for fftconv: u [B, D, L] in dtype, k [D, L] fp32, bias [D] fp32."""
    from bioseq.ops.fftconv import fftconv_ref, fftconv_spectral

    impls = {"ref": fftconv_ref, "spectral": fftconv_spectral}
    if device == "cuda":
        from bioseq.ops.fftconv.triton import fftconv_triton

        impls["kernel"] = fftconv_triton
    B, D = args.batch, args.channels
    rows = []
    for L in lengths:
        u = torch.randn(B, D, L, device=device, dtype=dtype, requires_grad=True)
        k = (torch.randn(D, L, device=device) / L ** 0.5).requires_grad_()
        bias = torch.randn(D, device=device, requires_grad=True)
        gy = torch.randn(B, D, L, device=device, dtype=dtype)
        floor_ms = REF_BYTES_PER_ELEMENT * B * D * L / (args.bandwidth * 1e12) * 1e3
        res = {}
        for name, fn in impls.items():
            if name == "kernel" and L > args.kernel_max_len:
                res[name] = (float("nan"),) * 3
                continue
            res[name] = _measure(fn, (u, k, bias), gy, device, args)
        rows.append(_cells(L, res, floor_ms, device == "cuda"))
        del u, k, bias, gy
        if device == "cuda":
            torch.cuda.empty_cache()
    header = _header(list(impls), device == "cuda", "ref floor fwd ms")
    _print_table(f"fftconv  B={B} D={D} u {args.dtype}, k/bias fp32  ({device})", header, rows)


def bench_causal_conv1d(args, device, dtype, lengths):
    """Table for causal_conv1d: x [B, D, L] in dtype, weight [D, K] fp32, bias fp32, SiLU."""
    from bioseq.ops.causal_conv1d import causal_conv1d_ref, causal_conv1d_shifted

    impls = {"ref": causal_conv1d_ref, "shifted": causal_conv1d_shifted}
    if device == "cuda":
        from bioseq.ops.causal_conv1d.triton import causal_conv1d_triton

        impls["kernel"] = causal_conv1d_triton
    B, D, K = args.batch, args.channels, args.taps
    rows = []
    for L in lengths:
        x = (torch.randn(B, L, D, device=device, dtype=dtype).transpose(1, 2) if args.transposed
             else torch.randn(B, D, L, device=device, dtype=dtype)).requires_grad_()
        w = torch.randn(D, K, device=device, requires_grad=True)
        bias = torch.randn(D, device=device, requires_grad=True)
        gy = torch.randn(B, D, L, device=device, dtype=dtype)
        floor_ms = 2 * x.element_size() * B * D * L / (args.bandwidth * 1e12) * 1e3  # read x, write y
        res = {name: _measure(lambda a, b, c, f=fn: f(a, b, c, "silu"), (x, w, bias), gy, device, args)
               for name, fn in impls.items()}
        rows.append(_cells(L, res, floor_ms, device == "cuda"))
        del x, w, bias, gy
        if device == "cuda":
            torch.cuda.empty_cache()
    header = _header(list(impls), device == "cuda", "floor fwd ms")
    layout = "[B, L, D] seen as [B, D, L]" if args.transposed else "[B, D, L]"
    _print_table(f"causal_conv1d  B={B} D={D} K={K} SiLU x {args.dtype} {layout}  ({device})", header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--op", choices=["all", "fftconv", "causal_conv1d"], default="all")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="dtype of u / x")
    parser.add_argument("--lengths", help="comma-separated L (default: GPU 1k..256k, CPU 1k..16k)")
    parser.add_argument("--batch", type=int, help="B (default: GPU 8, CPU 2)")
    parser.add_argument("--channels", type=int, help="D (default: GPU 256, CPU 16)")
    parser.add_argument("--taps", type=int, default=4, help="K of causal_conv1d")
    parser.add_argument("--transposed", action="store_true",
                        help="causal_conv1d: x is a [B, L, D] tensor seen as [B, D, L] (the models' layout)")
    parser.add_argument("--kernel-max-len", type=int, default=65536,
                        help="skip the O(L^2) fftconv kernel above this L")
    parser.add_argument("--bandwidth", type=float, default=4.8, help="HBM TB/s for the floor column (H200)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}  torch {torch.__version__}")
        default_lengths = [1024 * 2**i for i in range(9)]  # 1k .. 256k
        args.batch = args.batch or 8
        args.channels = args.channels or 256
    else:
        print("No GPU (CUDA not available): timing the torch implementations only, on CPU, at small sizes; "
              "the Triton kernels need a GPU (their CPU interpreter is for tests, not timing).")
        default_lengths = [1024 * 2**i for i in range(5)]  # 1k .. 16k
        args.batch = args.batch or 2
        args.channels = args.channels or 16
    lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else default_lengths
    dtype = DTYPES[args.dtype]
    if args.op in ("all", "fftconv"):
        bench_fftconv(args, device, dtype, lengths)
    if args.op in ("all", "causal_conv1d"):
        bench_causal_conv1d(args, device, dtype, lengths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
