"""Speed and memory of the xLSTM cell ops on CPU: ``mlstm_chunkwise`` and ``slstm_scan``.

    python benchmarks/ops_xlstm.py                           # the xLSTM model's shapes, one thread
    python benchmarks/ops_xlstm.py --lengths 4096 --chunks 32 64 --repeats 5

mLSTM: B=2, NH=4, DH=64 (a d_model 128 block: inner 256, 4 heads), every input requiring grad; prints
``fwd`` and ``fwd+bwd`` milliseconds (median of ``--repeats`` after one warm-up) and the peak memory above
the inputs (``ru_maxrss`` of a fresh process per configuration, so it includes the allocator's slack).
``--autograd`` adds the plain-autograd chunkwise form for comparison. sLSTM: B=2, NH=4, DH=32 (d 128),
milliseconds per token, forward and forward + backward. The clock is the process's CPU time (one thread:
the time on an idle core, meaningful when other jobs share the machine); ``--clock wall`` for elapsed time.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import torch


def _time_ms(fn, repeats: int, clock) -> float:
    fn()
    runs = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        runs.append((clock() - t0) * 1e3)
    return statistics.median(runs)


def _mlstm_run(args: dict, queue) -> None:
    from bioseq.ops.mlstm import mlstm_chunkwise, mlstm_chunkwise_autograd

    torch.set_num_threads(args["threads"])
    clock = time.process_time if args["clock"] == "cpu" else time.perf_counter
    fn = mlstm_chunkwise_autograd if args["impl"] == "autograd" else mlstm_chunkwise
    B, NH, DH, S, chunk = 2, 4, 64, args["S"], args["chunk"]
    x = [torch.randn(B, NH, S, DH, requires_grad=True) for _ in range(3)]
    x += [torch.randn(B, NH, S, requires_grad=True), (torch.randn(B, NH, S) + 3.0).requires_grad_()]
    gy = torch.randn(B, NH, S, DH)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def fwd():
        with torch.no_grad():
            fn(*x, chunk_size=chunk)

    def fwd_bwd():
        fn(*x, chunk_size=chunk).backward(gy)
        for t in x:
            t.grad = None

    f, fb = _time_ms(fwd, args["repeats"], clock), _time_ms(fwd_bwd, args["repeats"], clock)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    queue.put((f, fb, peak))


def _slstm_ms_per_token(S: int, repeats: int, clock) -> tuple[float, float]:
    from bioseq.ops.slstm import slstm_scan

    B, NH, DH = 2, 4, 32
    wx = torch.randn(B, S, 4, NH, DH, requires_grad=True)
    R = (torch.randn(NH, DH, 4 * DH) * 0.1).requires_grad_()
    b = torch.randn(4, NH, DH, requires_grad=True)

    def fwd():
        with torch.no_grad():
            slstm_scan(wx, R, b)

    def fwd_bwd():
        slstm_scan(wx, R, b)[0].sum().backward()

    return _time_ms(fwd, repeats, clock) / S, _time_ms(fwd_bwd, repeats, clock) / S


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--chunks", type=int, nargs="+", default=[64])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    parser.add_argument("--autograd", action="store_true", help="also time the plain-autograd chunkwise form")
    parser.add_argument("--slstm-length", type=int, default=2048)
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    print(f"mLSTM B=2 NH=4 DH=64, {args.threads} thread(s), {args.clock} clock")
    print(f"{'impl':>9} {'S':>6} {'chunk':>5} {'fwd ms':>8} {'fwd+bwd ms':>11} {'peak MB':>8}")
    for S in args.lengths:
        for chunk in args.chunks:
            for impl in ["custom"] + (["autograd"] if args.autograd else []):
                queue = ctx.Queue()
                run = dict(S=S, chunk=chunk, impl=impl, threads=args.threads, clock=args.clock,
                           repeats=args.repeats)
                proc = ctx.Process(target=_mlstm_run, args=(run, queue))
                proc.start()
                f, fb, peak = queue.get()
                proc.join()
                print(f"{impl:>9} {S:>6} {chunk:>5} {f:>8.0f} {fb:>11.0f} {peak:>8.0f}")

    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    f, fb = _slstm_ms_per_token(args.slstm_length, args.repeats, clock)
    print(f"sLSTM B=2 NH=4 DH=32, S={args.slstm_length}: fwd {f:.3f} ms/token, fwd+bwd {fb:.3f} ms/token")


if __name__ == "__main__":
    main()
