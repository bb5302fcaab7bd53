"""Benchmarks of ``bioseq embed`` (CPU by default). Prints markdown tables.

    python benchmarks/embed.py proteins     # 4,298 E. coli proteins: batched engine vs one-at-a-time loop
    python benchmarks/embed.py chromosome   # whole E. coli chromosome (4.6 Mb), --long chunk: time, peak RSS
    python benchmarks/embed.py stream -m mamba-tiny   # whole chromosome, --long stream vs 16k windows
    python benchmarks/embed.py all

``proteins``: a tiny HyenaDNA preset with ``alphabet=protein`` and random weights (d_model 128,
2 layers; ``l_max`` raised to 4098 so every protein, up to 2,358 aa, fits one forward pass and the
two methods compute the same thing). The engine run includes its validation pass and writing the
HDF5 file; the loop only tokenizes, runs the model on [1, L] and mean-pools. Both in the same
process, same thread count. Also reports the largest difference between the two results.

``chromosome``: runs ``bioseq embed -m hyenadna-tiny-1k <E. coli .fna.gz> --long chunk`` in a
subprocess and reports wall time and the child's peak resident set size (``ru_maxrss``).

``stream``: for a recurrent model (``-m``, default ``mamba-tiny``), embeds the whole chromosome twice in
one run, each as its own ``bioseq embed`` subprocess with the same thread count: ``--long stream`` (one
exact pass: 4,096-token blocks through ``forward(..., state=)``) and the plain forward on independent
16,384-token windows (``--long chunk --max-length 16384 --overlap 0``). Reports wall and CPU seconds, bp/s
and each child's peak RSS (``wait4``), and the throughput ratio.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIOSEQ_SHARED", REPO.parent / "shared"))
PROTEOME = SHARED / "data" / "protein" / "ecoli_k12_proteome_GCF_000005845.2.faa.gz"
GENOME = SHARED / "data" / "genome" / "ecoli_k12_mg1655_GCF_000005845.2.fna.gz"


def bench_proteins(limit: int | None, batch_tokens: int, device: str = "cpu") -> dict:
    import numpy as np
    import torch

    from bioseq import models
    from bioseq.embed import EmbedOptions, embed_to_file, iter_fasta, read_embeddings
    from bioseq.tokenizers import get_tokenizer

    tok = get_tokenizer("protein")
    torch.manual_seed(0)
    model = models.build_backbone(preset="hyenadna-tiny-1k", alphabet="protein", vocab_size=tok.vocab_size,
                                  l_max=4098).eval().to(device)
    records = list(iter_fasta([PROTEOME]))[:limit]
    n_res = sum(len(r.seq) for r in records)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "p.h5"
        t0, c0 = time.perf_counter(), time.process_time()
        embed_to_file(lambda: iter(records), out, model, tok,
                      EmbedOptions(batch_tokens=batch_tokens, device=device), progress=False)
        t_batched, c_batched = time.perf_counter() - t0, time.process_time() - c0
        batched = read_embeddings(out)["mean"]
    loop = np.zeros_like(batched)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for i, rec in enumerate(records):
            ids = torch.from_numpy(tok.encode(rec.seq, record=rec.id))[None].to(device)
            loop[i] = model(ids)[0].mean(0).float().cpu().numpy()
    t_loop, c_loop = time.perf_counter() - t0, time.process_time() - c0
    diff = float(np.abs(batched - loop).max())
    rows = [("one-at-a-time loop", t_loop, c_loop),
            (f"bioseq embed engine (batch_tokens={batch_tokens})", t_batched, c_batched)]
    print(f"\n### {len(records)} E. coli proteins ({n_res:,} residues), tiny Hyena (protein, random), "
          f"device={device}, CPU threads={torch.get_num_threads()}, load avg {os.getloadavg()[0]:.1f}\n")
    print("| method | wall s | sequences/s | residues/s | speedup (wall) | process CPU s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t, c in rows:
        print(f"| {name} | {t:.1f} | {len(records) / t:.1f} | {n_res / t:,.0f} | {t_loop / t:.2f}x "
              f"| {c:.1f} |")
    print(f"\nmax |batched - loop| over /mean: {diff:.2e}")
    return {"n": len(records), "t_loop": t_loop, "t_batched": t_batched, "speedup": t_loop / t_batched,
            "cpu_loop": c_loop, "cpu_batched": c_batched, "max_diff": diff}


def bench_chromosome(extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ecoli.h5"
        cmd = [sys.executable, "-m", "bioseq.cli", "embed", "-m", "hyenadna-tiny-1k", str(GENOME),
               "-o", str(out),
               "--long", "chunk", "-q", *extra]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True)
        wall = time.perf_counter() - t0
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        from bioseq.embed import read_embeddings

        r = read_embeddings(out)
    print("\n### E. coli K-12 chromosome, hyenadna-tiny-1k (random weights), --long chunk, mean pooling\n")
    print("| records | length (bp) | windows of | overlap | wall (s) | bp/s | peak RSS (MB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    m = r["metadata"]
    print(f"| {len(r['ids'])} | {int(r['lengths'][0]):,} | {m['max_length']} | {m['overlap']} | {wall:.1f} "
          f"| {int(r['lengths'][0]) / wall:,.0f} | {rss_mb:,.0f} |")
    return {"wall": wall, "rss_mb": rss_mb, "length": int(r["lengths"][0])}


def _timed_child(cmd: list[str]) -> dict:
    """Run ``cmd`` from the repository root; wall s, CPU s (user + system) and peak RSS (MB) of that child."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmarks/embed.py: {' '.join(cmd)} failed")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024}


def bench_stream(model: str, threads: int) -> dict:
    """Whole chromosome: ``--long stream`` vs plain forward on 16k windows, same model and threads."""
    import numpy as np

    from bioseq.embed import read_embeddings

    runs = {"--long stream (4,096-token blocks with state)": ["--long", "stream"],
            "plain forward, 16,384-token windows": ["--long", "chunk", "--max-length", "16384",
                                                    "--overlap", "0"]}
    rows, means = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, flags) in enumerate(runs.items()):
            out = Path(tmp) / f"{i}.h5"
            cmd = [sys.executable, "-m", "bioseq.cli", "embed", "-m", model, str(GENOME), "-o", str(out),
                   "-q", "--threads", str(threads), *flags]
            rows[name] = _timed_child(cmd)
            r = read_embeddings(out)
            rows[name]["length"] = int(r["lengths"][0])
            means[name] = np.asarray(r["mean"][0])
    (a, ra), (b, rb) = rows.items()
    print(f"\n### E. coli K-12 chromosome, {model} (random weights), {threads} thread(s), mean pooling, "
          f"load avg {os.getloadavg()[0]:.1f}\n")
    print("| method | length (bp) | wall s | CPU s | bp/s (wall) | bp/CPU s | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        bp = r["length"]
        print(f"| {name} | {bp:,} | {r['wall']:.1f} | {r['cpu']:.1f} | {bp / r['wall']:,.0f} "
              f"| {bp / r['cpu']:,.0f} | {r['rss_mb']:,.0f} |")
    ratio_wall, ratio_cpu = ra["wall"] / rb["wall"], ra["cpu"] / rb["cpu"]
    diff = float(np.abs(means[a] - means[b]).max())
    print(f"\nstream / windows time: {ratio_wall:.2f}x wall, {ratio_cpu:.2f}x CPU; "
          f"max |mean_stream - mean_windows| {diff:.2e} (windows cut the context; stream is exact)")
    return {"rows": rows, "ratio_wall": ratio_wall, "ratio_cpu": ratio_cpu}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("proteins", "chromosome", "stream", "all"))
    p.add_argument("-m", "--model", default="mamba-tiny", help="stream: recurrent model")
    p.add_argument("--limit", type=int, default=None, help="proteins: only the first N")
    p.add_argument("--batch-tokens", type=int, default=16384)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="proteins: cpu or cuda")
    p.add_argument("extra", nargs="*", help="chromosome: extra `bioseq embed` arguments (after --)")
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.what in ("proteins", "all"):
        bench_proteins(args.limit, args.batch_tokens, args.device)
    if args.what in ("chromosome", "all"):
        extra = list(args.extra) + (["--threads", str(args.threads)] if args.threads else [])
        bench_chromosome(extra)
    if args.what in ("stream", "all"):
        bench_stream(args.model, args.threads or 1)


if __name__ == "__main__":
    main()
