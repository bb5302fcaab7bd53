"""CPU speed and peak memory of the HyenaDNA backbone (tiny-1k shape: d128, 2 layers), B=2.

    python benchmarks/hyena.py                                   # L = 1k, 8k, 32k
    python benchmarks/hyena.py --official /tmp/standalone_hyenadna.py --deps /tmp/bench_deps

For every length it times, each in a fresh subprocess (so that ``ru_maxrss`` is that measurement's
own high-water mark):

- ``fwd``: eval-mode forward under ``torch.no_grad`` (bioseq with the implicit-filter cache warm,
  and with the cache switched off);
- ``fwd+bwd``: train-mode forward + backward of ``mean(h**2)`` (bioseq also with per-block
  activation checkpointing when ``--checkpointing``);
- the same for the official ``standalone_hyenadna.py`` when ``--official PATH`` is given (a copy you
  fetched yourself; never commit it). Its imports that the model does not use (torchvision's
  StochasticDepth at p=0, the transformers tokenizer base class) are replaced by stand-ins; it
  needs ``einops`` (``pip install --target DIR einops`` and pass ``--deps DIR``).

Columns: best and median wall time of ``--repeats`` runs after one warm-up, the best process CPU
time (all threads; steadier than wall time on a shared machine, use ``--threads 1`` to compare
single-core work), minor page faults per call, peak RSS of the process (MB) and the peak's growth
over the RSS after building the model and inputs (MB). ``--rounds N`` runs the whole list N times,
interleaved, and keeps each row's best time (drift in machine load then hits every row alike).

Page faults: glibc serves large allocations with fresh ``mmap`` s and returns them on free, so a
forward pass can spend a third of its CPU time in the kernel zero-filling pages, and how much
depends on the process's allocation history (the dynamic mmap threshold) more than on the model.
``--malloc steady`` runs every child (both implementations) with ``MALLOC_MMAP_THRESHOLD_`` and
``MALLOC_TRIM_THRESHOLD_`` raised so that freed buffers are reused: the comparison then measures
the models' own work. ``default`` leaves the allocator alone (what a plain ``python`` gets).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY_OFFICIAL = {  # official config.json of hyenadna-tiny-1k-seqlen (l_max is set per run)
    "d_model": 128, "n_layer": 2, "d_inner": 512, "vocab_size": 12, "resid_dropout": 0.0,
    "embed_dropout": 0.1, "residual_in_fp32": True, "pad_vocab_size_multiple": 8,
    "layer": {"_name_": "hyena", "emb_dim": 5, "filter_order": 64, "local_order": 3, "l_max": 1026,
              "modulate": True, "w": 10, "lr": 6e-4, "wd": 0.0, "lr_pos_emb": 0.0},
}


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _load_official(path: str, deps: str | None):
    """Import the standalone file with stand-ins for its unused heavy imports."""
    import torch.nn as nn

    if deps:
        sys.path.insert(0, deps)
    if importlib.util.find_spec("torchvision") is None:
        class StochasticDepth(nn.Module):  # only used with p = 0 (identity) by the tiny config
            def __init__(self, p, mode):
                super().__init__()
                assert p == 0

            def forward(self, x):
                return x

        tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
        ops.StochasticDepth, tv.ops = StochasticDepth, ops
        sys.modules.update({"torchvision": tv, "torchvision.ops": ops})
    if importlib.util.find_spec("transformers") is None:
        tr, tu = types.ModuleType("transformers"), types.ModuleType("transformers.tokenization_utils")
        tu.AddedToken = type("AddedToken", (), {})
        tu.PreTrainedTokenizer = type("PreTrainedTokenizer", (), {})
        tr.tokenization_utils = tu
        sys.modules.update({"transformers": tr, "transformers.tokenization_utils": tu})
    spec = importlib.util.spec_from_file_location("official_standalone_hyenadna", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def child(impl: str, mode: str, L: int, variant: str, args) -> dict:
    import torch

    torch.manual_seed(0)
    if impl == "official":
        mod = _load_official(args.official, args.deps)
        cfg = json.loads(json.dumps(TINY_OFFICIAL))
        cfg["layer"]["l_max"] = L
        model = mod.HyenaDNAModel(**cfg, use_head=False)
    else:
        sys.path.insert(0, str(REPO))
        from bioseq.models.hyena import HyenaDNA, get_preset

        model = HyenaDNA(get_preset("hyenadna-tiny-1k", l_max=L,
                                    gradient_checkpointing=variant == "checkpointing"))
        model.enable_filter_cache(variant != "no-cache")
    ids = torch.randint(7, 11, (args.batch, L))

    if mode == "fwd":
        model.eval()

        def step():
            with torch.no_grad():
                model(ids)
    else:
        model.train()

        def step():
            out = model(ids)
            out.float().pow(2).mean().backward()
            model.zero_grad(set_to_none=True)

    setup_rss = _max_rss_mb()
    step()  # warm-up (fills the filter cache in eval mode)
    times, cpu = [], []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / args.repeats
    peak = _max_rss_mb()
    return {"best_s": min(times), "median_s": statistics.median(times), "cpu_s": min(cpu),
            "faults": faults, "peak_mb": peak, "delta_mb": peak - setup_rss}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 8192, 32768])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--official", help="path to the official standalone_hyenadna.py (kept outside the repo)")
    p.add_argument("--deps", help="extra sys.path entry for the official file's imports (einops)")
    p.add_argument("--checkpointing", action="store_true", help="also time bioseq fwd+bwd with checkpointing")
    p.add_argument("--threads", type=int, default=0, help="torch threads in each run (0 = torch default)")
    p.add_argument("--rounds", type=int, default=1, help="run the whole list this many times, interleaved")
    p.add_argument("--malloc", choices=("default", "steady"), default="default",
                   help="steady: raise glibc's mmap/trim thresholds in every child (see the docstring)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        impl, mode, L, variant = args.child.split(",")
        print(json.dumps(child(impl, mode, int(L), variant, args)))
        return 0

    runs = []
    for L in args.lengths:
        runs += [("bioseq", "fwd", L, "cache"), ("bioseq", "fwd", L, "no-cache")]
        if args.official:
            runs.append(("official", "fwd", L, "-"))
        runs.append(("bioseq", "fwd+bwd", L, "-"))
        if args.checkpointing:
            runs.append(("bioseq", "fwd+bwd", L, "checkpointing"))
        if args.official:
            runs.append(("official", "fwd+bwd", L, "-"))
    print(f"HyenaDNA tiny-1k shape (d_model 128, 2 layers), B={args.batch}, CPU, "
          f"{os.cpu_count()} cores visible, malloc {args.malloc}; per row the best of {args.rounds} "
          f"round(s) x {args.repeats} calls after 1 warm-up")
    header = f"{'L':>6} {'impl':<9} {'mode':<8} {'variant':<14} {'best s':>8} {'median s':>9} " \
             f"{'cpu s':>8} {'faults':>8} {'peak MB':>8} {'Δ MB':>8}"
    base = [sys.executable, str(Path(__file__).resolve()), "--batch", str(args.batch),
            "--repeats", str(args.repeats), "--threads", str(args.threads)]
    if args.official:
        base += ["--official", args.official] + (["--deps", args.deps] if args.deps else [])
    env = dict(os.environ)
    if args.malloc == "steady":
        env.update(MALLOC_MMAP_THRESHOLD_=str(1 << 31), MALLOC_TRIM_THRESHOLD_=str(1 << 32))
    results: dict[tuple, list[dict]] = {run: [] for run in runs}
    failed: dict[tuple, str] = {}
    for _ in range(args.rounds):
        for run in runs:
            proc = subprocess.run(base + ["--child", ",".join(map(str, run))], capture_output=True,
                                  text=True, cwd=REPO, env=env)
            if proc.returncode != 0:
                failed[run] = (proc.stderr.strip().splitlines() or ["?"])[-1]
                continue
            results[run].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(header)
    print("-" * len(header))
    for run in runs:
        impl, mode, L, variant = run
        rs = results[run]
        if not rs:
            print(f"{L:>6} {impl:<9} {mode:<8} {variant:<14} failed: {failed.get(run)}")
            continue
        best = min(rs, key=lambda r: r["cpu_s"])
        print(f"{L:>6} {impl:<9} {mode:<8} {variant:<14} {min(r['best_s'] for r in rs):>8.3f} "
              f"{statistics.median(r['median_s'] for r in rs):>9.3f} {best['cpu_s']:>8.3f} "
              f"{best['faults']:>8.0f} {statistics.median(r['peak_mb'] for r in rs):>8.0f} "
              f"{statistics.median(r['delta_mb'] for r in rs):>8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
