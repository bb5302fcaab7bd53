"""Soft-prompt and k-shot in-context sweeps on real data with a tiny HyenaDNA pretrained on CPU.

Protocol (the real-data check of ``benchmarks/finetune_real.py``): the full Genomic Benchmarks test split
of each dataset in ``../shared/data/genomic_benchmarks/sequences`` is split 80/20 (stratified, seed 0)
into train/test; 10% of train (stratified, seed 0) is the validation set. A d64 n2 HyenaDNA (d_inner 128,
dropout 0.1) is pretrained as a causal LM on the training split's sequences only (``pretrain_lm`` of that
script: 40 M predicted tokens or 9 minutes, lr 3e-3, batch 32, reverse-complement augmentation; the
validation and test sequences are never seen), then saved and evaluated frozen through the commands:

* ``bioseq soft-prompt`` -- K = 0, 2, 32, 128 prompt tokens (AdamW lr 1e-3, no weight decay, plateau
  schedule, early stopping on the validation loss, at most ``--epochs``); label tokens ``A``/``G``;
* ``bioseq icl kshot`` -- k = 0, 1, 2, 4 demonstrations per class from the training split.

Label tokens: ``A``/``G``, not the HyenaDNA protocol's ``A``/``N`` (the commands' default). These models
are pretrained on Genomic Benchmarks sequences, which hold no ``N``: the LM head puts ``N`` about 11 nats
below the nucleotides, no prompt flips it, and every sequence is answered ``A`` (RESULTS.md, seventh
session); ``bioseq soft-prompt`` warns about such label tokens. ``--label-tokens A,N`` reproduces that.

The only change to the pretrained model against ``finetune_real.py`` is ``l_max``: it is raised so the
longest prompt / k-shot layout fits (HyenaDNA's positional features are built from ``l_max``, so it has
to be fixed before pretraining). Reduced runs (a smaller pretraining budget, subsampled train/test sets,
capped epochs) are made with the options; every option used is written into ``icl_real.json`` and the
printed table, so reduced figures are never mistaken for the full protocol.

    python benchmarks/icl_real.py                        # full protocol, both datasets
    python benchmarks/icl_real.py --pretrain-tokens 4e6 --max-train 2000 --max-test 500 --epochs 3
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import finetune_real  # noqa: E402  (the real-data check: split and pretraining protocol)

# Figures of benchmarks/RESULTS.md ("Real-data finetuning", fourth round, the same splits): test accuracy.
RESULTS_MD = {
    "human_nontata_promoters": {"4-mer LR": 0.8190, "6-mer LR": 0.8500, "finetuned tiny HyenaDNA": 0.8279},
    "human_enhancers_cohn": {"4-mer LR": 0.7173, "6-mer LR": 0.7374, "finetuned tiny HyenaDNA": 0.7295},
}


SP_KEYS = ("accuracy", "mcc", "val_accuracy", "epochs", "steps", "minutes", "n_train", "n_val", "n_test")
KS_KEYS = ("accuracy", "mcc", "context_tokens", "minutes", "n_pool", "n_test")


def pretrained_backbone(name: str, train: Path, test: Path, l_max: int, a, ckpt: Path) -> dict:
    """Pretrain the tiny HyenaDNA as ``finetune_real.py`` does and save it to ``ckpt``; returns the
    pretraining summary."""
    import lightning as L
    import torch

    from bioseq.datamodules.benchmarks import SequenceClassificationDataModule
    from bioseq.models import build_backbone

    torch.set_num_threads(a.threads)
    L.seed_everything(0, verbose=False)
    dm = SequenceClassificationDataModule(train_file=str(train), test_file=str(test), val_fraction=0.1,
                                          split_seed=0, batch_size=a.batch_size, eval_batch_size=256,
                                          rc_augment=0.5)
    dm.setup("fit")
    backbone = build_backbone("hyena", "hyenadna-tiny-1k", d_model=64, n_layer=2, d_inner=128, l_max=l_max,
                              embed_dropout=0.1, resid_dropout=0.1)
    info = finetune_real.pretrain_lm(backbone, dm, a)
    print(f"{name}: pretraining {info}", flush=True)
    backbone.eval().save_pretrained(ckpt, tokenizer=dm.tokenizer)
    (ckpt / "pretrain.json").write_text(json.dumps({"l_max": l_max, **info}))
    return info


def reused_backbone(name: str, l_max: int, a) -> tuple[Path, dict]:
    """``--pretrained DIR``: the backbone an earlier run saved in ``DIR/<name>/backbone`` and its pretraining
    summary; refused when it was built for a shorter ``l_max`` than this run's prompts and shots need."""
    ckpt = Path(a.pretrained) / name / "backbone"
    summary = ckpt / "pretrain.json"
    if not summary.is_file():
        raise SystemExit(f"icl_real.py: --pretrained {a.pretrained}: no {summary} "
                         "(run once without --pretrained first)")
    info = json.loads(summary.read_text())
    if info["l_max"] < l_max:
        raise SystemExit(f"icl_real.py: {ckpt} was pretrained with l_max {info['l_max']}, "
                         f"this run needs {l_max}")
    return ckpt, {k: v for k, v in info.items() if k != "l_max"}


def read_rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def run_dataset(name: str, a, work: Path) -> dict:
    from bioseq.cli import main as cli
    from bioseq.finetune.icl import length_budget

    train, test, max_len = finetune_real.split_files(name, work, seq_dir=Path(a.data_dir))
    l_max = max(max_len + max(a.prompt_tokens), length_budget(max_len, max(a.shots), 2)) + 2
    t0 = time.time()
    if a.pretrained:
        ckpt, pretrain = reused_backbone(name, l_max, a)
    else:
        ckpt = work / name / "backbone"
        pretrain = pretrained_backbone(name, train, test, l_max, a, ckpt)
    quiet = [] if sys.stderr.isatty() else ["--no-progress"]
    common = ["--train", str(train), "--test", str(test), "--backbone", str(ckpt), "--name", name,
              "--threads", str(a.threads), "--seed", "0"] + quiet
    if a.max_train:
        common += ["--max-train", str(a.max_train)]
    if a.max_test:
        common += ["--max-test", str(a.max_test)]
    if a.label_tokens:
        common += ["--label-tokens", a.label_tokens]
    t1 = time.time()
    sp_args = ["soft-prompt", *common, "--prompt-tokens", *map(str, a.prompt_tokens), "--epochs",
               str(a.epochs), "--patience", str(a.patience), "--batch-size", str(a.batch_size),
               "--out", str(work / name / "soft_prompt")]
    if a.steps_per_epoch:
        sp_args += ["--steps-per-epoch", str(a.steps_per_epoch)]
    if a.max_val:
        sp_args += ["--max-val", str(a.max_val)]
    if cli(sp_args) != 0:
        raise RuntimeError(f"{name}: bioseq soft-prompt failed")
    t2 = time.time()
    ks_args = ["icl", "kshot", *common, "--shots", *map(str, a.shots), "--batch-size",
               str(a.icl_batch_size), "--out", str(work / name / "kshot")]
    if cli(ks_args) != 0:
        raise RuntimeError(f"{name}: bioseq icl kshot failed")
    t3 = time.time()
    sp = read_rows(work / name / "soft_prompt" / "results.csv")
    ks = read_rows(work / name / "kshot" / "results.csv")
    return {
        "l_max": l_max, "pretrain": pretrain,
        "soft_prompt": {int(r["prompt_tokens"]): {k: r[k] for k in SP_KEYS} for r in sp},
        "kshot": {int(r["shots"]): {k: r[k] for k in KS_KEYS} for r in ks},
        "minutes": {"pretrain": round((t1 - t0) / 60, 2), "soft_prompt": round((t2 - t1) / 60, 2),
                    "kshot": round((t3 - t2) / 60, 2)},
    }


def soft_prompt_beats_zero(res: dict) -> bool:
    sp = res["soft_prompt"]
    if 0 not in sp:
        return False
    return any(float(v["accuracy"]) > float(sp[0]["accuracy"]) for k, v in sp.items() if k >= 32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["human_nontata_promoters", "human_enhancers_cohn"])
    p.add_argument("--prompt-tokens", type=int, nargs="+", default=[0, 2, 32, 128])
    p.add_argument("--shots", type=int, nargs="+", default=[0, 1, 2, 4])
    p.add_argument("--epochs", type=int, default=20, help="soft-prompt epochs at most (early stopping)")
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, help="cap a soft-prompt epoch (default: a full pass)")
    p.add_argument("--max-train", type=int, help="stratified subsample of the training split for the "
                                                 "sweeps (pretraining always uses the whole split)")
    p.add_argument("--max-val", type=int, help="stratified subsample of the validation set (soft prompt)")
    p.add_argument("--max-test", type=int, help="stratified subsample of the test split")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--icl-batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pretrain-minutes", type=float, default=9.0)
    p.add_argument("--pretrain-tokens", type=float, default=40e6)
    p.add_argument("--pretrain-lr", type=float, default=3e-3)
    p.add_argument("--label-tokens", default="A,G",
                   help="one token per class for both sweeps (default A,G: a model pretrained without N "
                        "never answers the HyenaDNA protocol's A,N)")
    p.add_argument("--pretrained", help="reuse the backbones a previous run pretrained (its --out folder) "
                   "instead of pretraining again")
    p.add_argument("--data-dir", default=str(finetune_real.SEQ_DIR))
    p.add_argument("--out", default="/tmp/bioseq_icl_real")
    a = p.parse_args(argv)
    work = Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in a.datasets:
        results[name] = run_dataset(name, a, work)
        results[name]["soft_prompt_beats_k0"] = soft_prompt_beats_zero(results[name])
    settings = {k: v for k, v in vars(a).items() if k not in ("datasets", "out")}
    (work / "icl_real.json").write_text(json.dumps({"settings": settings, "results": results}, indent=1))
    Ks, ks = sorted(a.prompt_tokens), sorted(a.shots)
    head = (["dataset"] + [f"soft prompt K={k}" for k in Ks] + [f"{k}-shot" for k in ks]
            + ["finetuned (RESULTS.md)", "4-mer / 6-mer LR (RESULTS.md)", "pretrain tokens / min", "minutes"])
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for name, r in results.items():
        ref = RESULTS_MD.get(name, {})
        cells = [name] + [f"{float(r['soft_prompt'][k]['accuracy']):.4f}" for k in Ks]
        cells += [f"{float(r['kshot'][k]['accuracy']):.4f}" for k in ks]
        cells += [f"{ref['finetuned tiny HyenaDNA']:.4f}" if ref else "-",
                  f"{ref['4-mer LR']:.4f} / {ref['6-mer LR']:.4f}" if ref else "-",
                  f"{r['pretrain']['tokens'] / 1e6:.1f} M / {r['pretrain']['minutes']}",
                  " + ".join(f"{v}" for v in r["minutes"].values())]
        print("| " + " | ".join(cells) + " |")
    print(f"\nsettings: {settings}")
    print("K >= 32 beats K = 0: " + ", ".join(f"{n}: {r['soft_prompt_beats_k0']}"
                                             for n, r in results.items()))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
