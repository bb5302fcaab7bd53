"""``bioseq icl``: in-context evaluation of a language model, three modes.

``kshot``: k-shot classification (``finetune/icl.py``). Each test query is shown ``k`` demonstrations
per class from the training file, ``seq [SEP] label [SEP]`` (every sequence left-padded to the task
length), then ``query [SEP]``; the answer is the argmax of the next-token logits over the label tokens
(bidirectional MLM backbones answer at a ``[MASK]``). ``--instruction-tune N ...`` also finetunes a copy
of the backbone on N k-shot formatted training examples (lr 1e-4, one epoch) before scoring;
``--repeat 2`` (or ``auto`` for recurrent backbones) shows the demonstrations twice.

``homology``: perplexity of held-out proteins of a family (an A2M / aligned FASTA file) given 0, 1, 4, 16,
64 of their closest training homologs as context, ordered least to most similar
(``finetune/context_likelihood.py``; the split is the protein DataModule's seeded hash of the ids).

``smiles``: perplexity of molecules given k other molecules of the same file as context.

Each mode writes ``results.csv``, ``results.md`` and ``results.png`` into ``--out`` (``homology`` and
``smiles`` also ``targets.csv``, one row per target and k).

    bioseq icl kshot --train tr.tsv --test te.tsv --backbone ckpt/ --shots 0 1 2 4 --out icl
    bioseq icl homology --alignment DHFR.a2m.gz --backbone prot_ckpt/ --homologs 0 1 4 16 64 --out dhfr
    bioseq icl smiles --smiles BBBP.csv.gz --backbone chem_ckpt/ --context 0 1 4 16 --out bbbp
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from bioseq.commands.soft_prompt import backbone_label, load_task, warn_random

HELP = "In-context evaluation: k-shot classification, protein homolog context, SMILES context."


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bioseq icl", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="mode", required=True, metavar="{kshot,homology,smiles}")

    def common(q):
        q.add_argument("--backbone", required=True, help="checkpoint directory or preset name (random "
                                                         "weights)")
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
        q.add_argument("--no-progress", action="store_true", help="no progress bar")

    k = sub.add_parser("kshot", help="k-shot classification with demonstrations in the context")
    k.add_argument("--train", required=True, help="labelled sequences the demonstrations come from")
    k.add_argument("--test", required=True, help="labelled test queries")
    k.add_argument("--shots", type=int, nargs="+", default=[0, 1, 2, 4], metavar="K",
                   help="demonstrations per class (default: 0 1 2 4)")
    k.add_argument("--label-tokens", help="one vocabulary token per class, comma separated (DNA default: "
                                          "A,N for 2 classes, A,G,N for 3)")
    k.add_argument("--repeat", default="1", help="show the demonstrations this many times (or 'auto': 2 for "
                                                 "recurrent backbones, else 1)")
    k.add_argument("--instruction-tune", type=int, nargs="+", default=[0], metavar="N",
                   help="also finetune on N k-shot training examples first (e.g. 2 16 64 256; 0 = none)")
    k.add_argument("--it-lr", type=float, default=1e-4, help="instruction-tuning learning rate")
    k.add_argument("--it-epochs", type=int, default=1, help="instruction-tuning epochs")
    k.add_argument("--task-length", type=int, help="tokens every sequence is padded to (default: the "
                                                   "longest training or test sequence)")
    k.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of --train held out (not used as demonstrations; the soft-prompt split)")
    k.add_argument("--max-train", type=int, help="demonstration pool: a stratified subsample of this size")
    k.add_argument("--max-test", type=int, help="score a stratified subsample of this many queries")
    k.add_argument("--batch-size", type=int, default=8)
    k.add_argument("--name", help="dataset name in the table (default: the train file's parent directory)")
    k.add_argument("--out", default="icl_results")
    common(k)

    h = sub.add_parser("homology", help="protein perplexity given homologs as context")
    h.add_argument("--alignment", required=True, help="A2M / aligned FASTA of one protein family")
    h.add_argument("--homologs", type=int, nargs="+", default=[0, 1, 4, 16, 64], metavar="K")
    h.add_argument("--targets", type=int, default=8, help="held-out targets (a seeded draw)")
    h.add_argument("--target-split", choices=("test", "val"), default="test")
    h.add_argument("--val-fraction", type=float, default=0.05, help="as in the DataModule that trained the "
                                                                    "model")
    h.add_argument("--test-fraction", type=float, default=0.05)
    h.add_argument("--split-seed", type=int, default=0)
    h.add_argument("--insertions", choices=("keep", "drop"), default="keep",
                   help="A2M lower-case insert states: upper-cased (keep) or removed (drop)")
    h.add_argument("--max-identity", type=float, default=0.95,
                   help="leave out context homologs at least this identical to the target")
    h.add_argument("--out", default="icl_homology")
    common(h)

    s = sub.add_parser("smiles", help="SMILES perplexity given molecules of the same set as context")
    s.add_argument("--smiles", required=True, help="SMILES file (text, CSV or TSV, optionally gzip)")
    s.add_argument("--column", help="SMILES column of a table (default: smiles)")
    s.add_argument("--context", type=int, nargs="+", default=[0, 1, 4, 16], metavar="K")
    s.add_argument("--targets", type=int, default=32, help="target molecules (a seeded draw)")
    s.add_argument("--out", default="icl_smiles")
    common(s)
    return p


def _bar(enabled: bool, total: int, desc: str, unit: str = "seq"):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


def _backbone(a):
    import torch

    from bioseq.models import load_tokenizer_for, resolve_backbone

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    backbone = resolve_backbone(a.backbone).eval()
    warn_random(f"icl {a.mode}", a.backbone, backbone)
    return backbone, load_tokenizer_for(backbone)


def main(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    run = {"kshot": kshot, "homology": homology, "smiles": smiles}[a.mode]
    run(a)
    print(Path(a.out, "results.md").read_text())
    return 0


# --------------------------------------------------------------------------------------------------
# kshot
# --------------------------------------------------------------------------------------------------


def kshot(a) -> None:
    from bioseq.errors import BioseqError
    from bioseq.finetune.icl import KShotTask, instruction_tune
    from bioseq.finetune.label_tokens import label_token_ids, parse_label_tokens
    from bioseq.finetune.soft_prompt import score
    from bioseq.finetune.sweep_report import write_sweep

    if any(k < 0 for k in a.shots) or any(n < 0 for n in a.instruction_tune):
        raise BioseqError("--shots and --instruction-tune must be >= 0")
    fit, _, test, num_classes = load_task(a)
    backbone, tok = _backbone(a)
    tokens = parse_label_tokens(a.label_tokens, num_classes, backbone.alphabet)
    task_length = a.task_length or max(len(tok.encode(s)) for s in list(fit.sequences) + list(test.sequences))
    task = KShotTask(backbone, tok, label_token_ids(tok, tokens), fit.sequences, fit.labels,
                     task_length=task_length, repeat=a.repeat if a.repeat == "auto" else _int(a.repeat),
                     seed=a.seed)
    for k in a.shots:
        task.check(k)  # refuse a layout that does not fit before any work
    name = a.name or Path(a.train).resolve().parent.name
    label = backbone_label(a.backbone, backbone)
    rows = []
    for n_it in a.instruction_tune:
        for k in a.shots:
            t0 = time.time()
            model = None
            if n_it:
                bar = _bar(not a.no_progress, n_it * a.it_epochs, f"instruction tuning n={n_it} k={k}")
                model = instruction_tune(task, k, n_it, lr=a.it_lr, epochs=a.it_epochs,
                                         batch_size=a.batch_size, seed=a.seed, progress=bar)
                if bar is not None:
                    bar.close()
            bar = _bar(not a.no_progress, len(test), f"{k}-shot" + (f" (IT n={n_it})" if n_it else ""))
            scores = task.scores(test.sequences, k, a.batch_size, bar, backbone=model)
            if bar is not None:
                bar.close()
            m = score(scores, test.labels, num_classes)
            series = name if not n_it else f"{name}, instruction-tuned on {n_it}"
            rows.append({"dataset": name, "series": series, "backbone": label, "shots": k,
                         "instruction_examples": n_it, "repeat": task.format.repeat,
                         "accuracy": m["accuracy"],
                         "mcc": m["mcc"], "f1": m["f1"], "loss": m["loss"],
                         "context_tokens": task.format.length(k * num_classes),
                         "minutes": round((time.time() - t0) / 60, 2), "n_pool": len(fit), "n_test": m["n"],
                         "label_tokens": ",".join(tokens), "seed": a.seed})
            print(f"{series}: {k}-shot test accuracy {m['accuracy']:.4f} (MCC {m['mcc']:.4f})",
                  file=sys.stderr)
    write_sweep(rows, a.out, x="shots", y="accuracy", series="series",
                columns=["instruction_examples", "mcc", "loss", "context_tokens", "minutes", "n_test"],
                title=f"k-shot in-context learning: test accuracy against shots per class ({label})",
                xlabel="demonstrations per class k", ylabel="test accuracy",
                notes=[f"demonstrations `seq [SEP] label [SEP]` (left-padded to {task.format.task_length} "
                       f"tokens), shown {task.format.repeat}x, k per class from {len(fit)} training "
                       f"sequences, shuffled (seed {a.seed}); label tokens {','.join(tokens)}",
                       "instruction tuning: full finetuning of a copy on N k-shot training examples, AdamW "
                       f"lr {a.it_lr}, {a.it_epochs} epoch(s)"])


def _int(text: str) -> int:
    from bioseq.errors import BioseqError

    try:
        return int(text)
    except ValueError:
        raise BioseqError(f"--repeat must be a positive integer or 'auto', got {text!r}") from None


# --------------------------------------------------------------------------------------------------
# homology / smiles
# --------------------------------------------------------------------------------------------------


def _write_targets(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def homology(a) -> None:
    from bioseq.errors import BioseqError
    from bioseq.finetune.context_likelihood import homology_rows, perplexity_by, read_family
    from bioseq.finetune.sweep_report import write_sweep

    if any(k < 0 for k in a.homologs) or a.targets < 1:
        raise BioseqError("--homologs must be >= 0 and --targets >= 1")
    family = read_family(a.alignment, a.insertions)
    backbone, tok = _backbone(a)
    if getattr(tok, "alphabet", None) != "protein":
        raise BioseqError(f"--backbone {a.backbone}: a '{tok.name}' model; homology context needs a protein "
                          "model")
    bar = _bar(not a.no_progress, a.targets, "targets", unit="target")
    rows = homology_rows(backbone, tok, family, sorted(set(a.homologs)), n_targets=a.targets,
                         target_split=a.target_split, val_fraction=a.val_fraction,
                         test_fraction=a.test_fraction, split_seed=a.split_seed, max_identity=a.max_identity,
                         seed=a.seed, progress=bar)
    if bar is not None:
        bar.close()
    _write_targets(rows, Path(a.out) / "targets.csv")
    name = Path(a.alignment).name
    label = backbone_label(a.backbone, backbone)
    summary = [{"family": name, "backbone": label, "homologs": k, "perplexity": s["perplexity"],
                "nll": s["nll"], "targets": s["targets"], "tokens": s["tokens"],
                "mean_identity": _mean([r["mean_identity"] for r in rows if r["homologs"] == k])}
               for k, s in perplexity_by(rows, "homologs").items()]
    write_sweep(summary, a.out, x="homologs", y="perplexity", series="family",
                columns=["nll", "mean_identity", "targets", "tokens"],
                title=f"Perplexity of held-out proteins against homologs in context ({label})",
                xlabel="homologs in context", ylabel="target perplexity",
                notes=[f"{len({r['target'] for r in rows})} {a.target_split} targets of {len(family.ids)} "
                       f"sequences (split by seeded hash: val {a.val_fraction}, test {a.test_fraction}, seed "
                       f"{a.split_seed}); context: the closest training homologs (identity < "
                       f"{a.max_identity}), least to most similar, target last; insert states "
                       f"{a.insertions}",
                       "perplexity = exp(token-weighted mean NLL of the target's residues)"])


def smiles(a) -> None:
    from bioseq.errors import BioseqError
    from bioseq.finetune.context_likelihood import perplexity_by, smiles_rows
    from bioseq.finetune.sweep_report import write_sweep
    from bioseq.smiles_file import iter_smiles

    if any(k < 0 for k in a.context) or a.targets < 1:
        raise BioseqError("--context must be >= 0 and --targets >= 1")
    mols = [e.smiles.strip() for e in iter_smiles(a.smiles, column=a.column)]
    backbone, tok = _backbone(a)
    if getattr(tok, "name", None) != "smiles":
        raise BioseqError(f"--backbone {a.backbone}: a '{tok.name}' model; SMILES context needs a SMILES "
                          "model")
    bar = _bar(not a.no_progress, min(a.targets, len(mols)), "targets", unit="mol")
    rows = smiles_rows(backbone, tok, mols, sorted(set(a.context)), n_targets=a.targets, seed=a.seed,
                       progress=bar)
    if bar is not None:
        bar.close()
    _write_targets(rows, Path(a.out) / "targets.csv")
    name = Path(a.smiles).name
    label = backbone_label(a.backbone, backbone)
    summary = [{"set": name, "backbone": label, "context": k, "perplexity": s["perplexity"], "nll": s["nll"],
                "targets": s["targets"], "tokens": s["tokens"],
                "mean_similarity": _mean([r["mean_similarity"] for r in rows if r["context"] == k])}
               for k, s in perplexity_by(rows, "context").items()]
    write_sweep(summary, a.out, x="context", y="perplexity", series="set",
                columns=["nll", "mean_similarity", "targets", "tokens"],
                title=f"SMILES perplexity against molecules in context ({label})",
                xlabel="molecules in context", ylabel="target perplexity",
                notes=[f"{len(mols)} molecules; context: a seeded draw of other molecules of the set, "
                       "least to most similar (token-bigram Jaccard), target last"])


def _mean(values: list[float]) -> float:
    import math

    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")
