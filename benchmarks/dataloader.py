"""Streaming benchmark for GenomeDataModule: windows/s, MB/s per worker, and memory vs genome size.

    python benchmarks/dataloader.py                 # 20 Mb and 200 Mb plain FASTA, 20 Mb BGZF
    python benchmarks/dataloader.py --sizes 20 --no-model

What it does:

1. Writes synthetic genomes into a temporary directory: FASTA with 80-column lines, 10 Mb/20 Mb
   chromosomes, uniform random ACGT with soft-masked (lower-case) stretches and N gaps (about 0.2%
   N), of ``--sizes`` megabases (default 20 and 200), plus a BGZF copy of the smallest.
2. For every genome and window length (``--lengths``, default 1024 and 32768) it runs a fresh child
   process that imports everything, records its RSS baseline (``ru_maxrss`` after imports), builds
   the DataModule (index + N map: the "setup" seconds), then streams ``--tokens`` tokens of training
   windows (random phase and order, RC augmentation 0.5, batch 8) through a DataLoader with one
   worker. Reported: windows/s and MB/s (tokens/s / 1e6) of that one worker, measured from the first
   batch to the last (so worker start-up is excluded), and peak RSS above the baseline of the main
   process (``ru_maxrss`` minus the RSS after imports) and of the worker (``VmHWM`` from /proc minus
   its RSS when it started).
3. Measures how fast tiny HyenaDNA (hyenadna-tiny-1k, L=1024, B=8) trains on this CPU (forward +
   backward + AdamW, tied LM head) and prints the ratio worker tokens/s : model tokens/s.

Acceptance (issue 4): RSS does not grow with genome size and stays under 500 MB above the interpreter;
one worker delivers >= 10x the tokens/s that training consumes. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def write_genome(path: Path, megabases: int, chrom_mb: int = 20, seed: int = 0) -> None:
    """Random FASTA: ``megabases`` Mb in chromosomes of ``chrom_mb`` Mb, 80-column lines."""
    rng = np.random.default_rng(seed)
    upper = np.frombuffer(b"ACGT", dtype=np.uint8)
    lower = np.frombuffer(b"acgt", dtype=np.uint8)
    chrom_mb = min(chrom_mb, megabases)
    with open(path, "wb") as fh:
        for c in range(-(-megabases // chrom_mb)):
            n = min(chrom_mb, megabases - c * chrom_mb) * 1_000_000
            fh.write(f">chr{c + 1} synthetic\n".encode())
            for a in range(0, n, 8_000_000):  # 8 Mb chunks (a multiple of 80): bounded memory
                m = min(8_000_000, n - a)
                codes = rng.integers(0, 4, m)
                seq = upper[codes]
                for s in rng.integers(0, m, 8):  # soft-masked repeats
                    seq[s : s + 20_000] = lower[codes[s : s + 20_000]]
                for s in rng.integers(0, m, 2):  # assembly gaps
                    seq[s : s + 8_000] = ord("N")
                rows = -(-m // 80)
                buf = np.full((rows, 81), ord("\n"), dtype=np.uint8)
                flat = np.zeros(rows * 80, dtype=np.uint8)
                flat[:m] = seq
                buf[:, :80] = flat.reshape(rows, 80)
                data = buf.tobytes()
                if m % 80:  # the last line of the record is short
                    data = data[: -(81 - m % 80) - 1] + b"\n"
                fh.write(data)


def write_bgzf(src: Path, dst: Path) -> None:
    from Bio import bgzf

    with open(src, "rb") as fi, bgzf.BgzfWriter(str(dst), "wb") as fo:
        while chunk := fi.read(1 << 22):
            fo.write(chunk)


def rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux: KiB


def _status_mb(pid: int | str, field: str) -> float:
    """``VmRSS``/``VmHWM`` of a process from /proc, in MB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


_WORKER_START = None  # multiprocessing.Value set in the child; inherited by the forked worker


def _record_worker_start(worker_id: int) -> None:
    _WORKER_START.value = _status_mb("self", "VmRSS")


def child(args) -> None:
    """One measurement in a fresh process; prints a JSON line."""
    global _WORKER_START
    import multiprocessing

    import torch
    from torch.utils.data import DataLoader

    import bioseq.datamodules.genome as genome
    from bioseq.datamodules.collate import LMCollator

    torch.set_num_threads(1)
    _WORKER_START = multiprocessing.Value("d", 0.0)
    base = rss_mb()
    t0 = time.perf_counter()
    dm = genome.GenomeDataModule(
        args.fasta,
        max_length=args.max_length,
        batch_size=args.batch_size,
        rc_prob=0.5,
        num_workers=args.workers,
        max_n_fraction=0.1,
    )
    dm.prepare_data()
    t_index = time.perf_counter() - t0
    dm.setup("fit")
    ds = dm.dataset("train")
    setup_s = time.perf_counter() - t0
    loader = DataLoader(
        ds,
        batch_size=args.batch_size,
        num_workers=args.workers,
        collate_fn=LMCollator(),
        worker_init_fn=_record_worker_start if args.workers else None,
    )
    n_batches = max(3, args.tokens // (args.max_length * args.batch_size))
    it = iter(loader)
    next(it)
    t1 = time.perf_counter()
    windows = tokens = 0
    for _ in range(n_batches):
        batch = next(it)
        windows += batch["input_ids"].shape[0]
        tokens += int(batch["attention_mask"].sum())
    dt = time.perf_counter() - t1
    worker_peak = 0.0
    if args.workers:
        worker_peak = max(_status_mb(w.pid, "VmHWM") for w in it._workers) - _WORKER_START.value
    print(
        json.dumps(
            {
                "fasta": Path(args.fasta).name,
                "L": args.max_length,
                "setup_s": setup_s,
                "index_s": t_index,
                "windows_s": windows / dt,
                "MB_s": tokens / dt / 1e6,
                "tokens_s": tokens / dt,
                "rss_main": rss_mb() - base,
                "rss_worker": worker_peak,
                "base": base,
                "batches": n_batches,
                "train_windows_per_epoch": len(ds),
            }
        )
    )


def model_tokens_per_s(batch: int = 8, length: int = 1024, steps: int = 4, threads: int = 2) -> float | None:
    """Tokens/s of hyenadna-tiny-1k training (fwd + bwd + AdamW, tied head) on this CPU."""
    try:
        from bioseq.models.hyena import PRESETS, HyenaDNA
    except ImportError:
        return None
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = HyenaDNA(PRESETS["hyenadna-tiny-1k"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(7, 11, (batch, length))

    def step():
        hidden = model(ids)
        logits = hidden[:, :-1] @ model.embed_tokens.weight.T
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * length / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 200], help="genome sizes in Mb")
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 32768])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=8_000_000, help="tokens streamed per measurement")
    parser.add_argument("--no-bgzf", action="store_true")
    parser.add_argument("--no-model", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fasta", help=argparse.SUPPRESS)
    parser.add_argument("--max-length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    with tempfile.TemporaryDirectory(prefix="bioseq-bench-") as tmp:
        env["BIOSEQ_CACHE"] = str(Path(tmp) / "cache")
        files = []
        for mb in sorted(args.sizes):
            path = Path(tmp) / f"genome_{mb}Mb.fa"
            t = time.perf_counter()
            write_genome(path, mb)
            print(
                f"wrote {path.name}: {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t:.1f} s",
                flush=True,
            )
            files.append(path)
        if not args.no_bgzf:
            path = Path(tmp) / f"genome_{min(args.sizes)}Mb.fa.gz"
            t = time.perf_counter()
            write_bgzf(files[0], path)
            print(
                f"wrote {path.name} (BGZF): {path.stat().st_size / 1e6:.0f} MB "
                f"in {time.perf_counter() - t:.1f} s",
                flush=True,
            )
            files.append(path)
        rows = []
        for path in files:
            for length in args.lengths:
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    "--fasta",
                    str(path),
                    "--max-length",
                    str(length),
                    "--batch-size",
                    str(args.batch_size),
                    "--workers",
                    str(args.workers),
                    "--tokens",
                    str(args.tokens),
                ]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if out.returncode:
                    print(out.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"child failed for {path.name} L={length}")
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(
                    f"  {r['fasta']:>22} L={r['L']:>6}: {r['windows_s']:9.1f} windows/s "
                    f"{r['MB_s']:7.2f} MB/s  "
                    f"setup {r['setup_s']:5.1f} s (index {r['index_s']:.1f})  "
                    f"RSS main +{r['rss_main']:.0f} MB worker +{r['rss_worker']:.0f} MB",
                    flush=True,
                )

    print(
        "\n| FASTA | L | windows/s (1 worker) | MB/s per worker | setup s (index + N map) "
        "| peak RSS main (MB above interpreter) | peak RSS worker (MB above its start) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['fasta']} | {r['L']} | {r['windows_s']:.0f} | {r['MB_s']:.2f} | {r['setup_s']:.1f} | "
            f"{r['rss_main']:.0f} | {r['rss_worker']:.0f} |"
        )
    print(f"interpreter baseline (python + torch + lightning + bioseq imported): {rows[0]['base']:.0f} MB")
    worst = max(max(r["rss_main"], r["rss_worker"]) for r in rows)
    print(
        f"largest RSS above the interpreter: {worst:.0f} MB (limit 500 MB): {'OK' if worst < 500 else 'FAIL'}"
    )
    for length in args.lengths:
        by_size = [r for r in rows if r["L"] == length and not r["fasta"].endswith(".gz")]
        if len(by_size) > 1:
            small, big = by_size[0], by_size[-1]
            print(
                f"L={length}: RSS {small['fasta']} +{max(small['rss_main'], small['rss_worker']):.0f} MB vs "
                f"{big['fasta']} +{max(big['rss_main'], big['rss_worker']):.0f} MB"
            )

    if args.no_model:
        return
    model_tps = model_tokens_per_s(batch=args.batch_size)
    ref = [r for r in rows if r["L"] == 1024 and not r["fasta"].endswith(".gz")]
    if model_tps is None:
        print("models.hyena is not importable: model consumption not measured")
        return
    worker_tps = min(r["tokens_s"] for r in ref) if ref else rows[0]["tokens_s"]
    ratio = worker_tps / model_tps
    print(
        f"hyenadna-tiny-1k training on CPU (L=1024, B={args.batch_size}, 2 threads): "
        f"{model_tps:,.0f} tokens/s; one data worker: {worker_tps:,.0f} tokens/s -> {ratio:.0f}x "
        f"({'OK' if ratio >= 10 else 'FAIL'}, need >= 10x)"
    )


if __name__ == "__main__":
    main()
