"""``bioseq probe``: logistic-regression probe on frozen-backbone embeddings or on k-mer counts.

Inputs (one of):
  * ``--train FILE --test FILE``: labelled sequences (CSV/TSV with sequence,label columns, or FASTA with
    ``>name|label`` / ``label=X`` headers). Features: ``--features kmer`` (k-mer frequencies, ``--k``,
    default 6) or ``--features embeddings`` computed in-process from ``--backbone`` (frozen).
  * ``--train-embeddings H5 --test-embeddings H5``: files written by ``bioseq embed``; labels come from
    the record ids (``name|label``) or ``--labels FILE`` (``id<TAB>label`` lines).
C is chosen by 5-fold cross-validation on train only; the test set is scored once. Writes
``results.csv``, ``results.md`` and ``results.png`` (the ``bioseq benchmark`` format) into ``--out``.

    bioseq probe --train tr.tsv --test te.tsv --features kmer --k 6 --name nontata --out probe_kmer
    bioseq probe --train tr.tsv --test te.tsv --features embeddings --backbone ckpt/ --out probe_emb
    bioseq probe --train-embeddings tr.h5 --test-embeddings te.h5 --labels labels.tsv --out probe_h5
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "Linear probe (logistic regression) on frozen embeddings or k-mer counts."


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="bioseq probe",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--train", help="labelled training sequences (table or FASTA)")
    p.add_argument("--test", help="labelled test sequences (table or FASTA)")
    p.add_argument("--train-embeddings", help="bioseq embed output for train (HDF5 or npy dir)")
    p.add_argument("--test-embeddings", help="bioseq embed output for test")
    p.add_argument("--labels", help="id<TAB>label file for the embeddings' record ids")
    p.add_argument("--features", choices=["kmer", "embeddings"], default="kmer")
    p.add_argument("--k", type=int, default=6, help="k-mer size for --features kmer")
    p.add_argument("--backbone", help="checkpoint dir or preset for --features embeddings")
    p.add_argument("--pooling", default="mean", choices=["mean", "max", "first", "last"])
    p.add_argument("--max-length", type=int, help="tokens per sequence for in-process embeddings")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--metric", default="accuracy", help="metric reported in the table (accuracy, mcc, f1)")
    p.add_argument("--cv", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="dataset name in the table (default: the dataset named in the train path, "
                                  "else the train file's parent directory)")
    p.add_argument("--out", default="probe_results")
    a = p.parse_args(argv)

    import numpy as np

    from bioseq.commands.common import is_random_preset, random_weights_warning
    from bioseq.datamodules.benchmark_files import read_file, read_labels_file
    from bioseq.errors import BioseqError
    from bioseq.finetune import probe
    from bioseq.finetune.published import dataset_from_path, known_datasets
    from bioseq.finetune.suite import write_results

    random_weights = False
    embedded = bool(a.train_embeddings)
    train_path, test_path = (a.train_embeddings, a.test_embeddings) if embedded else (a.train, a.test)
    if train_path and test_path:
        d_train, d_test = dataset_from_path(train_path), dataset_from_path(test_path)
        if d_train and d_test and d_train != d_test and (a.name is None or a.name in known_datasets()):
            raise BioseqError(f"--train is {d_train} but --test is {d_test}: a probe trains and tests on one "
                              "dataset (for a transfer run, name it with --name, e.g. --name "
                              f"{d_train}-to-{d_test}; published numbers are then not shown)")

    if a.train_embeddings or a.test_embeddings:
        if not (a.train_embeddings and a.test_embeddings):
            raise BioseqError("give both --train-embeddings and --test-embeddings")
        mapping = read_labels_file(a.labels) if a.labels else None
        ids_tr, x_tr = probe.load_embedding_file(a.train_embeddings, a.pooling)
        ids_te, x_te = probe.load_embedding_file(a.test_embeddings, a.pooling)
        raw_tr = probe.labels_for_ids(ids_tr, mapping, a.train_embeddings)
        raw_te = probe.labels_for_ids(ids_te, mapping, a.test_embeddings)
        names = sorted(set(raw_tr) | set(raw_te))
        if all(v.lstrip("-").isdigit() for v in names):
            y_tr, y_te = np.asarray(raw_tr, dtype=np.int64), np.asarray(raw_te, dtype=np.int64)
        else:
            lookup = {c: i for i, c in enumerate(names)}
            y_tr = np.asarray([lookup[v] for v in raw_tr])
            y_te = np.asarray([lookup[v] for v in raw_te])
        features = f"embeddings ({Path(a.train_embeddings).name}, {a.pooling})"
        name = a.name or dataset_from_path(a.train_embeddings) or Path(a.train_embeddings).stem
        random_weights = _embeddings_are_random(a.train_embeddings)
    else:
        if not (a.train and a.test):
            raise BioseqError("give --train and --test (or --train-embeddings/--test-embeddings)")
        train, test = read_file(a.train), read_file(a.test)
        _check_labels(train, a.train, a.cv)
        _check_labels(test, a.test, None)
        y_tr, y_te = train.labels, test.labels
        name = a.name or dataset_from_path(a.train) or Path(a.train).resolve().parent.name
        if a.features == "kmer":
            x_tr, x_te = probe.kmer_features(train.sequences, a.k), probe.kmer_features(test.sequences, a.k)
            features = f"{a.k}-mer LR"
        else:
            if not a.backbone:
                raise BioseqError("--features embeddings needs --backbone (checkpoint dir or preset)")
            from bioseq.models import load_tokenizer_for, resolve_backbone

            random_weights = is_random_preset(a.backbone)
            if random_weights:
                random_weights_warning("probe", a.backbone)
            backbone = resolve_backbone(a.backbone)
            tok = load_tokenizer_for(backbone)
            kw = dict(pooling=a.pooling, batch_size=a.batch_size, max_length=a.max_length)
            x_tr = probe.embedding_features(backbone, tok, train.sequences, **kw)
            x_te = probe.embedding_features(backbone, tok, test.sequences, **kw)
            features = f"probe {a.backbone} ({a.pooling})"
    try:
        res = probe.fit_probe(x_tr, y_tr, x_te, y_te, cv=a.cv, seed=a.seed)
    except ValueError as err:  # scikit-learn's complaint about the labels or the folds, as one line
        raise BioseqError(f"probe: {str(err).strip().splitlines()[0]}") from None
    if a.metric not in res:
        raise BioseqError(f"--metric {a.metric}: not computed (have {', '.join(sorted(res))})")
    row = {
        "dataset": name,
        "seed": a.seed,
        "backbone": features,
        "metric": a.metric,
        "value": res[a.metric],
        "best_val": res["cv_score"],
        "minutes": "",
        "random_weights": random_weights,
        **res,
    }
    write_results([row], a.out, label=features, kmer=None, title="Linear probe results")
    print(Path(a.out, "results.md").read_text())
    return 0


def _check_labels(data, path: str, cv: int | None) -> None:
    """One line for a label the probe cannot use: an empty cell, or (train) a class too small for ``cv``
    stratified folds."""
    import numpy as np

    from bioseq.errors import BioseqError

    names = data.class_names or []
    for k, name in enumerate(names):
        if not str(name).strip():
            row = int(np.flatnonzero(np.asarray(data.labels) == k)[0])
            raise BioseqError(f"{path}: record {data.ids[row]} has an empty label")
    if cv and data.labels.dtype.kind in "iu" and len(np.unique(data.labels)) == 1:
        only = names[int(data.labels[0])] if names else int(data.labels[0])
        raise BioseqError(f"{path}: every record has label {str(only)!r}; a classifier needs at least two "
                          "classes")
    if cv and data.labels.dtype.kind in "iu" and len(data.labels):
        values, counts = np.unique(data.labels, return_counts=True)
        small = counts.argmin()
        if counts[small] < 2:
            label = names[values[small]] if names else values[small]
            raise BioseqError(f"{path}: class {label!r} has {counts[small]} example; the probe's stratified "
                              "cross-validation needs at least 2 per class")


def _embeddings_are_random(path: str) -> bool:
    """Whether an embeddings file says its model had random weights (``random_weights`` metadata)."""
    try:
        from bioseq.embed import read_embeddings

        return bool(read_embeddings(path, tokens=False)["metadata"].get("random_weights", False))
    except Exception:  # noqa: BLE001 - the probe reads the file itself and reports problems there
        return False
