"""Speed of the Mamba scans: ``selective_scan`` (Mamba-1) and ``ssd`` (Mamba-2), torch paths vs the spec.

    python benchmarks/ops_mamba.py                       # B=2, D=512, N=16, L = 1k and 4k, one thread
    python benchmarks/ops_mamba.py --lengths 1024 --threads 2 --spec-max-len 1024

Per length it prints ``fwd`` (forward only, no autograd) and ``fwd+bwd`` (forward + backward of a fixed
random upstream gradient, every input requiring grad) milliseconds, the median of ``--repeats`` runs
after one warm-up run. On CPU the clock is the process's CPU time by default (``--clock cpu``: with one
thread this is the time the work takes on an idle core, and it stays meaningful when other jobs share the
machine); ``--clock wall`` measures elapsed time. Implementations:
- selective_scan: ``spec`` (``selective_scan_ref``, one loop step per time step) and ``blocked``
  (``selective_scan_blocked``, what runs on CPU), with softplus, delta_bias, D and z as Mamba calls it;
- ssd: ``spec`` (``ssd_ref``, one loop step per time step) and ``chunked`` (``ssd_chunked``, what runs on
  CPU) with H = D / P heads of head_dim P (default 64), one group, chunk 64, dt_bias and D.
On CUDA the Triton kernel (``selective_scan_triton``) is timed as well. The spec is skipped (``-``) above
``--spec-max-len``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def time_ms(fn, repeats: int, device: str, clock) -> float:
    """Median milliseconds of fn() after one warm-up call, measured with ``clock``."""
    fn()
    runs = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        runs.append((clock() - t0) * 1e3)
    return statistics.median(runs)


def measure(fn, inputs: dict, repeats: int, device: str, clock) -> tuple[float, float]:
    """(fwd ms, fwd+bwd ms) of fn(**inputs)."""
    with torch.no_grad():
        fwd = time_ms(lambda: fn(**inputs), repeats, device, clock)
    gy = torch.randn_like(fn(**inputs).float())

    def both():
        for t in inputs.values():
            if isinstance(t, torch.Tensor):
                t.grad = None
        fn(**inputs).float().backward(gy)

    return fwd, time_ms(both, repeats, device, clock)


def scan_inputs(B: int, D: int, N: int, L: int, device: str) -> dict:
    """Mamba-1 shapes: u, delta, z [B, D, L]; A [D, N]; B, C [B, N, L]; D, delta_bias [D]."""
    leaf = dict(device=device, requires_grad=True)
    return dict(u=torch.randn(B, D, L, **leaf), delta=torch.randn(B, D, L, **leaf),
                A=(-torch.rand(D, N, device=device) * 15 - 1).requires_grad_(),
                B=torch.randn(B, N, L, **leaf), C=torch.randn(B, N, L, **leaf), D=torch.randn(D, **leaf),
                z=torch.randn(B, D, L, **leaf), delta_bias=torch.randn(D, **leaf), delta_softplus=True)


def ssd_inputs(B: int, D: int, N: int, L: int, P: int, device: str) -> dict:
    """Mamba-2 shapes: x [B, L, H, P]; dt [B, L, H]; A, dt_bias, D [H]; B, C [B, L, 1, N]."""
    H = D // P
    leaf = dict(device=device, requires_grad=True)
    return dict(x=torch.randn(B, L, H, P, **leaf), dt=torch.randn(B, L, H, **leaf),
                A=(-torch.rand(H, device=device) * 15 - 1).requires_grad_(),
                B=torch.randn(B, L, 1, N, **leaf), C=torch.randn(B, L, 1, N, **leaf),
                D=torch.randn(H, **leaf), dt_bias=torch.randn(H, **leaf), chunk_size=64)


def print_row(cells: list, width: int = 15) -> None:
    print("  ".join(str(c).rjust(width if i else 6) for i, c in enumerate(cells)), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=512, help="D (Mamba-1 d_inner; Mamba-2 H * P)")
    parser.add_argument("--state", type=int, default=16, help="N")
    parser.add_argument("--head-dim", type=int, default=64, help="P for ssd")
    parser.add_argument("--lengths", default="1024,4096")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--spec-max-len", type=int, default=4096)
    parser.add_argument("--op", choices=["all", "selective_scan", "ssd"], default="all")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="on CPU: process CPU time (default) or elapsed time; CUDA: always elapsed")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clock = time.process_time if device == "cpu" and args.clock == "cpu" else time.perf_counter
    lengths = [int(x) for x in args.lengths.split(",")]
    print(f"device {device}, threads {torch.get_num_threads()}, B={args.batch} D={args.channels} "
          f"N={args.state}, fp32, {'CPU' if clock is time.process_time else 'elapsed'} time")

    def fmt(x: float) -> str:
        return "-" if x != x else f"{x:.1f}"

    def run_table(title: str, impls: dict, make) -> None:
        print(f"\n{title}")
        print_row(["L"] + [f"{n} fwd ms" for n in impls] + [f"{n} f+b ms" for n in impls])
        for L in lengths:
            res = {}
            for name, fn in impls.items():
                if name == "spec" and L > args.spec_max_len:
                    res[name] = (float("nan"), float("nan"))
                    continue
                torch.manual_seed(0)
                res[name] = measure(fn, make(L), args.repeats, device, clock)
            print_row([L] + [fmt(r[0]) for r in res.values()] + [fmt(r[1]) for r in res.values()])

    if args.op in ("all", "selective_scan"):
        from bioseq.ops.selective_scan import selective_scan_blocked, selective_scan_ref

        impls = {"spec": selective_scan_ref, "blocked": selective_scan_blocked}
        if device == "cuda":
            from bioseq.ops.selective_scan.triton import selective_scan_triton

            impls["kernel"] = selective_scan_triton
        run_table("selective_scan (softplus, delta_bias, D, z)", impls,
                  lambda L: scan_inputs(args.batch, args.channels, args.state, L, device))
    if args.op in ("all", "ssd"):
        from bioseq.ops.ssd import ssd_chunked, ssd_ref

        impls = {"spec": ssd_ref, "chunked": ssd_chunked}
        H = args.channels // args.head_dim
        run_table(f"ssd (H={H}, P={args.head_dim}, G=1, chunk 64, dt_bias, D)", impls,
                  lambda L: ssd_inputs(args.batch, args.channels, args.state, L, args.head_dim, device))


if __name__ == "__main__":
    main()
