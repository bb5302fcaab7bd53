"""``bioseq soft-prompt``: soft-prompt tuning of a frozen backbone, swept over the prompt length K.

For every K of ``--prompt-tokens``, K prompt embeddings are trained in front of the frozen backbone
(``finetune/soft_prompt.py``: AdamW lr 1e-3, no weight decay, plateau schedule, early stopping on the
validation loss) and the held-out test set is scored with the prompt of the best validation epoch. The
class is the next token after the sequence, restricted to the label tokens (``--label-tokens``; DNA
default ``A,N`` for two classes, ``A,G,N`` for three). K = 0 is the frozen model's zero-shot answer. The
validation set is ``--val-fraction`` of the training file (stratified, ``--seed``). The backbone's maximum
length counts the K prompt tokens.

Writes ``results.csv``, ``results.md`` and ``results.png`` (test accuracy against K) into ``--out``.

    bioseq soft-prompt --train tr.tsv --test te.tsv --backbone ckpt/ --prompt-tokens 0 2 32 128 --out sp
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = "Soft-prompt tuning of a frozen backbone (accuracy against the number of prompt tokens K)."


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bioseq soft-prompt", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--train", required=True, help="labelled training sequences (table or FASTA)")
    p.add_argument("--test", required=True, help="labelled test sequences (table or FASTA)")
    p.add_argument("--backbone", required=True, help="checkpoint directory or preset name (random weights)")
    p.add_argument("--prompt-tokens", type=int, nargs="+", default=[0, 2, 32, 128], metavar="K",
                   help="prompt lengths to sweep (default: 0 2 32 128)")
    p.add_argument("--label-tokens", help="one vocabulary token per class, comma separated (DNA default: "
                                          "A,N for 2 classes, A,G,N for 3)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share of --train (stratified)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--epochs", type=int, default=20, help="at most this many epochs (early stopping ends "
                                                          "sooner)")
    p.add_argument("--patience", type=int, default=3, help="epochs without a better validation loss before "
                                                           "stopping")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps-per-epoch", type=int, help="cap the optimizer steps of one epoch (default: one "
                                                       "full pass over the training set)")
    p.add_argument("--max-train", type=int, help="use a stratified subsample of this many training sequences")
    p.add_argument("--max-val", type=int, help="validate on a stratified subsample of this many sequences")
    p.add_argument("--max-test", type=int, help="score a stratified subsample of this many test sequences")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--name", help="dataset name in the table (default: the train file's parent directory)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", default="soft_prompt_results")
    return p


def backbone_label(spec: str, backbone) -> str:
    """The backbone as named in tables; a preset (random initialisation) says so."""
    return f"{spec} (random weights)" if getattr(backbone, "weights_origin", None) == "random" else str(spec)


def warn_random(command: str, spec: str, backbone) -> None:
    """The shared one-line warning when the backbone was built with random weights (a preset)."""
    from bioseq.commands.common import random_weights_warning

    if getattr(backbone, "weights_origin", None) == "random":
        random_weights_warning(command, spec)


def subsample(data, n: int | None, seed: int):
    """A stratified subsample of ``n`` items of a ``LabeledSequences`` (all of it when n is None or
    larger)."""
    from bioseq.datamodules.benchmark_files import stratified_split

    if n is None or n >= len(data):
        return data
    _, held = stratified_split(data.labels, n / len(data), seed)
    return data.subset(held)


def load_task(a):
    """(train, val, test, num_classes) from --train / --test with the stratified validation split."""
    from bioseq.datamodules.benchmark_files import read_file, stratified_split
    from bioseq.errors import BioseqError

    train, test = read_file(a.train), read_file(a.test)
    if train.labels.dtype.kind == "f":
        raise BioseqError(f"{a.train}: regression labels; soft prompting and in-context learning classify")
    if not 0.0 < a.val_fraction < 1.0:
        raise BioseqError(f"--val-fraction must be in (0, 1), got {a.val_fraction}")
    keep, held = stratified_split(train.labels, a.val_fraction, a.seed)
    fit, val = train.subset(keep), train.subset(held)
    fit = subsample(fit, a.max_train, a.seed)
    val = subsample(val, getattr(a, "max_val", None), a.seed)
    test = subsample(test, a.max_test, a.seed)
    num_classes = len(train.class_names) if train.class_names else int(max(train.labels.max(),
                                                                           test.labels.max())) + 1
    return fit, val, test, num_classes


def main(argv: list[str]) -> int:
    a = parser().parse_args(argv)

    import torch

    from bioseq.errors import BioseqError
    from bioseq.finetune.label_tokens import label_token_ids, parse_label_tokens, unreachable_labels
    from bioseq.finetune.soft_prompt import (
        SoftPromptConfig,
        class_scores,
        label_token_logprobs,
        score,
        train_soft_prompt,
    )
    from bioseq.finetune.sweep_report import write_sweep
    from bioseq.models import load_tokenizer_for, resolve_backbone

    if a.threads:
        torch.set_num_threads(a.threads)
    if any(k < 0 for k in a.prompt_tokens):
        raise BioseqError(f"--prompt-tokens must be >= 0, got {a.prompt_tokens}")
    fit, val, test, num_classes = load_task(a)
    torch.manual_seed(a.seed)
    backbone = resolve_backbone(a.backbone)
    warn_random("soft-prompt", a.backbone, backbone)
    tok = load_tokenizer_for(backbone)
    for data in (fit, val, test):  # every sequence once, so a bad character is one line naming its file
        for seq, rid in zip(data.sequences, data.ids):
            tok.encode(seq, path=data.source, record=rid)
    tokens = parse_label_tokens(a.label_tokens, num_classes, backbone.alphabet)
    label_ids = label_token_ids(tok, tokens)
    reach = label_token_logprobs(backbone, tok, label_ids, val.sequences[:256])
    problem = unreachable_labels(tokens, [float(x) for x in reach])
    if problem:
        from bioseq.commands.common import warn

        warn("soft-prompt", problem)
    name = a.name or Path(a.train).resolve().parent.name
    label = backbone_label(a.backbone, backbone)
    rows = []
    for K in a.prompt_tokens:
        cfg = SoftPromptConfig(n_prompt=K, lr=a.lr, batch_size=a.batch_size, max_epochs=a.epochs,
                               patience=a.patience, steps_per_epoch=a.steps_per_epoch, seed=a.seed)
        t0 = time.time()
        res = train_soft_prompt(backbone, tok, label_ids, fit.sequences, fit.labels, val.sequences,
                                val.labels, cfg, progress=not a.no_progress)
        bar = _bar(not a.no_progress, len(test), f"test K={K}")
        metrics = score(class_scores(res.model, tok, test.sequences, cfg.eval_batch_size, bar), test.labels,
                        num_classes)
        if bar is not None:
            bar.close()
        best = res.history[res.best_epoch] if res.best_epoch is not None else {}
        rows.append({"dataset": name, "backbone": label, "prompt_tokens": K, "accuracy": metrics["accuracy"],
                     "mcc": metrics["mcc"], "f1": metrics["f1"], "loss": metrics["loss"],
                     "val_accuracy": best.get("val_accuracy", float("nan")),
                     "best_epoch": "" if res.best_epoch is None else res.best_epoch,
                     "epochs": len(res.history), "steps": res.steps,
                     "minutes": round((time.time() - t0) / 60, 2),
                     "n_train": len(fit), "n_val": len(val), "n_test": metrics["n"],
                     "label_tokens": ",".join(tokens), "seed": a.seed})
        print(f"K={K}: test accuracy {metrics['accuracy']:.4f} (MCC {metrics['mcc']:.4f}), "
              f"{res.steps} steps", file=sys.stderr)
    write_sweep(rows, a.out, x="prompt_tokens", y="accuracy",
                columns=["mcc", "loss", "val_accuracy", "epochs", "steps", "minutes", "n_test"],
                title=f"Soft prompting: test accuracy against prompt tokens K ({label})",
                xlabel="prompt tokens K", ylabel="test accuracy",
                notes=[f"backbone frozen; label = next token after the sequence restricted to "
                       f"{','.join(tokens)} (class order); AdamW lr {a.lr}, no weight decay, plateau "
                       f"schedule, early stopping (patience {a.patience}) on the validation loss",
                       f"train {len(fit)}, validation {len(val)} ({a.val_fraction} of --train, stratified, "
                       f"seed {a.seed}), test {len(test)}"])
    print(Path(a.out, "results.md").read_text())
    return 0


def _bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="seq", leave=False, dynamic_ncols=True)
