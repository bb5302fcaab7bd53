"""``bioseq demo``: pretrain a tiny HyenaDNA on the bundled synthetic genome, on CPU, in minutes.

Steps (each printed as it runs):

1. generate the deterministic synthetic genome and toy task (``bioseq.synthetic``) into ``OUT/data``
   (skipped when already there for the same seed);
2. score the held-out genome with order-0 and order-3 Markov baselines (the background is an order-3
   chain, so order 3 is close to the best a model without repeat memory can do);
3. build HyenaDNA-tiny (d_model 128, 2 layers, 436k parameters) and measure validation perplexity
   before training;
4. train it (causal LM, AdamW + cosine) for ``--steps`` steps or ``--minutes`` minutes, whichever
   comes first, with a progress bar;
5. measure validation perplexity after training and export the model to ``OUT/model``
   (``config.json``, ``model.safetensors``, ``tokenizer.json``), loadable by ``models.load_backbone``.

Later steps (finetuning on ``OUT/data/motif_*.tsv``, embedding) build on these files.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

HELP = "Pretrain a tiny HyenaDNA on the bundled synthetic genome (CPU, minutes)."


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bioseq demo", description=HELP)
    ap.add_argument("--out", default="bioseq-demo", help="output directory (default: ./bioseq-demo)")
    ap.add_argument("--steps", type=int, default=250, help="maximum training steps (default: 250)")
    ap.add_argument("--minutes", type=float, default=2.5,
                    help="training time limit in minutes; training stops at whichever limit comes first "
                         "(default: 2.5)")
    ap.add_argument("--max-length", type=int, default=512, help="tokens per training window (default: 512)")
    ap.add_argument("--batch-size", type=int, default=8, help="windows per step (default: 8)")
    ap.add_argument("--eval-windows", type=int, default=48,
                    help="held-out windows scored for perplexity (default: 48)")
    ap.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default: 3e-3)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the genome and of training (default: 0)")
    ap.add_argument("--genome-scale", type=float, default=1.0,
                    help="multiply the synthetic chromosome lengths (default 1.0 = 3 Mb)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (default 0 = auto: all cores, or 1 when the machine is already "
                         "busy, where extra threads mostly spin-wait)")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return ap.parse_args(argv)


def _quiet() -> None:
    """Keep the demo's output to its own lines and the progress bar (call after importing lightning,
    which sets its loggers to INFO on import)."""
    import lightning  # noqa: F401

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning_utilities"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*IterableDataset.*")
    warnings.filterwarnings("ignore", message=".*treespec.*")


def auto_threads() -> int:
    """All cores on an idle machine; 1 when the 1-minute load average says the cores are taken
    (OpenMP threads of a CPU-bound step then wait on each other for whole scheduler slices)."""
    import os

    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0] >= cores - 0.5
    except OSError:
        busy = False
    return 1 if busy else cores


def step_data(out: Path, args) -> tuple:
    import dataclasses

    from bioseq import synthetic

    base = synthetic.SyntheticConfig(seed=args.seed)
    config = dataclasses.replace(base, chromosomes=tuple(
        (name, max(50_000, int(n * args.genome_scale))) for name, n in base.chromosomes))
    stamp = out / "data" / "synthetic.json"
    described = json.dumps(dataclasses.asdict(config), sort_keys=True)
    start = time.perf_counter()
    if stamp.is_file() and stamp.read_text() == described and (out / "data" / "genome.fa").is_file():
        files = synthetic.SyntheticFiles(*(out / "data" / name for name in (
            "genome.fa", "splits.bed", "features.bed", "motif_train.tsv", "motif_test.tsv")))
        how = "reused"
    else:
        files = synthetic.write_synthetic(out / "data", config)
        stamp.write_text(described)
        how = "generated"
    total = sum(n for _, n in config.chromosomes)
    print(f"[1/5] synthetic genome {how}: {total / 1e6:.1f} Mb in {len(config.chromosomes)} chromosomes, "
          f"{time.perf_counter() - start:.1f} s -> {files.fasta}")
    print(f"      splits {files.splits_bed.name}, planted features {files.features_bed.name}, "
          f"toy task {files.task_train.name}/{files.task_test.name}")
    return config, files


def step_baselines(config, files) -> dict[int, float]:
    from bioseq import synthetic
    from bioseq.fasta import read_fasta

    train, held = [], []
    for rec in read_fasta(files.fasta):
        codes = synthetic.acgt_codes(rec.seq)
        cut = int(len(codes) * (1 - config.holdout_fraction))
        cut_val = cut + (len(codes) - cut) // 2
        train.append(codes[:cut])
        held.append(codes[cut:cut_val])
    import numpy as np

    train_codes = np.concatenate(train)
    base = {k: float(np.mean([synthetic.markov_perplexity(train_codes, h, k) for h in held])) for k in (0, 3)}
    print(f"[2/5] Markov baselines on the validation region: order 0 ppl {base[0]:.3f}, "
          f"order 3 ppl {base[3]:.3f} (uniform 4.0)")
    return base


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config, files = step_data(out, args)
    baselines = step_baselines(config, files)

    import lightning as L
    import torch

    _quiet()
    from bioseq.datamodules.genome import GenomeDataModule
    from bioseq.models.lm import LanguageModel

    torch.set_num_threads(args.threads or auto_threads())
    L.seed_everything(args.seed, verbose=False)
    half = config.holdout_fraction / 2
    data = GenomeDataModule(fasta=str(files.fasta), max_length=args.max_length, batch_size=args.batch_size,
                            val_fraction=half, test_fraction=half, add_eos=True,
                            max_eval_windows=args.eval_windows, seed=args.seed)
    model = LanguageModel(preset="hyenadna-tiny-1k", lr=args.lr, weight_decay=0.1, warmup_steps=20,
                          total_steps=args.steps, min_lr_ratio=0.1, step_seed=args.seed)
    n_params = sum(p.numel() for p in model.parameters())

    def trainer(**kw):
        return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, default_root_dir=out / "logs", **kw)

    evaluator = trainer(enable_progress_bar=False)
    before = evaluator.validate(model, datamodule=data, verbose=False)[0]
    print(f"[3/5] HyenaDNA-tiny ({n_params:,} parameters, d_model 128, 2 layers): validation perplexity "
          f"before training {before['val/ppl']:.3f} ({int(before['val/tokens']):,} tokens)")

    print(f"[4/5] training: {args.steps} steps x {args.batch_size} windows x {args.max_length} tokens, "
          f"at most {args.minutes:g} min, {torch.get_num_threads()} CPU thread(s)")
    start = time.perf_counter()
    fit = trainer(max_steps=args.steps, max_time={"seconds": int(args.minutes * 60)}, gradient_clip_val=1.0,
                  limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=not args.no_progress,
                  log_every_n_steps=10)
    fit.fit(model, datamodule=data)
    seconds = time.perf_counter() - start
    steps = fit.global_step
    tokens = steps * args.batch_size * args.max_length

    after = evaluator.validate(model, datamodule=data, verbose=False)[0]
    model.export(out / "model")
    print(f"[5/5] validation perplexity after {steps} steps: {after['val/ppl']:.3f}; "
          f"model exported to {out / 'model'}")

    summary = {
        "genome": str(files.fasta), "steps": steps, "tokens": tokens, "train_seconds": round(seconds, 1),
        "tokens_per_second": round(tokens / max(seconds, 1e-9)), "val_ppl_before": before["val/ppl"],
        "val_ppl_after": after["val/ppl"], "markov_order0_ppl": baselines[0],
        "markov_order3_ppl": baselines[3], "model": str(out / "model"),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print()
    print("bioseq demo summary")
    print(f"  data          {files.fasta.parent}/ (genome.fa, splits.bed, features.bed, motif_*.tsv)")
    print(f"  training      {steps} steps, {tokens / 1e6:.2f} M tokens in {seconds:.0f} s "
          f"({summary['tokens_per_second']:,} tokens/s)")
    print(f"  val ppl       {before['val/ppl']:.3f} -> {after['val/ppl']:.3f}   "
          f"(Markov order 0: {baselines[0]:.3f}, order 3: {baselines[3]:.3f})")
    print(f"  model         {out / 'model'} (load with models.load_backbone)")
    print(f"  total time    {summary['total_seconds']:.0f} s")
    return 0
