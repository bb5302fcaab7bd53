"""Real-data finetuning check on CPU: a tiny backbone from scratch vs k-mer logistic regression.

Data: the full Genomic Benchmarks test splits in ``../shared/data/genomic_benchmarks/sequences``
(``human_nontata_promoters`` 9,034 sequences, ``human_enhancers_cohn`` 6,948), each split 80/20
(stratified, seed 0) into train/test; 10% of train (stratified, seed 0) is the validation set, watched
every epoch; the weights tested are those at the end of the fixed schedule (``--select last``; ``loss``
or ``accuracy`` test the epoch with the best validation value instead). The k-mer baselines (4-mer,
6-mer frequencies + logistic regression, C by 5-fold CV on the same 80% train) are measured in the same
run. The model (``--model``: a tiny HyenaDNA by default; Mamba, Mamba-2, Caduceus-ph/ps or DNA-xLSTM of
the same width and depth) goes through the real pipeline (``SequenceClassificationDataModule`` on TSV
files -> ``SequenceClassifier`` -> Lightning ``Trainer``) with a wall-clock budget (``--minutes``)
enforced by ``Trainer(max_time=...)``. With ``--pretrain-minutes M`` the backbone is first trained for at
most M minutes of that budget as a language model on the training split's sequences (causal models:
next token; bidirectional ones: masked tokens; labels unused; the validation and test sequences are never
seen), then finetuned for the rest. ``--pretrain-tokens`` (default 40 M tokens, about 8 minutes for the
HyenaDNA on a quiet 2-core machine) ends pretraining first when the machine is fast enough, which makes
the run repeatable: the same seeds and thread count give the same weights. The finetuning defaults (peak
lr 6e-4, backbone dropout 0.1, 5 epochs of warmup + cosine) come from an ablation on one pretrained cohn
HyenaDNA backbone (``benchmarks/RESULTS.md``): they gave 0.743 test accuracy where lr 2e-3 without
dropout over 10 epochs gave 0.723.

    python benchmarks/finetune_real.py --datasets human_nontata_promoters human_enhancers_cohn
    python benchmarks/finetune_real.py --model mamba --minutes 40 --threads 2

Prints a markdown table (and writes ``--out``/finetune_real.json, results keyed by ``--model``). Timing is
wall clock on a shared machine; the process CPU time is printed too.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("BIOSEQ_SHARED", REPO.parent / "shared"))
SEQ_DIR = SHARED / "data" / "genomic_benchmarks" / "sequences"


def split_files(name: str, workdir: Path, seed: int = 0, seq_dir: Path = SEQ_DIR) -> tuple[Path, Path, int]:
    """80/20 stratified split of ``<seq_dir>/<name>/test.tsv.gz`` written as train.tsv / test.tsv."""
    from bioseq.datamodules.benchmark_files import read_table, stratified_split

    data = read_table(Path(seq_dir) / name / "test.tsv.gz")
    keep, held = stratified_split(data.labels, 0.2, seed)
    out = workdir / name
    out.mkdir(parents=True, exist_ok=True)
    for split, idx in (("train", keep), ("test", held)):
        with open(out / f"{split}.tsv", "w", newline="") as fh:
            w = csv.writer(fh, delimiter="\t")
            w.writerow(["sequence", "label"])
            w.writerows((data.sequences[i], int(data.labels[i])) for i in idx)
    return out / "train.tsv", out / "test.tsv", max(len(s) for s in data.sequences)


def kmer_rows(train: Path, test: Path, ks=(4, 6)) -> dict[int, dict]:
    from bioseq.datamodules.benchmark_files import read_table
    from bioseq.finetune.probe import fit_probe, kmer_features

    tr, te = read_table(train), read_table(test)
    out = {}
    for k in ks:
        t0 = time.time()
        res = fit_probe(kmer_features(tr.sequences, k), tr.labels, kmer_features(te.sequences, k), te.labels)
        res["seconds"] = round(time.time() - t0, 1)
        out[k] = res
    return out


def pretrain_lm(backbone, dm, a) -> dict:
    """Language-model pretraining of ``backbone`` on the training split's sequences only (labels unused).

    Causal backbones learn next-token prediction; bidirectional ones (Caduceus, bidirectional xLSTM) learn
    BERT masked-token prediction (15% of the real tokens, 80/10/10), as in their papers: the loss is
    ``models.lm.LanguageModel.token_losses`` (the backbone's own LM head, tied or untied) on a
    LanguageModel wrapping ``backbone``. ``dm`` is set up for "fit", so its train split already excludes
    the validation sequences; batches carry the same reverse-complement augmentation as finetuning. Runs until
    ``a.pretrain_tokens`` tokens (0: no token budget; predicted tokens for a causal model, input tokens
    seen for a masked one, so both budgets cover the same data) or ``a.pretrain_minutes`` of wall time,
    whichever comes first, with a linear warm-up (50 steps) and a cosine decay over the token budget (over
    the time budget without one); ``stopped_by`` says which budget ended it. A token budget makes the run
    independent of the machine's load: same seed, same thread count, same weights.
    """
    import math

    import torch

    from bioseq.models.lm import LanguageModel

    masked = not backbone.causal
    lm = LanguageModel(backbone=backbone, tokenizer=dm.tokenizer, objective="mlm" if masked else "clm")
    gen = torch.Generator().manual_seed(getattr(a, "seed", 0))
    opt = torch.optim.AdamW(backbone.parameters(), lr=a.pretrain_lr, weight_decay=0.1)
    backbone.train()
    t0 = time.time()
    budget = a.pretrain_minutes * 60
    token_budget = int(getattr(a, "pretrain_tokens", 0) or 0)
    steps, tokens, losses = 0, 0, []
    stopped_by = None
    while stopped_by is None:
        if steps == 0 and len(dm.train_dataloader()) == 0:
            raise RuntimeError("pretraining: the training split gives no batches")
        for batch in dm.train_dataloader():
            elapsed = (time.time() - t0) / budget
            if elapsed >= 1 or (token_budget and tokens >= token_budget):
                stopped_by = "time" if elapsed >= 1 else "tokens"
                break
            frac = tokens / token_budget if token_budget else elapsed
            for g in opt.param_groups:
                g["lr"] = a.pretrain_lr * min(1.0, (steps + 1) / 50) * 0.5 * (1 + math.cos(math.pi * frac))
            tokens_only = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            loss_sum, count = lm.token_losses(tokens_only, gen)  # class labels are not LM labels
            loss = loss_sum / count
            seen = int(batch["attention_mask"].sum()) if masked else int(count)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(backbone.parameters(), 1.0)
            opt.step()
            steps += 1
            tokens += seen
            losses.append(loss.item())
    tail = losses[-50:]
    return {"objective": "mlm" if masked else "clm", "steps": steps, "tokens": tokens,
            "minutes": round((time.time() - t0) / 60, 2), "stopped_by": stopped_by,
            "final_train_ppl": round(math.exp(sum(tail) / len(tail)), 4) if tail else None}


# The tiny model of each family: (arch, preset) and how the script's shape options map onto its config.
MODELS = {
    "hyena": ("hyena", "hyenadna-tiny-1k"),
    "mamba": ("mamba", "mamba-tiny"),
    "mamba2": ("mamba", "mamba2-tiny"),
    "caduceus-ph": ("caduceus", "caduceus-ph-tiny"),
    "caduceus-ps": ("caduceus", "caduceus-ps-tiny"),
    "dna-xlstm": ("xlstm", "dna-xlstm-tiny"),
}


def model_overrides(model: str, max_len: int, a) -> dict:
    """Config overrides of ``MODELS[model]`` from the script's options (``--d-model``, ``--n-layer``, ...).

    ``max_len`` is the longest sequence of the dataset; the two extra positions hold [CLS]/[SEP].
    ``--d-inner`` and ``--dropout`` apply where the family has them (HyenaDNA's MLP width and embedding /
    residual dropout; xLSTM's block dropout); the Mamba line has neither.
    """
    arch = MODELS[model][0]
    out = dict(d_model=a.d_model, n_layer=a.n_layer)
    if arch == "hyena":
        out.update(d_inner=a.d_inner or 4 * a.d_model, l_max=max_len + 2, embed_dropout=a.dropout,
                   resid_dropout=a.dropout)
    elif arch == "xlstm":
        out.update(max_length=max(1024, max_len + 2), dropout=a.dropout)
    return out


def _epoch_printer():
    """A callback printing (and keeping, in ``.history``) the validation metrics after every epoch."""
    import lightning as L

    class PrintValidation(L.Callback):
        def __init__(self):
            self.history: list[dict] = []

        def on_validation_epoch_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            metrics = trainer.callback_metrics.items()
            vals = {k: round(float(v), 4) for k, v in metrics if k.startswith("val/")}
            self.history.append({"epoch": trainer.current_epoch, **vals})
            print(f"epoch {trainer.current_epoch}: {vals}", flush=True)

    return PrintValidation()


def model_run(train: Path, test: Path, max_len: int, a) -> dict:
    """Pretrain (optionally) and finetune the tiny ``a.model`` on one dataset; test it."""
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    from bioseq.datamodules.benchmarks import SequenceClassificationDataModule
    from bioseq.finetune.classifier import SequenceClassifier

    torch.set_num_threads(a.threads)
    seed = getattr(a, "seed", 0)   # model initialisation, masking, batch order; the splits stay seed 0
    L.seed_everything(seed, verbose=False)
    dm = SequenceClassificationDataModule(
        train_file=str(train),
        test_file=str(test),
        val_fraction=0.1,
        split_seed=0,
        batch_size=a.batch_size,
        eval_batch_size=256,
        rc_augment=a.rc_augment,
    )
    model_name = getattr(a, "model", "hyena")
    arch, preset = MODELS[model_name]
    overrides = model_overrides(model_name, max_len, a)
    pretrain = None
    backbone = None
    dm.setup("fit")  # the class count comes from the data's labels
    if a.pretrain_minutes > 0:
        from bioseq.models import build_backbone

        backbone = build_backbone(arch, preset, **overrides)
        pretrain = pretrain_lm(backbone, dm, a)
        print("pretraining:", pretrain, flush=True)
        L.seed_everything(seed, verbose=False)
    model = SequenceClassifier(
        backbone=backbone,
        arch=arch,
        preset=None if backbone is not None else preset,
        backbone_overrides=None if backbone is not None else overrides,
        num_classes=dm.num_classes,
        pooling=a.pooling,
        lr=a.lr,
        weight_decay=a.weight_decay,
        warmup_steps=0.05,
        rc_average="eval" if getattr(a, "rc_average_eval_only", False) else a.rc_average,
    )
    printer = _epoch_printer()
    monitor = "loss" if a.select == "last" else a.select  # with "last": kept for the comparison row
    callbacks = [printer, ModelCheckpoint(
        dirpath=str(Path(a.out) / "ckpt" / train.parent.name),
        monitor=f"val/{monitor}",
        mode="min" if monitor == "loss" else "max",
        save_top_k=1,
    )]
    left = a.minutes - (pretrain or {}).get("minutes", 0.0)
    if left <= 0:
        raise SystemExit(f"finetune_real.py: pretraining used the whole --minutes {a.minutes:g} budget "
                         f"({pretrain['minutes']} min): raise --minutes (it counts pretraining too)")
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=a.epochs,
        max_time={"minutes": left},
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
    )
    t0, c0 = time.time(), time.process_time()
    trainer.fit(model, dm)
    fit_s, fit_cpu = time.time() - t0, time.process_time() - c0
    if not printer.history:
        raise SystemExit(f"finetune_real.py: no finetuning epoch finished within --minutes {a.minutes:g} "
                         "(pretraining counts in it): raise --minutes")
    sign = 1 if monitor == "loss" else -1
    best = min(printer.history, key=lambda h: sign * h[f"val/{monitor}"])
    comparison = None
    if a.select == "last":  # the weights at the end of the schedule; validation only watched
        res = trainer.test(model, dm, verbose=False)[0]
        tested = printer.history[-1]
        # For information only (never used to choose): the best-validation-loss epoch on the test set.
        alt = trainer.test(model, dm, ckpt_path="best", verbose=False)[0]
        comparison = {"rule": "val/loss", "epoch": best["epoch"], "test_accuracy": alt["test/accuracy"],
                      "test_mcc": alt["test/mcc"]}
    else:
        res = trainer.test(model, dm, ckpt_path="best", verbose=False)[0]
        tested = best
    return {
        "test_accuracy": res["test/accuracy"],
        "test_mcc": res["test/mcc"],
        "test_f1": res["test/f1"],
        "test_auroc": res["test/auroc"],
        "selected_on": "last epoch" if a.select == "last" else f"val/{a.select}",
        "tested_epoch": tested["epoch"],
        "tested_val_accuracy": tested["val/accuracy"],
        "tested_val_loss": tested["val/loss"],
        "val_history": printer.history,
        "comparison": comparison,
        "epochs_done": trainer.current_epoch,
        "fit_minutes": round(fit_s / 60, 2),
        "fit_cpu_minutes": round(fit_cpu / 60, 2),
        "num_classes": model.num_classes,
        "params": sum(p.numel() for p in model.model.parameters()),
        "pretrain": pretrain,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["human_nontata_promoters", "human_enhancers_cohn"])
    p.add_argument("--minutes", type=float, default=15.0, help="wall-clock training budget per dataset")
    p.add_argument("--epochs", type=int, default=5, help="finetuning epochs (the cosine schedule's length)")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--d-inner", type=int, default=128, help="MLP width (0 = 4 * d_model)")
    p.add_argument("--lr", type=float, default=6e-4, help="finetuning peak learning rate")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pooling", default="mean")
    p.add_argument("--select", choices=("last", "loss", "accuracy"), default="last",
                   help="weights tested: those at the end of the fixed schedule (last), or the epoch with "
                        "the best validation cross-entropy / accuracy")
    p.add_argument("--dropout", type=float, default=0.1, help="backbone embedding and residual dropout")
    p.add_argument("--rc-augment", type=float, default=0.5, help="probability of a reverse-complement swap")
    p.add_argument("--rc-average", action=argparse.BooleanOptionalAction, default=True,
                   help="average logits over both strands (in training and evaluation)")
    p.add_argument("--rc-average-eval-only", action="store_true",
                   help="average over both strands in evaluation only (Caduceus' post-hoc conjoining: "
                        "one strand per training step, half the cost)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the model's initialisation, masking and batch order (the train/validation/"
                        "test splits are always seed 0)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (2: all cores of this machine)")
    p.add_argument("--pretrain-minutes", type=float, default=9.0,
                   help="next-token pretraining on the train split's sequences first, at most this long "
                        "(counts in --minutes; 0 = no pretraining)")
    p.add_argument("--pretrain-tokens", type=float, default=40e6,
                   help="pretraining token budget (cosine schedule over it; 0 = budget by time only)")
    p.add_argument("--pretrain-lr", type=float, default=3e-3)
    p.add_argument("--model", choices=sorted(MODELS), default="hyena",
                   help="the tiny backbone (hyena = HyenaDNA); "
                        "bidirectional ones pretrain with masked-token prediction")
    p.add_argument("--skip-model", "--skip-hyena", dest="skip_model", action="store_true",
                   help="k-mer baselines only")
    p.add_argument("--kmer", type=int, nargs="*", default=[4, 6],
                   help="k of the k-mer baselines (none: skip them)")
    p.add_argument("--data-dir", default=str(SEQ_DIR),
                   help="folder holding <dataset>/test.tsv.gz (sequence, label; any number of classes)")
    p.add_argument("--out", default="/tmp/bioseq_finetune_real")
    a = p.parse_args(argv)
    work = Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in a.datasets:
        train, test, max_len = split_files(name, work, seq_dir=Path(a.data_dir))
        row = {"kmer": kmer_rows(train, test, ks=a.kmer)}
        print(name, "k-mer:", {k: round(v["accuracy"], 4) for k, v in row["kmer"].items()}, flush=True)
        if not a.skip_model:
            row[a.model] = model_run(train, test, max_len, a)
            print(name, f"{a.model}:", row[a.model], flush=True)
        results[name] = row
    settings = {k: v for k, v in vars(a).items() if k not in ("datasets", "out")}
    (work / "finetune_real.json").write_text(json.dumps({"settings": settings, "results": results}, indent=1))
    print(
        f"\n| dataset | 4-mer LR acc | 6-mer LR acc | tiny {a.model} acc | MCC | tested | (best val loss: "
        "epoch, acc) | pretrain tokens / min | fit min (wall / CPU) | params |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for name, r in results.items():
        h = r.get(a.model, {})
        cmp = h.get("comparison") or {}
        pre = h.get("pretrain") or {}
        print(
            f"| {name} | {r['kmer'].get(4, {}).get('accuracy', nan):.4f} | "
            f"{r['kmer'].get(6, {}).get('accuracy', nan):.4f} | "
            f"{h.get('test_accuracy', float('nan')):.4f} | {h.get('test_mcc', float('nan')):.4f} | "
            f"{h.get('selected_on', '-')}, epoch {h.get('tested_epoch', '-')} | "
            f"{cmp.get('epoch', '-')}, {cmp.get('test_accuracy', float('nan')):.4f} | "
            f"{pre.get('tokens', 0) / 1e6:.1f} M / {pre.get('minutes', '-')} | "
            f"{h.get('fit_minutes', '-')} / {h.get('fit_cpu_minutes', '-')} | {h.get('params', '-')} |"
        )
    print(f"\nsettings: {settings}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
