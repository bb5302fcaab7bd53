"""Held-out perplexity of HyenaDNA-tiny pretrained on E. coli K-12 for a fixed CPU time budget.

Runs ``bioseq pretrain fit --config configs/pretrain/hyenadna-tiny-hg38.yaml --data.fasta <E. coli>``
(the paper's recipe with CPU-sized overrides: batch 4 x 1,024 tokens, lr 3e-3 with a 500-step cosine,
fp32, one thread, a CPU-time budget and a wall-clock cap),
holding out the last 10% of the chromosome for validation. Prints

* the order-0/2/6 Markov baselines fit on the same training 90% and scored on the held-out 10%
  (reference: order-6 3.82, order-2 3.90, uniform 4.0),
* the validation curve (``val/ppl`` vs step, on ``--eval-windows`` evenly spaced held-out windows),
* the final per-base perplexity of the trained model over the WHOLE held-out 10% (1,024-base tiles,
  every base after the first of a tile scored, no EOS), directly comparable to the Markov numbers.

    python -m benchmarks.pretrain_ecoli                          # 10 CPU-minutes of training
    python -m benchmarks.pretrain_ecoli --cpu-minutes 1 --steps 20   # smoke run

The budget is CPU time of this process (``--cpu-minutes``; a wall-clock cap is ``--minutes``): on a
shared machine the wall clock measures the neighbours. Run it with ``python -m`` from the repository
root (the module path is also how the CLI finds the ``CpuBudget`` callback).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[1]
ECOLI = REPO.parent / "shared" / "data" / "genome" / "ecoli_k12_mg1655_GCF_000005845.2.fna.gz"


def read_genome(path: Path) -> str:
    from bioseq.fasta import read_fasta

    return "".join(rec.seq for rec in read_fasta(path))


def markov_baselines(seq: str, holdout: float = 0.1, orders=(0, 2, 6)) -> dict[int, float]:
    from bioseq.synthetic import acgt_codes, markov_perplexity

    codes = acgt_codes(seq)
    cut = int(len(codes) * (1 - holdout))
    return {k: markov_perplexity(codes[:cut], codes[cut:], k) for k in orders}


@torch.no_grad()
def heldout_perplexity(model, seq: str, holdout: float = 0.1, window: int = 1024, batch: int = 16) -> float:
    """Per-base perplexity of a LanguageModel over the held-out tail, tiled in ``window``-base pieces."""
    from bioseq.tokenizers import DnaTokenizer

    tok = DnaTokenizer()
    held = seq[int(len(seq) * (1 - holdout)):]
    tiles = [held[i: i + window] for i in range(0, len(held), window)]
    total, count = 0.0, 0
    model.eval()
    for i in range(0, len(tiles), batch):
        enc = tok.batch_encode(tiles[i: i + batch])
        s, c = model.token_losses({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
        total, count = total + s.item(), count + int(c)
    return math.exp(total / count)


class CpuBudget(Callback):
    """Stop training once this process has used ``minutes`` of CPU time (user + system, all threads).

    On a shared machine a wall-clock budget measures the neighbours; CPU time measures the work done.
    """

    def __init__(self, minutes: float = 10.0):
        self.limit = minutes * 60.0
        self.start: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.start is not None and time.process_time() - self.start >= self.limit:
            trainer.should_stop = True


def read_curve(log_dir: Path) -> list[tuple[int, float]]:
    rows = []
    for path in sorted(log_dir.rglob("metrics.csv")):
        with open(path) as fh:
            for row in csv.DictReader(fh):
                if row.get("val/ppl"):
                    rows.append((int(row["step"]), float(row["val/ppl"])))
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fasta", default=str(ECOLI))
    ap.add_argument("--cpu-minutes", type=float, default=10.0,
                    help="training budget in CPU minutes of this process (robust to a loaded machine)")
    ap.add_argument("--minutes", type=float, default=60.0, help="wall-clock cap on training")
    ap.add_argument("--steps", type=int, default=500, help="schedule length / step cap")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--val-every", type=int, default=100)
    ap.add_argument("--eval-windows", type=int, default=96)
    ap.add_argument("--out", default="runs/pretrain_ecoli")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine extra threads mostly spin; "
                         "0 = torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    seq = read_genome(Path(args.fasta))
    baselines = markov_baselines(seq)
    print("Markov baselines on the held-out 10%: " +
          ", ".join(f"order {k}: {v:.4f}" for k, v in baselines.items()), flush=True)

    from bioseq.commands.pretrain import build_cli

    minutes = int(args.minutes)
    seconds = int(round((args.minutes - minutes) * 60))
    cli_args = [
        "fit", "--config", str(REPO / "configs/pretrain/hyenadna-tiny-hg38.yaml"),
        "--data.fasta", args.fasta, "--data.val_fraction", "0.1", "--data.batch_size", str(args.batch_size),
        "--data.num_workers", "0", "--data.max_eval_windows", str(args.eval_windows),
        "--model.lr", str(args.lr), "--model.total_steps", str(args.steps), "--model.warmup_steps", "30",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
        "--trainer.max_steps", str(args.steps), "--trainer.max_time", f"00:00:{minutes:02d}:{seconds:02d}",
        "--trainer.val_check_interval", str(args.val_every), "--trainer.check_val_every_n_epoch", "null",
        "--trainer.log_every_n_steps", "10", "--trainer.default_root_dir", str(out),
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(out),
        "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks+=benchmarks.pretrain_ecoli.CpuBudget",
        "--trainer.callbacks.minutes", str(args.cpu_minutes),
    ]
    print("bioseq pretrain " + " ".join(cli_args), flush=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    cli = build_cli(cli_args)
    train_s, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    model = cli.model
    steps = cli.trainer.global_step
    curve = read_curve(out)
    final = heldout_perplexity(model, seq)
    tokens = steps * args.batch_size * 1024 / 1e6
    print(f"\ntrained {steps} steps ({tokens:.2f} M tokens) in {train_s / 60:.1f} min wall, "
          f"{cpu_s / 60:.1f} min CPU ({torch.get_num_threads()} threads)")
    print("step  val/ppl (eval windows)")
    for step, ppl in curve:
        print(f"{step:5d}  {ppl:.4f}")
    print(f"held-out per-base perplexity (all {len(seq) - int(len(seq) * 0.9):,} bases): {final:.4f}")
    print(f"order-2 Markov {baselines[2]:.4f}, order-6 Markov {baselines[6]:.4f}, uniform 4.0")
    verdict = "BEATS" if final < baselines[2] else "does NOT beat"
    print(f"HyenaDNA-tiny {verdict} the order-2 Markov baseline")
    result = {"steps": steps, "train_minutes": train_s / 60, "cpu_minutes": cpu_s / 60, "curve": curve,
              "heldout_ppl": final, "markov": baselines}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
