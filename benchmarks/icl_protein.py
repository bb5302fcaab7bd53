"""DHFR homolog-context curve: a tiny protein HyenaDNA trained briefly in homolog-context mode on CPU.

Data: ``../shared/data/protein/DHFR_ecoli_homologs_plmc.a2m.gz`` (one Pfam family, 3,629 aligned rows).
The protein DataModule (``datamodules/protein.py``, homolog-context mode) splits the rows by a seeded hash
of their ids (validation 5%, test 5%, seed 0) and builds training examples ``[CLS] h_1 [SEP] ... target
[SEP]`` from training members only (gaps removed, insert states kept). A d64 n2 HyenaDNA-style model
(protein vocabulary) is trained as a causal LM on them for ``--minutes`` or ``--tokens`` predicted
tokens (AdamW lr 1e-3, weight decay 0.1 on matrices, 25 warm-up steps then a cosine to 0.1 x lr over
the budget, gradient clip 1), saved, and
``bioseq icl homology`` measures the perplexity of held-out (test-split) targets given 0, 1, 4, 16, 64 of
their closest training homologs, ordered least to most similar.

    python benchmarks/icl_protein.py --minutes 6 --targets 16
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("BIOSEQ_SHARED", REPO.parent / "shared"))
ALIGNMENT = SHARED / "data" / "protein" / "DHFR_ecoli_homologs_plmc.a2m.gz"


def train(a, out: Path) -> dict:
    import torch
    import torch.nn.functional as F

    from bioseq.datamodules.protein import ProteinDataModule
    from bioseq.models import build_backbone
    from bioseq.models.optim import build_optimizer

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dm = ProteinDataModule(alignment=str(a.alignment), max_length=a.max_length, batch_size=a.batch_size,
                           val_fraction=0.05, test_fraction=0.05, split_seed=0, seed=0)
    dm.setup("fit")
    tok = dm.tokenizer
    backbone = build_backbone("hyena", d_model=a.d_model, n_layer=a.n_layer, d_inner=2 * a.d_model,
                              l_max=a.l_max, alphabet="protein", vocab_size=tok.vocab_size, filter_order=32)
    V = tok.vocab_size
    opt, _ = build_optimizer(backbone, lr=a.lr, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-8)
    backbone.train()
    t0, steps, tokens, losses = time.time(), 0, 0, []
    stopped = None
    while stopped is None:
        for batch in dm.train_dataloader():
            if time.time() - t0 >= a.minutes * 60 or (a.tokens and tokens >= a.tokens):
                stopped = "time" if time.time() - t0 >= a.minutes * 60 else "tokens"
                break
            # warm-up over 25 steps, cosine to 0.1 x lr over the time (or token) budget
            frac = max((time.time() - t0) / (a.minutes * 60), tokens / a.tokens if a.tokens else 0.0)
            for g in opt.param_groups:
                g["lr"] = a.lr * min(1.0, (steps + 1) / 25) * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))
            ids, labels = batch["input_ids"], batch["labels"]
            logits = backbone.lm_logits(backbone(ids))[:, :-1, :V]
            target = labels[:, 1:]
            loss = F.cross_entropy(logits.reshape(-1, V).float(), target.reshape(-1), ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(backbone.parameters(), 1.0)
            opt.step()
            steps += 1
            tokens += int((target != -100).sum())
            losses.append(loss.item())
            if steps % 25 == 0:
                print(f"step {steps}: loss {sum(losses[-25:]) / 25:.4f}, {tokens / 1e6:.2f} M tokens, "
                      f"{(time.time() - t0) / 60:.1f} min", flush=True)
    backbone.eval().save_pretrained(out / "backbone", tokenizer=tok)
    tail = losses[-25:]
    return {"steps": steps, "tokens": tokens, "minutes": round((time.time() - t0) / 60, 2),
            "stopped_by": stopped,
            "final_train_ppl": round(math.exp(sum(tail) / len(tail)), 3) if tail else None,
            "params": backbone.num_parameters()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--alignment", default=str(ALIGNMENT))
    p.add_argument("--minutes", type=float, default=6.0, help="training wall-clock budget")
    p.add_argument("--tokens", type=float, default=0, help="training token budget (0 = time only)")
    p.add_argument("--max-length", type=int, default=4096, help="tokens per training example (~24 homologs)")
    p.add_argument("--l-max", type=int, default=12288,
                   help="the model's l_max (64 homologs need ~11k tokens)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--homologs", type=int, nargs="+", default=[0, 1, 4, 16, 64])
    p.add_argument("--targets", type=int, default=16)
    p.add_argument("--out", default="/tmp/bioseq_icl_protein")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    info = train(a, out)
    print("training:", info, flush=True)
    from bioseq.cli import main as cli

    t0 = time.time()
    args = ["icl", "homology", "--alignment", str(a.alignment), "--backbone", str(out / "backbone"),
            "--homologs", *map(str, a.homologs), "--targets", str(a.targets), "--val-fraction", "0.05",
            "--test-fraction", "0.05", "--split-seed", "0", "--threads", str(a.threads), "--out",
            str(out / "homology")] + ([] if sys.stderr.isatty() else ["--no-progress"])
    if cli(args) != 0:
        raise RuntimeError("bioseq icl homology failed")
    with open(out / "homology" / "results.csv") as fh:
        curve = {int(r["homologs"]): float(r["perplexity"]) for r in csv.DictReader(fh)}
    result = {"settings": vars(a), "training": info, "curve": curve,
              "eval_minutes": round((time.time() - t0) / 60, 2)}
    if 0 in curve and 16 in curve:
        result["ppl16_below_ppl0"] = curve[16] < curve[0]
    (out / "icl_protein.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
