"""CPU speed and peak memory of the Mamba backbones (d_model 256, 4 layers, d_state 16), B=2, one thread.

    python benchmarks/mamba.py                                  # L = 1k, 4k, 16k; Mamba-1 and Mamba-2
    python benchmarks/mamba.py --hf-python /tmp/tvenv/bin/python    # + transformers' slow path at 1k

For every (implementation, mode, L) a fresh subprocess (so that ``ru_maxrss`` is that measurement's own
high-water mark) builds the model with random weights and times:

- ``fwd``: eval-mode forward under ``torch.no_grad``;
- ``fwd+bwd``: train-mode forward + backward of ``mean(h**2)``;
- ``step``: the recurrent one-token step (``Mamba.step``), reported as ms per token for the batch
  (``--step-tokens`` tokens after a warm-up of 8).

``hf`` rows run ``transformers.MambaModel`` (same shape) on its CPU path, the per-token Python loop
of ``slow_forward``; they need an interpreter where ``transformers`` imports (``--hf-python``; by
default this one, and the rows are skipped when it cannot import transformers). Its forward+backward
takes minutes at 1k, so it runs at ``--hf-lengths`` only (default 1k) with one timed call.

Columns: best and median wall time of ``--repeats`` calls after one warm-up, the best process CPU
time (all threads; steadier than wall time on a shared machine), peak RSS of the process (MB) and its
growth over the RSS after building the model and inputs (MB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPE = dict(d_model=256, n_layer=4, d_state=16, d_conv=4, expand=2)


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _build(impl: str, variant: str):
    import torch

    torch.manual_seed(0)
    if impl == "hf":
        from transformers import MambaConfig, MambaModel

        cfg = MambaConfig(vocab_size=16, hidden_size=SHAPE["d_model"], num_hidden_layers=SHAPE["n_layer"],
                          state_size=SHAPE["d_state"], conv_kernel=SHAPE["d_conv"], expand=SHAPE["expand"],
                          use_mambapy=False)
        model = MambaModel(cfg)
        return model, lambda ids: model(ids).last_hidden_state
    sys.path.insert(0, str(REPO))
    from bioseq.models import build_backbone

    config = dict(arch="mamba", ssm_layer=variant, **SHAPE)
    if variant == "mamba2":
        config.update(headdim=64, chunk_size=256)
    model = build_backbone(config=config)
    return model, model


def child(impl: str, mode: str, L: int, variant: str, args) -> dict:
    import torch

    model, run = _build(impl, variant)
    ids = torch.randint(7, 11, (args.batch, L))
    repeats = 1 if impl == "hf" else args.repeats
    if mode == "step":
        model.eval()
        state = model.allocate_state(args.batch)
        tokens = torch.randint(7, 11, (args.step_tokens + 8, args.batch))
        setup_rss = _max_rss_mb()
        with torch.no_grad():
            for t in range(8):
                _, state = model.step(tokens[t], state)
            t0, c0 = time.perf_counter(), time.process_time()
            for t in range(8, len(tokens)):
                _, state = model.step(tokens[t], state)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = args.step_tokens
        peak = _max_rss_mb()
        return {"best_s": wall / n * 1e3, "median_s": wall / n * 1e3, "cpu_s": cpu / n * 1e3, "peak_mb": peak,
                "delta_mb": peak - setup_rss}
    if mode == "fwd":
        model.eval()

        def step():
            with torch.no_grad():
                run(ids)
    else:
        model.train()

        def step():
            run(ids).float().pow(2).mean().backward()
            model.zero_grad(set_to_none=True)

    setup_rss = _max_rss_mb()
    if impl != "hf":
        step()  # warm-up
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = _max_rss_mb()
    return {"best_s": min(times), "median_s": statistics.median(times), "cpu_s": min(cpu), "peak_mb": peak,
            "delta_mb": peak - setup_rss}


def _hf_importable(python: str) -> bool:
    proc = subprocess.run([python, "-c", "import transformers, torch"], capture_output=True)
    return proc.returncode == 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--variants", nargs="+", default=["mamba1", "mamba2"], choices=["mamba1", "mamba2"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads in each run (default 1)")
    p.add_argument("--step-tokens", type=int, default=256)
    p.add_argument("--hf-python", default=sys.executable,
                   help="interpreter that can import transformers (default: this one)")
    p.add_argument("--hf-lengths", type=int, nargs="*", default=[1024])
    p.add_argument("--hf-timeout", type=float, default=1800.0, help="seconds per transformers run")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        impl, mode, L, variant = args.child.split(",")
        print(json.dumps(child(impl, mode, int(L), variant, args)))
        return 0

    runs = []
    for L in args.lengths:
        for variant in args.variants:
            runs += [("bioseq", "fwd", L, variant), ("bioseq", "fwd+bwd", L, variant)]
    runs += [("bioseq", "step", 1, variant) for variant in args.variants]
    hf = bool(args.hf_lengths) and _hf_importable(args.hf_python)
    if hf:
        for L in args.hf_lengths:
            runs += [("hf", "fwd", L, "mamba1"), ("hf", "fwd+bwd", L, "mamba1")]
    print(f"Mamba backbones (d_model 256, 4 layers, d_state 16, expand 2), B={args.batch}, CPU, "
          f"{args.threads or 'default'} thread(s), {os.cpu_count()} cores visible; best of {args.repeats} "
          "calls after 1 warm-up (transformers: 1 call, no warm-up)"
          + ("" if hf else "; transformers not importable: its rows are skipped"))
    header = f"{'L':>6} {'impl':<7} {'variant':<7} {'mode':<8} {'best s':>9} {'median s':>9} {'cpu s':>9} " \
             f"{'peak MB':>8} {'Δ MB':>8}"
    print(header)
    print("-" * len(header), flush=True)
    script = str(Path(__file__).resolve())
    common = ["--batch", str(args.batch), "--repeats", str(args.repeats), "--threads", str(args.threads),
              "--step-tokens", str(args.step_tokens)]
    for run in runs:
        impl, mode, L, variant = run
        python = args.hf_python if impl == "hf" else sys.executable
        try:
            proc = subprocess.run([python, script, *common, "--child", ",".join(map(str, run))],
                                  capture_output=True, text=True, cwd=REPO,
                                  timeout=args.hf_timeout if impl == "hf" else None)
        except subprocess.TimeoutExpired:
            print(f"{L:>6} {impl:<7} {variant:<7} {mode:<8} timed out after {args.hf_timeout:.0f} s",
                  flush=True)
            continue
        if proc.returncode != 0:
            print(f"{L:>6} {impl:<7} {variant:<7} {mode:<8} failed: "
                  f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        if mode == "step":
            print(f"{'-':>6} {impl:<7} {variant:<7} {'step':<8} {r['best_s']:>6.2f} ms/token (cpu "
                  f"{r['cpu_s']:.2f} ms), peak {r['peak_mb']:.0f} MB", flush=True)
            continue
        print(f"{L:>6} {impl:<7} {variant:<7} {mode:<8} {r['best_s']:>9.3f} {r['median_s']:>9.3f} "
              f"{r['cpu_s']:>9.3f} {r['peak_mb']:>8.0f} {r['delta_mb']:>8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
